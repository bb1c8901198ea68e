"""The dedupe-marker load fails closed: a load that stops making progress raises, never returns
the part it read (a partial set lets a request be answered twice)."""

from __future__ import annotations

import itertools

import pytest

from tests.conftest import TopicFactory
from tests.kafka.test_worker_edges import _fill_done_topic
from worker.kafka.dedupe import load_answered
from worker.kafka.table import TopicNotReady

pytestmark = pytest.mark.kafka


async def test_a_load_out_of_time_raises_instead_of_returning_part(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    done = await new_topic("done", partitions=1)
    await _fill_done_topic(kafka_bootstrap, done, 50_000)
    kwargs = {"bootstrap_servers": kafka_bootstrap}
    ticks = itertools.count()
    with pytest.raises(TopicNotReady):  # every fetch looks like 10 s without progress
        await load_answered(
            kwargs, done, 1, [0], 1, 80_000, timeout_s=5, clock=lambda: next(ticks) * 10.0
        )
    whole = await load_answered(kwargs, done, 1, [0], 1, 80_000, timeout_s=60)
    assert len(whole[0]) == 50_000
