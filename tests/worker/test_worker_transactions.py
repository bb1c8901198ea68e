"""A member killed between publishing responses and committing them: with `kafka.transactions`
a read_committed reader sees every response once (responses, dedupe markers and offsets commit
together; what a killed member left open is aborted by its successor)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from tests.conftest import TopicFactory
from tests.kafka.test_worker_edges import _committed_to_end, _request_values
from tests.kafka.test_worker_kafka import _run_until, _topics
from tests.worker.support import SIM_KEYS, produce, worker_config_data
from worker.app import App, build
from worker.config import Config, parse
from worker.kafka.topics import ensure_topics
from worker.sim import Simulator

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


async def _read(bootstrap: str, topic: str, expect: int, isolation: str) -> Counter[bytes]:
    """Records per key on `topic` (waiting for `expect` of them, then a little longer)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation,
    )
    await consumer.start()
    counts: Counter[bytes] = Counter()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while sum(counts.values()) < expect and loop.time() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                counts.update(r.key for r in records)
        for records in (await consumer.getmany(timeout_ms=1000)).values():
            counts.update(r.key for r in records)
    finally:
        await consumer.stop()
    return counts


def _config_data(
    bootstrap: str, topics: dict[str, str], artifact: Path, base_url: str, **kafka: Any
) -> dict[str, Any]:
    return worker_config_data(
        bootstrap,
        topics,
        artifact,
        base_url,
        kafka={"transactions": True, "group_instance_id": "member-1", **kafka},
    )


def _spawn(tmp_path: Path, data: dict[str, Any], kill_after: int) -> subprocess.Popen[bytes]:
    path = tmp_path / "member.json"
    path.write_text(json.dumps(data))
    with (tmp_path / "member.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.worker.killed_member", str(path), str(kill_after)],
            cwd=ROOT,
            env={**os.environ, **SIM_KEYS},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _kill_then_succeed(
    bootstrap: str,
    topics: dict[str, str],
    data: dict[str, Any],
    successor: dict[str, Any],
    tmp_path: Path,
    kill_after: int,
    n: int,
) -> None:
    """Run a member that SIGKILLs itself after `kill_after` published responses (0: the test
    kills it once it sees `n` responses, committed or not), then a successor with the same
    static id until every request is answered."""
    proc = _spawn(tmp_path, data, kill_after or n)
    try:
        if kill_after == 0:
            seen: Counter[bytes] = Counter()
            while sum(seen.values()) < n and proc.poll() is None:
                seen = await _read(bootstrap, topics["responses"], n, "read_uncommitted")
            proc.send_signal(signal.SIGKILL)
        rc = await asyncio.to_thread(proc.wait, 120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == -signal.SIGKILL, (tmp_path / "member.log").read_text()[-3000:]
    await _successor_answers(bootstrap, topics["responses"], parse(successor), n)


async def _successor_answers(bootstrap: str, responses: str, config: Config, n: int) -> App:
    """Run a member of `config` until `n` requests have a committed response; its app."""
    app = build(config)
    try:
        answered: set[bytes] = set()
        task = asyncio.create_task(
            _run_until(app.worker, lambda: len(answered) >= n, timeout_s=120)
        )
        while not task.done() and len(answered) < n:
            answered.update(await _read(bootstrap, responses, n, "read_committed"))
        await task
    finally:
        await app.close()
    return app


async def test_a_member_killed_after_publishing_leaves_no_duplicate(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator, tmp_path: Path
) -> None:
    """Killed right after a response went out, before its marker and offset: the successor
    answered that request again (two responses). With transactions the response, its marker
    and the offsets are one commit: a read_committed reader sees each response once."""
    topics = await _topics(new_topic, partitions=2)
    data = _config_data(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(parse(data).kafka.common_kwargs(), parse(data).topics, 1)
    n = 30
    await produce(kafka_bootstrap, topics["requests"], list(_request_values(range(n))))
    await _kill_then_succeed(kafka_bootstrap, topics, data, data, tmp_path, 3, n)
    responses = await _read(kafka_bootstrap, topics["responses"], n, "read_committed")
    assert set(responses) == {k for k, _ in _request_values(range(n))}
    assert {k: c for k, c in responses.items() if c > 1} == {}
    group = data["kafka"]["group_id"]
    assert await _committed_to_end(kafka_bootstrap, group, topics["requests"], 2)


async def test_an_open_transaction_of_a_killed_member_is_never_seen(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator, tmp_path: Path
) -> None:
    """Every response sent, none committed (a transaction that does not end in the test's
    time), then SIGKILL: the successor with the same static id aborts them; read_committed
    readers see only its own answers, once each (read_uncommitted shows the aborted copies)."""
    topics = await _topics(new_topic, partitions=2)
    data = _config_data(
        kafka_bootstrap, topics, artifact, sim.base_url, transaction_interval_ms=600_000
    )
    successor = _config_data(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(parse(data).kafka.common_kwargs(), parse(data).topics, 1)
    n = 20
    await produce(kafka_bootstrap, topics["requests"], list(_request_values(range(n))))
    await _kill_then_succeed(kafka_bootstrap, topics, data, successor, tmp_path, 0, n)
    committed = await _read(kafka_bootstrap, topics["responses"], n, "read_committed")
    assert committed == Counter({k: 1 for k, _ in _request_values(range(n))})
    everything = await _read(kafka_bootstrap, topics["responses"], 2 * n, "read_uncommitted")
    assert sum(everything.values()) >= 2 * n  # the killed member's copies exist, aborted
    group = data["kafka"]["group_id"]
    assert await _committed_to_end(kafka_bootstrap, group, topics["requests"], 2)
