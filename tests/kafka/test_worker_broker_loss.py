"""A member whose broker goes away: unready soon, quiet logs, and SIGTERM still exits 0 with a
one-line summary and no traceback (it exited 1 with four chained tracebacks)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kafka_support import create_topics, localkafka, unique_topic
from tests.worker.support import poll_until, worker_config, worker_config_data
from tests.worker.test_worker_processes import _free_port, _ready, _spawn
from worker.kafka.topics import ensure_topics
from worker.sim import Simulator
from worker.sim.harness import topic_names

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def own_broker() -> Iterator[Any]:
    """A broker of this test alone: it is stopped mid-test."""
    lk = localkafka()
    name = f"pytest-loss-{os.getpid()}"
    inst = lk.start(name, 1, 0, heap_mb=512)
    try:
        yield inst
    finally:
        lk.stop(name)


async def test_broker_gone_unready_then_sigterm_exits_zero(
    own_broker: Any, artifact: Path, sim: Simulator, tmp_path: Path
) -> None:
    bootstrap = own_broker.bootstrap
    requests = unique_topic("requests")
    await create_topics(bootstrap, [requests], partitions=2)
    topics = topic_names(requests)
    await ensure_topics(
        worker_config(bootstrap, topics, artifact, sim.base_url).kafka.common_kwargs(),
        worker_config(bootstrap, topics, artifact, sim.base_url).topics,
        1,
    )
    port = _free_port()
    data = worker_config_data(
        bootstrap, topics, artifact, sim.base_url, metrics={"enabled": True, "port": port}
    )
    path = tmp_path / "member.json"
    path.write_text(json.dumps(data))
    member = _spawn(path, "member")
    log = tmp_path / "member.log"
    try:
        assert await poll_until(lambda: _ready(port), 90, 0.5), log.read_text()[-3000:]
        localkafka().stop(own_broker.name)
        stopped = time.monotonic()
        assert await poll_until(lambda: not _ready(port), 60, 0.2), log.read_text()[-3000:]
        unready_after = time.monotonic() - stopped
        lines_before = len(log.read_text().splitlines())
        await poll_until(lambda: False, 10.0)  # ten seconds of a member without its broker
        lines = len(log.read_text().splitlines()) - lines_before
        print(
            f"\nunready {unready_after:.1f}s after the broker stopped; {lines} log lines in "
            "the next 10 s"
        )
        member.send_signal(signal.SIGTERM)
        rc = member.wait(timeout=120)
    finally:
        if member.poll() is None:
            member.kill()
            member.wait()
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    assert "worker stopped" in text.splitlines()[-1]
