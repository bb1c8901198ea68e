"""The dedupe-marker load fails closed: a load that runs out of time raises, never returns the
part it read (a partial set lets a request be answered twice)."""

from __future__ import annotations

import pytest

from tests.conftest import TopicFactory
from tests.kafka.test_worker_edges import _fill_done_topic
from worker.kafka.dedupe import StateLoadTimeout, load_answered

pytestmark = pytest.mark.kafka


async def test_a_load_out_of_time_raises_instead_of_returning_part(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    done = await new_topic("done", partitions=1)
    await _fill_done_topic(kafka_bootstrap, done, 20_000)
    kwargs = {"bootstrap_servers": kafka_bootstrap}
    with pytest.raises(StateLoadTimeout):
        await load_answered(kwargs, done, 1, [0], 1, 50_000, timeout_s=0.05)
    whole = await load_answered(kwargs, done, 1, [0], 1, 50_000, timeout_s=60)
    assert len(whole[0]) == 20_000
