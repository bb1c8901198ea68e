"""Batch-mode requests through the simulator's Batch APIs, with the real broker: every request
ends with exactly one response, priced with the batch discount, and none is submitted twice,
whatever fails (items, lines, whole jobs) and wherever the member is killed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import schemas
from tests.conftest import TopicFactory
from tests.kafka.test_worker_kafka import _topics
from tests.worker.support import (
    ROOT,
    ROWS,
    SIM_KEYS,
    Collector,
    poll_until,
    produce,
    replay_dataset,
    request_event,
    worker_config,
    worker_config_data,
)
from worker.app import build
from worker.batch.crash import ENV as CRASH_ENV
from worker.batch.crash import STEPS
from worker.config.models import simulator_catalogue
from worker.kafka.topics import ensure_topics
from worker.providers.types import Usage
from worker.sim import SimConfig, Simulator
from worker.sim.config import BatchTiming

pytestmark = [pytest.mark.kafka]

FAST_POLL = {"flush_age_s": 0.5, "poll_initial_s": 0.2, "poll_max_s": 0.5}


def _batch_requests(n: int, start: int = 0) -> list[tuple[bytes | None, bytes]]:
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(start, start + n):
        event = request_event(ROWS[i % len(ROWS)], i, routing=schemas.RoutingOptions(mode="batch"))
        out.append((event.request_id.encode(), schemas.encode(event)))
    return out


async def _sim_with(timing: BatchTiming) -> Simulator:
    return await Simulator(SimConfig(seed=5, batch=timing), replay_dataset()).start()


@pytest.fixture
async def batch_sim(sim_keys: None, request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    timing = getattr(request, "param", BatchTiming())
    server = await _sim_with(timing)
    try:
        yield server
    finally:
        await server.close()


async def _job_records(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """The latest value per key of the batch-jobs topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = await consumer._client._wait_on_metadata(topic)
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        latest: dict[bytes, bytes | None] = {}
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            for records in (await consumer.getmany(*pending, timeout_ms=500)).values():
                for r in records:
                    latest[r.key] = r.value
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return latest
    finally:
        await consumer.stop()


def _responses(values: list[bytes]) -> dict[str, schemas.RouteResponse]:
    out = {}
    for value in values:
        r = schemas.decode(value, schemas.RouteResponse)
        out[r.request_id] = r
    return out


async def _run_worker_until(config: Any, done: Any, timeout_s: float = 90.0) -> Any:
    app = build(config)
    task = asyncio.create_task(app.worker.run())
    try:
        finished = await poll_until(lambda: done() or task.done(), timeout_s)
        if task.done():
            task.result()
        assert finished, "timed out"
    finally:
        app.worker.stop()
        await asyncio.wait_for(task, timeout=60)
        await app.close()
    return app


async def test_batch_requests_answered_at_the_batch_price(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, batch_sim: Simulator
) -> None:
    topics = await _topics(new_topic, partitions=3)
    config = worker_config(kafka_bootstrap, topics, artifact, batch_sim.base_url, batch=FAST_POLL)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    n_batch, n_live = 150, 30
    interactive = [
        (e.request_id.encode(), schemas.encode(e))
        for e in (request_event(ROWS[i], i) for i in range(n_batch, n_batch + n_live))
    ]
    await produce(kafka_bootstrap, topics["requests"], _batch_requests(n_batch) + interactive)
    wanted = {f"req-{i:06d}" for i in range(n_batch + n_live)}
    async with Collector(kafka_bootstrap, topics["responses"]) as responses:
        app = await _run_worker_until(config, lambda: wanted <= set(responses.counts))
    assert set(responses.counts) == wanted
    assert max(responses.counts.values()) == 1
    by_id = _responses(responses.values)
    catalogue = simulator_catalogue(batch_sim.base_url)
    for rid, r in by_id.items():
        batch = int(rid.split("-")[1]) < n_batch
        assert r.status == "ok", r.error
        assert r.mode == ("batch" if batch else "interactive")
        spec = catalogue[r.model or ""]
        usage = Usage(input_tokens=r.usage.input_tokens, output_tokens=r.usage.output_tokens)
        assert r.cost_usd == pytest.approx(spec.cost_usd(usage, batch=batch), rel=1e-9)
        if batch:
            assert r.cost_usd == pytest.approx(spec.cost_usd(usage) / 2, rel=1e-9)
    stats = await _stats(batch_sim)
    assert stats["batch_items_submitted"] == n_batch
    assert stats["batch_items_resubmitted"] == 0
    assert app.worker.stats["batched"] == n_batch
    # every job record ended as a tombstone
    records = await _job_records(kafka_bootstrap, topics["batch_jobs"])
    assert records and all(v is None for v in records.values())
    # the decisions of batch requests were published at submission
    decisions = await _count(kafka_bootstrap, topics["decisions"], n_batch + n_live)
    assert decisions >= n_batch + n_live


