"""Members as real processes (`llmroute run`): SIGKILL under load, SIGTERM drain, joining late."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import schemas
from tests.conftest import Processes, TopicFactory
from tests.kafka.test_worker_kafka import _run_until, _topics
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
from worker.kafka.topics import ensure_topics
from worker.sim import Latency, SimConfig, Simulator

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
async def slow_sim(sim_keys: None) -> Any:
    config = SimConfig(seed=3, latency=Latency(kind="uniform", ms=50, high_ms=250))
    async with Simulator(config, replay_dataset()) as server:
        yield server


def _spawn(config_path: Path, name: str) -> subprocess.Popen[bytes]:
    # unbuffered: a member killed by a test still leaves every line it logged
    # faulthandler: SIGABRT dumps every thread's stack into the log
    env = {**os.environ, **SIM_KEYS, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    with (config_path.parent / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config_path)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _requests(n: int) -> list[tuple[bytes | None, bytes]]:
    return [
        (f"req-{i:06d}".encode(), schemas.encode(request_event(ROWS[i % len(ROWS)], i)))
        for i in range(n)
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


async def test_sigkill_under_load_loses_nothing(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    artifact: Path,
    slow_sim: Simulator,
    tmp_path: Path,
) -> None:
    n = 3000
    topics = await _topics(new_topic, partitions=6)
    ports = {"a": _free_port(), "b": _free_port()}
    paths = {}
    for name, port in ports.items():
        data = worker_config_data(
            kafka_bootstrap,
            topics,
            artifact,
            slow_sim.base_url,
            loop={"max_in_flight": 40, "resume_below": 30, "commit_interval_ms": 300},
            metrics={"enabled": True, "port": port},
        )
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    wanted = {f"req-{i:06d}" for i in range(n)}

    a, b = _spawn(paths["a"], "a"), _spawn(paths["b"], "b")
    try:
        # both members have joined the group and hold partitions before the load arrives
        joined = await poll_until(lambda: _ready(ports["a"]) and _ready(ports["b"]), 90, 0.5)
        assert joined, (tmp_path / "a.log").read_text()[-3000:]
        async with Collector(kafka_bootstrap, topics["responses"]) as responses:
            await produce(kafka_bootstrap, topics["requests"], _requests(n))
            started = await poll_until(lambda: len(responses.counts) >= n // 4, 120)
            assert started, (tmp_path / "a.log").read_text()[-3000:]
            a.send_signal(signal.SIGKILL)
            a.wait(timeout=10)
            at_kill = len(responses.counts)
            done = await responses.wait_for(wanted, timeout_s=180)
            assert done, f"missing {len(wanted - set(responses.counts))} responses"
            b.send_signal(signal.SIGTERM)
            assert b.wait(timeout=60) == 0, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert at_kill < n  # the kill happened under load
    # after dedupe by request_id, exactly one response per request; none missing, none unknown
    assert set(responses.counts) == wanted
    repeated_responses = sum(c - 1 for c in responses.counts.values())
    repeated_calls = slow_sim.stats.requests - n
    print(
        f"\nSIGKILL at {at_kill}/{n} answered: repeated responses {repeated_responses}, "
        f"repeated model calls {repeated_calls}"
    )
    assert repeated_calls >= 0
    for value in responses.values:
        assert schemas.decode(value, schemas.RouteResponse).status == "ok"


async def test_member_joining_mid_stream(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, slow_sim: Simulator
) -> None:
    n = 800
    topics = await _topics(new_topic, partitions=4)
    config = worker_config(
        kafka_bootstrap,
        topics,
        artifact,
        slow_sim.base_url,
        loop={"max_in_flight": 20, "resume_below": 10},
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    await produce(kafka_bootstrap, topics["requests"], _requests(n))
    first, second = build(config), build(config)
    wanted = {f"req-{i:06d}" for i in range(n)}
    async with Collector(kafka_bootstrap, topics["responses"]) as responses:
        task = asyncio.create_task(first.worker.run())
        try:
            await poll_until(lambda: len(responses.counts) >= n // 4, 60)
            await _run_until(second.worker, lambda: wanted <= set(responses.counts), timeout_s=120)
        finally:
            first.worker.stop()
            await asyncio.wait_for(task, timeout=60)
            await first.close()
            await second.close()
    assert set(responses.counts) == wanted
    assert second.worker.stats["published"] > 0  # the newcomer took over part of the work
    assert first.worker.stats["published"] + second.worker.stats["published"] >= n


async def test_sigusr1_logs_every_task_and_the_member_goes_on(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    artifact: Path,
    sim: Simulator,
    tmp_path: Path,
    processes: Processes,
) -> None:
    topics = await _topics(new_topic, partitions=1)
    port = _free_port()
    path = tmp_path / "m.json"
    data = worker_config_data(
        kafka_bootstrap, topics, artifact, sim.base_url, metrics={"enabled": True, "port": port}
    )
    path.write_text(json.dumps(data))
    log = tmp_path / "m.log"
    member = processes.add(_spawn(path, "m"))
    assert await poll_until(lambda: _ready(port), 90, 0.5), log.read_text()[-3000:]
    member.send_signal(signal.SIGUSR1)
    dumped = await poll_until(lambda: "_poll_until_stopped" in log.read_text(), 30)
    assert dumped, log.read_text()[-3000:]
    assert _ready(port)  # a diagnostic, not a stop
    member.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(member.wait, 60) == 0, log.read_text()[-3000:]
    tasks = [json.loads(line) for line in log.read_text().splitlines() if '"task ' in line]
    assert tasks and all(t["level"] == "warning" for t in tasks)
