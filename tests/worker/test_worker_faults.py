"""Provider faults end in retries, fallbacks or error responses, never in silence; a broker of
the three-node cluster stopped mid-stream loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import schemas
from tests.conftest import Processes, TopicFactory
from tests.kafka.test_worker_kafka import _run_until, _topics
from tests.kafka_support import create_topics, localkafka, start_cluster, unique_topic
from tests.worker.support import (
    ROWS,
    Collector,
    poll_until,
    produce,
    replay_dataset,
    request_event,
    worker_config,
    worker_config_data,
)
from tests.worker.test_worker_processes import _spawn
from worker.app import build
from worker.config.models import WEAK_MODEL
from worker.kafka.topics import ensure_topics
from worker.sim import Fault, Latency, SimConfig, Simulator
from worker.sim.harness import topic_names


@pytest.fixture
async def sim(sim_keys: None) -> Any:
    async with Simulator(SimConfig(seed=5, latency=Latency(ms=5)), replay_dataset()) as server:
        yield server


def _requests(n: int, start: int = 0) -> list[tuple[bytes | None, bytes]]:
    return [
        (f"req-{i:06d}".encode(), schemas.encode(request_event(ROWS[i % len(ROWS)], i)))
        for i in range(start, start + n)
    ]


async def _answer_all(
    bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator, n: int
) -> list[schemas.RouteResponse]:
    topics = await _topics(new_topic, partitions=2)
    config = worker_config(
        bootstrap,
        topics,
        artifact,
        sim.base_url,
        providers={"max_retries": 3, "request_deadline_s": 20.0},
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    await produce(bootstrap, topics["requests"], _requests(n))
    app = build(config)
    try:
        await _run_until(app.worker, lambda: app.worker.stats["published"] >= n, timeout_s=120)
    finally:
        await app.close()
    async with Collector(bootstrap, topics["responses"]) as responses:
        await responses.wait_for({f"req-{i:06d}" for i in range(n)}, timeout_s=30)
    out = [schemas.decode(v, schemas.RouteResponse) for v in responses.values]
    assert Counter(r.request_id for r in out) == Counter({f"req-{i:06d}": 1 for i in range(n)})
    return out


pytestmark = pytest.mark.kafka


async def test_transient_faults_are_retried(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    sim.set_faults(
        (
            Fault(kind="429", rate=0.2, retry_after_s=0.05),
            Fault(kind="500", rate=0.1),
            Fault(kind="reset", rate=0.05),
        )
    )
    out = await _answer_all(kafka_bootstrap, new_topic, artifact, sim, 60)
    retried = [r for r in out if any((a.retry or 0) > 0 for a in r.attempts)]
    assert retried, "no request needed a retry: the faults did not fire"
    for r in out:
        if r.status == "ok":
            assert r.attempts[-1].status == "ok"
        else:  # retries ran out on every model: said so, with the error class
            assert r.error is not None and r.error.type
    assert sum(r.status == "ok" for r in out) >= 50


async def test_a_failing_model_falls_back(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    sim.set_faults((Fault(kind="500", rate=1.0, models=(WEAK_MODEL,)),))
    out = await _answer_all(kafka_bootstrap, new_topic, artifact, sim, 30)
    fell_back = [r for r in out if r.decision is not None and r.decision.model == WEAK_MODEL]
    assert fell_back, "the router never chose the weak model"
    for r in fell_back:
        assert r.status == "ok" and r.model != WEAK_MODEL
        assert r.attempts[0].model == WEAK_MODEL and r.attempts[0].status == "error"
        assert r.attempts[0].http_status == 500


async def test_every_model_down_ends_in_error_responses(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    sim.set_faults((Fault(kind="500", rate=1.0),))
    out = await _answer_all(kafka_bootstrap, new_topic, artifact, sim, 20)
    for r in out:
        assert r.status == "error" and r.message is None
        assert r.error is not None and r.error.retriable
        assert r.attempts and all(a.status != "ok" for a in r.attempts)


async def test_expired_deadline_gets_an_error_without_a_model_call(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    from datetime import UTC, datetime, timedelta

    topics = await _topics(new_topic, partitions=1)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    past = datetime.now(UTC) - timedelta(seconds=5)
    event = request_event(ROWS[0], 1, deadline=past)
    await produce(kafka_bootstrap, topics["requests"], [(b"req-000001", schemas.encode(event))])
    before = sim.stats.requests
    app = build(config)
    try:
        await _run_until(app.worker, lambda: app.worker.stats["published"] >= 1)
    finally:
        await app.close()
    async with Collector(kafka_bootstrap, topics["responses"]) as responses:
        await responses.wait_for({"req-000001"}, timeout_s=30)
    [r] = [schemas.decode(v, schemas.RouteResponse) for v in responses.values]
    assert r.status == "error" and r.error is not None and r.error.type == "DeadlineExceeded"
    assert sim.stats.requests == before


# ---------------------------------------------------------------- three-node cluster

# the cluster's start and warm-up (module fixture, up to two clusters) count towards the first
# test's timeout; the test's own steps share a deadline well inside it
CLUSTER_TEST_TIMEOUT_S = 900
STEPS_DEADLINE_S = 420


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    name = f"pytest-wcluster-{os.getpid()}"
    inst = start_cluster(name)
    try:
        yield inst
    finally:
        localkafka().stop(name)


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(CLUSTER_TEST_TIMEOUT_S)
async def test_broker_stopped_mid_stream_loses_nothing(
    cluster: Any, artifact: Path, sim: Simulator, tmp_path: Path, processes: Processes
) -> None:
    bootstrap = cluster.bootstrap
    requests = unique_topic("requests")
    topics = topic_names(requests)
    log = tmp_path / "member.log"
    n = 600
    wanted = {f"req-{i:06d}" for i in range(n)}
    # every step shares one deadline below pytest-timeout's, so a sick cluster fails this test
    # with the member's log (and the finally below runs) instead of outliving the timeout
    async with asyncio.timeout(STEPS_DEADLINE_S):
        await create_topics(
            bootstrap,
            [requests],
            partitions=3,
            replication=3,
            configs={"min.insync.replicas": "2"},
        )
        data = worker_config_data(
            bootstrap, topics, artifact, sim.base_url, topic_replication_factor=3
        )
        config = worker_config(
            bootstrap, topics, artifact, sim.base_url, topic_replication_factor=3
        )
        await ensure_topics(config.kafka.common_kwargs(), config.topics, 3)
        path = tmp_path / "worker.json"
        path.write_text(json.dumps(data))
        sim.set_faults(())
        # the member runs as its own process (as in production): its Kafka clients never share
        # the test's event loop; `processes` kills it at teardown whatever happens here
        member = processes.add(_spawn(path, "member"))
        async with Collector(bootstrap, topics["responses"]) as responses:
            await produce(bootstrap, requests, _requests(n // 2))
            started = await poll_until(lambda: len(responses.counts) >= n // 4, 180)
            assert started, _tail(log, member)
            localkafka().stop_node(cluster, cluster.nodes[0])
            await produce(bootstrap, requests, _requests(n // 2, start=n // 2))
            arrived = await responses.wait_for(wanted, timeout_s=150)
            assert arrived, f"missing {len(wanted - set(responses.counts))}: " + _tail(log, member)
            member.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(member.wait, 60) == 0, _tail(log)
    assert set(responses.counts) == wanted


def _tail(log: Path, member: subprocess.Popen[bytes] | None = None) -> str:
    """The end of the member's log; a member still running first logs where each of its tasks
    waits (SIGUSR1) and every thread's stack (SIGABRT, faulthandler), which ends it."""
    if member is not None and member.poll() is None:
        member.send_signal(signal.SIGUSR1)
        time.sleep(2.0)
        member.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            member.wait(10)
    return log.read_text(errors="replace")[-12000:] if log.exists() else "(no member log)"