async def _stats(sim: Simulator) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient() as client:
        return dict((await client.get(f"{sim.base_url}/sim/stats")).json())


async def _count(bootstrap: str, topic: str, expect: int) -> int:
    async with Collector(bootstrap, topic) as c:
        await poll_until(lambda: sum(c.counts.values()) >= expect, 30)
        return sum(c.counts.values())


@pytest.mark.parametrize(
    ("batch_sim", "on_failure"),
    [
        (BatchTiming(item_error_rate=0.2, malformed_line_rate=0.1), "interactive"),
        (BatchTiming(item_error_rate=0.2, malformed_line_rate=0.1), "error"),
        (BatchTiming(in_progress_s=3.0, expire_after_s=0.8), "interactive"),
    ],
    indirect=["batch_sim"],
    ids=["failed-items-retried", "failed-items-errors", "expired-retried"],
)
async def test_failed_malformed_and_expired_items_still_get_one_answer(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    artifact: Path,
    batch_sim: Simulator,
    on_failure: str,
) -> None:
    topics = await _topics(new_topic, partitions=2)
    config = worker_config(
        kafka_bootstrap,
        topics,
        artifact,
        batch_sim.base_url,
        batch={**FAST_POLL, "on_item_failure": on_failure},
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    n = 120
    await produce(kafka_bootstrap, topics["requests"], _batch_requests(n))
    wanted = {f"req-{i:06d}" for i in range(n)}
    async with Collector(kafka_bootstrap, topics["responses"]) as responses:
        await _run_worker_until(config, lambda: wanted <= set(responses.counts))
    assert set(responses.counts) == wanted
    assert max(responses.counts.values()) == 1
    by_id = _responses(responses.values)
    errors = [r for r in by_id.values() if r.status == "error"]
    stats = await _stats(batch_sim)
    assert stats["batch_items_submitted"] == n and stats["batch_items_resubmitted"] == 0
    if on_failure == "interactive":
        assert not errors
        # the failed items were answered by interactive calls (one per failed item at least)
        assert stats["completions"] > 0
    else:
        assert errors, "some items failed in the batch and must be answered with an error"
        assert all(r.error is not None and r.error.retriable for r in errors)
        assert stats["completions"] == 0  # no interactive call was made


@pytest.mark.parametrize("batch_sim", [BatchTiming(in_progress_s=60.0)], indirect=True)
async def test_cancel_through_a_control_event(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, batch_sim: Simulator
) -> None:
    topics = await _topics(new_topic, partitions=2)
    config = worker_config(kafka_bootstrap, topics, artifact, batch_sim.base_url, batch=FAST_POLL)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    n = 40
    await produce(kafka_bootstrap, topics["requests"], _batch_requests(n))
    wanted = {f"req-{i:06d}" for i in range(n)}
    app = build(config)
    task = asyncio.create_task(app.worker.run())
    try:
        async with Collector(kafka_bootstrap, topics["responses"]) as responses:
            recorded = await poll_until(
                lambda: app.worker.batches is not None and app.worker.batches.open_jobs > 0, 60
            )
            assert recorded
            assert await poll_until(lambda: app.worker.control_ready.is_set(), 30)
            assert app.worker.batches is not None
            job_ids = sorted(app.worker.batches._jobs)
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
            await producer.start()
            try:
                for k, job_id in enumerate(job_ids):
                    command = schemas.Control(
                        schema_version=1,
                        command_id=f"cancel-{k}",
                        action="cancel_batch",
                        job_id=job_id,
                        issued_at=datetime.now(UTC),
                    )
                    await producer.send_and_wait(topics["control"], schemas.encode(command))
            finally:
                await producer.stop()
            done = await responses.wait_for(wanted, timeout_s=60)
            assert done, f"{len(wanted - set(responses.counts))} requests unanswered"
    finally:
        app.worker.stop()
        await asyncio.wait_for(task, timeout=60)
        await app.close()
    by_id = _responses(responses.values)
    cancelled = [r for r in by_id.values() if r.error is not None]
    assert cancelled and all(r.error.type == "BatchCancelled" for r in cancelled if r.error)
    assert max(responses.counts.values()) == 1


# ---------------------------------------------------------------- kill between every step


def _spawn(config_path: Path, name: str, crash_at: str | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, **SIM_KEYS}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    with (config_path.parent / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config_path)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
async def test_killed_between_steps_every_request_answered_once_never_resubmitted(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    artifact: Path,
    sim_keys: None,
    tmp_path: Path,
    step: str,
) -> None:
    sim = await _sim_with(BatchTiming(in_progress_s=1.0))
    try:
        topics = await _topics(new_topic, partitions=2)
        data = worker_config_data(
            kafka_bootstrap,
            topics,
            artifact,
            sim.base_url,
            batch=FAST_POLL,
            kafka={"session_timeout_ms": 6000, "heartbeat_interval_ms": 500},
        )
        path = tmp_path / "worker.json"
        path.write_text(json.dumps(data))
        config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
        await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
        n = 40
        await produce(kafka_bootstrap, topics["requests"], _batch_requests(n))
        wanted = {f"req-{i:06d}" for i in range(n)}
        async with Collector(kafka_bootstrap, topics["responses"]) as responses:
            first = _spawn(path, "first", step)
            try:
                died = await poll_until(lambda: first.poll() is not None, 90, 0.2)
                assert died, (
                    f"never reached {step}: " + (tmp_path / "first.log").read_text()[-2000:]
                )
                assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()
            finally:
                if first.poll() is None:
                    first.kill()
                    first.wait()
            second = _spawn(path, "second", None)
            try:
                done = await responses.wait_for(wanted, timeout_s=120)
                assert done, (tmp_path / "second.log").read_text()[-3000:]
                second.send_signal(signal.SIGTERM)
                assert second.wait(timeout=60) == 0, (tmp_path / "second.log").read_text()[-3000:]
            finally:
                if second.poll() is None:
                    second.kill()
                    second.wait()
        assert set(responses.counts) == wanted
        by_id = _responses(responses.values)
        assert all(r.status == "ok" for r in by_id.values())
        stats = await _stats(sim)
        assert stats["batch_items_resubmitted"] == 0, stats  # no request sent to a batch twice
        assert stats["batch_items_submitted"] == n
        assert stats["completions"] == 0  # and none answered by an interactive call instead
        repeated = sum(c - 1 for c in responses.counts.values())
        print(f"\ncrash at {step}: repeated responses {repeated}")
        records = await _job_records(kafka_bootstrap, topics["batch_jobs"])
        assert all(v is None for v in records.values())
    finally:
        await sim.close()


async def test_batch_answers_carry_their_decision_and_spans_linked_to_the_submission(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, batch_sim: Simulator
) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from worker.config.telemetry import TelemetryConfig
    from worker.telemetry import Tracing, build_tracer_provider

    topics = await _topics(new_topic, partitions=1)
    config = worker_config(kafka_bootstrap, topics, artifact, batch_sim.base_url, batch=FAST_POLL)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    n = 6
    await produce(kafka_bootstrap, topics["requests"], _batch_requests(n))
    exporter = InMemorySpanExporter()
    provider = build_tracer_provider(TelemetryConfig())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(TelemetryConfig(), tracer_provider=provider)
    wanted = {f"req-{i:06d}" for i in range(n)}
    async with Collector(kafka_bootstrap, topics["responses"]) as responses:
        app = build(config, tracing=tracing)
        task = asyncio.create_task(app.worker.run())
        try:
            assert await poll_until(lambda: wanted <= set(responses.counts) or task.done(), 90)
        finally:
            app.worker.stop()
            await asyncio.wait_for(task, timeout=60)
            await app.close()
    spans = exporter.get_finished_spans()
    provider.shutdown()
    records = await _records(kafka_bootstrap, topics["responses"], n)
    for rid, r in _responses(responses.values).items():
        assert r.mode == "batch" and r.status == "ok"
        assert r.decision is not None and r.decision.model == r.model  # not null any more
        mine = [s for s in spans if s.context.trace_id == int(r.trace_id, 16)]
        submission = next(s for s in mine if s.name == f"process {topics['requests']}")
        answer = next(s for s in mine if s.name == f"batch answer {topics['requests']}")
        chat = next(s for s in mine if s.name == f"chat {r.model}")
        assert submission.attributes["llm_router.status"] == "batched"
        assert answer.parent is None
        assert [(lk.context.trace_id, lk.context.span_id) for lk in answer.links] == [
            (submission.context.trace_id, submission.context.span_id)
        ]
        assert chat.parent is not None and chat.parent.span_id == answer.context.span_id
        assert chat.attributes["gen_ai.usage.output_tokens"] == r.usage.output_tokens
        assert chat.attributes["llm_router.cost_usd"] == pytest.approx(r.cost_usd)
        assert answer.attributes["llm_router.status"] == "ok"
        assert chat.attributes["langfuse.observation.metadata.routed_model"] == r.decision.model
        # the response record continues the answer's span
        traceparent = dict(records[rid].headers)["traceparent"].decode()
        assert traceparent == f"00-{r.trace_id}-{answer.context.span_id:016x}-01"


async def _records(bootstrap: str, topic: str, expect: int) -> dict[str, Any]:
    from tests.worker.support import read_all

    return {r.key.decode(): r for r in await read_all(bootstrap, topic, expect)}
