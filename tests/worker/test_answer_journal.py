"""The answer journal: a member killed after the model answered and before its response was
committed leaves the answer to the next owner, which publishes it without calling the model
again (`worker.kafka.journal`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

import schemas
from schemas.trace import request_key
from tests.conftest import TopicFactory
from tests.kafka.test_worker_edges import _committed_to_end, _request_values
from tests.kafka.test_worker_kafka import _run_until, _topics
from tests.worker.support import SIM_KEYS, produce, read_all, worker_config_data
from tests.worker.test_worker_transactions import _read, _successor_answers
from worker.app import build
from worker.config import parse
from worker.config.kafka import KafkaSettings, LoopSettings, TopicSettings
from worker.kafka import journal
from worker.kafka.journal import load_journal
from worker.kafka.observer import NullObserver
from worker.kafka.publisher import Publisher
from worker.kafka.records import Handled, RecordInfo
from worker.kafka.topics import ensure_topics, max_message_bytes
from worker.pipeline import responses
from worker.sim import Simulator

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _spawn(tmp_path: Path, data: dict[str, Any]) -> subprocess.Popen[bytes]:
    """A member in its own process (killed by the test, never by itself)."""
    path = tmp_path / "member.json"
    path.write_text(json.dumps(data))
    with (tmp_path / "member.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.worker.killed_member", str(path), str(10**9)],
            cwd=ROOT,
            env={**os.environ, **SIM_KEYS},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_a_member_killed_before_its_commit_leaves_its_answers_to_the_next(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator, tmp_path: Path
) -> None:
    """Every request answered by the model, its response sent in a transaction that does not
    commit in the test's time, then SIGKILL: the successor (same static id: it aborts that
    transaction) used to call the model again for every request (2n calls). Now it publishes
    the journalled answers: n calls in all, one committed response each."""
    topics = await _topics(new_topic, partitions=2)
    kafka = {"transactions": True, "group_instance_id": "member-1"}
    data = worker_config_data(
        kafka_bootstrap,
        topics,
        artifact,
        sim.base_url,
        kafka={**kafka, "transaction_interval_ms": 600_000},
    )
    successor = worker_config_data(kafka_bootstrap, topics, artifact, sim.base_url, kafka=kafka)
    config = parse(successor)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    n = 20
    values = _request_values(range(n))
    before = sim.stats.requests
    await produce(kafka_bootstrap, topics["requests"], values)
    proc = _spawn(tmp_path, data)
    try:
        # every answer in hand (its response in the open transaction, visible uncommitted
        # only), and journalled: the window a crash between answer and commit hits
        await _read(kafka_bootstrap, topics["responses"], n, "read_uncommitted")
        await read_all(kafka_bootstrap, topics["journal"], n)
        assert proc.poll() is None, (tmp_path / "member.log").read_text()[-3000:]
        assert sim.stats.requests - before == n
        proc.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(proc.wait, 60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    app = await _successor_answers(kafka_bootstrap, topics["responses"], config, n)
    assert sim.stats.requests - before == n  # no model call repeated
    assert app.worker.stats["journal_replays"] == n
    committed = await _read(kafka_bootstrap, topics["responses"], n, "read_committed")
    assert committed == Counter({k: 1 for k, _ in values})
    group = successor["kafka"]["group_id"]
    assert await _committed_to_end(kafka_bootstrap, group, topics["requests"], 2)


def _handled(request_id: str, text: str = "an answer") -> Handled:
    now = datetime.now(UTC)
    response = responses.route_response(
        request_id,
        "acme",
        answer=responses.Answer("m", "openai", text, "stop", schemas.Usage()),
        trace_id=None,
        created_at=now,
        mode=None,
    )
    decision = schemas.RoutingDecision(
        schema_version=1,
        request_id=request_id,
        tenant="acme",
        decision=schemas.DecisionInfo(
            router="r",
            router_version="1",
            policy="default",
            model="m",
            score=0.5,
            threshold=0.5,
            candidates=[],
            reason="test",
        ),
        trace_id=None,
        created_at=now,
        prompt="x" * len(text),
        prompt_sha256="0" * 64,
    )
    return Handled(response=response, decision=decision)


def _info(topic: str, partition: int, offset: int) -> RecordInfo:
    return RecordInfo(topic, partition, offset, None, [], None)


async def test_a_journal_entry_answers_only_its_own_record(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """Loaded entries: those of the given request topic and partitions, the last `window` of
    them, less the requests already answered (a marker); an entry is used for its very record,
    once."""
    journal_topic = await new_topic("journal", partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        writes = [
            ("reqs", 0, 1, "a"),
            ("other", 0, 2, "b"),  # another request topic sharing the journal
            ("reqs", 1, 3, "c"),  # another partition (journal partition 1)
            ("reqs", 0, 4, "d"),
            ("reqs", 0, 5, "e"),
            ("reqs", 0, 6, "f"),
        ]
        for topic, partition, offset, request_id in writes:
            e = journal.entry(_handled(request_id), _info(topic, partition, offset))
            await producer.send_and_wait(
                journal_topic,
                journal.encode(e),
                key=request_key("acme", request_id).encode(),
                partition=partition % 2,
            )
    finally:
        await producer.stop()
    key = {request_id: request_key("acme", request_id) for *_, request_id in writes}
    loaded = await load_journal(
        {"bootstrap_servers": kafka_bootstrap}, journal_topic, 2, "reqs", {0: {key["e"]}}, 2, 4
    )
    mine = loaded[0]
    assert len(mine) == 2  # the last 4 of journal partition 0, less the other topic's and e
    assert mine.take(key["a"], _info("reqs", 0, 1)) is None  # beyond the window
    assert mine.take(key["d"], _info("reqs", 0, 7)) is None  # the same id, another record
    found = mine.take(key["d"], _info("reqs", 0, 4))
    assert found is not None and found.handled().response.request_id == "d"
    assert found.handled().decision is not None
    assert mine.take(key["d"], _info("reqs", 0, 4)) is None  # used once
    assert mine.take(key["f"], _info("reqs", 0, 6)) is not None


async def test_an_answer_too_large_for_the_journal_is_cut_to_fit(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """The journal topic takes 30 KB; a 100 KB answer with a 100 KB prompt in its decision:
    the entry drops the decision and cuts the answer as a response would be cut (original
    size and source record said), and the broker takes it."""
    requests = await new_topic("requests")
    journal_topic = await new_topic("journal", **{"max.message.bytes": "30000"})
    for _ in range(50):  # the new topic's limit, once the broker says it
        limits = await max_message_bytes({"bootstrap_servers": kafka_bootstrap}, [journal_topic])
        if limits[journal_topic] == 30_000:
            break
        await asyncio.sleep(0.2)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topics = TopicSettings(requests=requests, journal=journal_topic)
    publisher = Publisher(kafka, topics, LoopSettings(), NullObserver())
    await publisher.start()
    try:
        publisher.journal_partitions = 1
        await publisher.journal(_handled("req-1", "y" * 100_000), _info(requests, 0, 42))
        await publisher.journal(_handled("req-2"), _info(requests, 0, 43))
        assert publisher.producer is not None
        await publisher.producer.flush()
    finally:
        await publisher.stop()
    assert publisher.stats["journal_failures"] == 0
    records = await read_all(kafka_bootstrap, journal_topic, 2)
    entries = {r.key: journal.decode(r.value) for r in records}
    big = entries[request_key("acme", "req-1").encode()]
    small = entries[request_key("acme", "req-2").encode()]
    assert big is not None and small is not None
    assert big.decision is None and small.decision is not None
    truncated = big.response.truncated
    assert truncated is not None and truncated.original_bytes > 100_000
    assert truncated.source is not None and truncated.source.offset == 42
    assert all(len(r.value) <= 30_000 for r in records)


async def test_max_model_calls_bounds_the_calls_in_progress(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """24 requests in flight at once, `max_model_calls` 3: the simulator never has more than
    3 calls at a time (without the bound it had all 24), and every request is answered once."""
    from worker.sim import Latency

    sim.config = dataclasses.replace(sim.config, latency=Latency(ms=200))
    topics = await _topics(new_topic, partitions=2)
    data = worker_config_data(
        kafka_bootstrap, topics, artifact, sim.base_url, loop={"max_model_calls": 3}
    )
    config = parse(data)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    n = 24
    values = _request_values(range(n))
    await produce(kafka_bootstrap, topics["requests"], values)
    app = build(config)
    try:
        await _run_until(app.worker, lambda: app.worker.stats["published"] >= n, timeout_s=120)
    finally:
        await app.close()
    assert sim.stats.max_in_flight == 3
    responses = await read_all(kafka_bootstrap, topics["responses"], n)
    assert Counter(r.key for r in responses) == Counter({k: 1 for k, _ in values})
