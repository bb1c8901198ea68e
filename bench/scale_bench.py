"""Scaling out by consumer-group members, and a rolling restart with static membership.

    .venv/bin/python bench/scale_bench.py [--requests 6000] [--members 1,2,4]
                                          [--restart-requests 15000] [--restart-rate 250]

Uses KAFKA_BOOTSTRAP when set, else starts the project's local broker (and stops it). One
provider simulator process answers every call after a fixed 500 ms; each member is its own
`llmroute run` process; the request topic has 12 partitions.

1. Scaling: for each member count, a fresh group and topic set; the members start and report
   ready (/readyz), then the whole batch of requests is produced at once. req/s is counted from
   the first response to the last (the responses' record timestamps).
   efficiency_k = req_per_s[k] / (k * req_per_s[1]).
2. Rolling restart: 4 members with static membership (`group_instance_id` member-0..3) under a
   steady stream; each member in turn gets SIGTERM (drain, commit, exit 0), is restarted with
   the same `group_instance_id` and must report ready before the next one goes.
   rolling_restart_lost: requests without a response (must be 0);
   rolling_restart_repeated_calls: simulator calls minus requests (model calls made twice);
   rolling_restart_repeated_responses: responses published more than once for one request.

Prints one JSON object (SCALE_BENCH_LOG_LEVEL=INFO with --workdir DIR keeps the members' logs).
Everything (broker, simulator, members, this process) shares the machine:
on 2 cores the members compete for the same CPU, so scaling efficiency measures the machine as
much as the design (`machine.cpus` says how many there were).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from worker_bench import KEYS, _localkafka  # noqa: E402

import schemas  # noqa: E402
from tests.worker.support import (  # noqa: E402
    dataset_rows,
    request_event,
    train_artifact,
    worker_config_data,
)
from worker.config.kafka import TopicSettings  # noqa: E402
from worker.kafka.topics import ensure_topics  # noqa: E402

PARTITIONS = 12
LATENCY = "fixed:500"
LOG_LEVEL = os.environ.get("SCALE_BENCH_LOG_LEVEL", "WARNING")  # the members' log level


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _topics(bootstrap: str, tag: str) -> dict[str, str]:
    req = f"scale-{tag}-{int(time.time())}"
    names = {
        "requests": req,
        "responses": f"{req}.responses",
        "decisions": f"{req}.decisions",
        "dlq": f"{req}.dlq",
        "done": f"{req}.done",
        "feedback": f"{req}.feedback",
        "batch_jobs": f"{req}.batch-jobs",
        "control": f"{req}.control",
    }
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(req, PARTITIONS, 1)])
    finally:
        await admin.close()
    # every other topic before anyone subscribes (a subscription must not auto-create one)
    await ensure_topics({"bootstrap_servers": bootstrap}, TopicSettings(**names), 1)
    return names


class Responses:
    """Follows the response topic in the background: keys, counts, first and last timestamp."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.counts: Counter[bytes] = Counter()
        self.first_ms = self.last_ms = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Responses:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        self._task = asyncio.create_task(self._follow(consumer))
        return self

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=300)
                for records in batch.values():
                    for r in records:
                        self.counts[r.key or b""] += 1
                        self.first_ms = min(self.first_ms or r.timestamp, r.timestamp)
                        self.last_ms = max(self.last_ms, r.timestamp)
        finally:
            await consumer.stop()

    async def wait_for(self, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.counts) < n and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        return len(self.counts) >= n

    @property
    def rate(self) -> float:
        span_s = (self.last_ms - self.first_ms) / 1000
        return len(self.counts) / span_s if span_s > 0 else 0.0

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


def _values(rows: list[dict[str, Any]], start: int, n: int) -> list[tuple[bytes, bytes]]:
    return [
        (f"req-{i:06d}".encode(), schemas.encode(request_event(rows[i % len(rows)], i)))
        for i in range(start, start + n)
    ]


async def _produce(
    bootstrap: str, topic: str, values: list[tuple[bytes, bytes]], rate: float | None = None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        started = time.monotonic()
        futures = []
        for i, (key, value) in enumerate(values):
            if rate is not None:
                ahead_s = started + i / rate - time.monotonic()
                if ahead_s > 0:
                    await asyncio.sleep(ahead_s)
            futures.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class Member:
    """One `llmroute run` process with its own metrics port (for /readyz)."""

    def __init__(self, workdir: Path, name: str, data: dict[str, Any]) -> None:
        self.name, self.workdir = name, workdir
        self.port = _free_port()
        data = {**data, "metrics": {"enabled": True, "host": "127.0.0.1", "port": self.port}}
        self.config = workdir / f"{name}.json"
        self.config.write_text(json.dumps(data))
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        with (self.workdir / f"{self.name}.{self.restarts}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "worker",
                    "run",
                    "--config",
                    str(self.config),
                    "--log-level",
                    LOG_LEVEL,
                ],
                cwd=ROOT,
                env={**os.environ, **KEYS},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def cpu_s(self) -> float:
        """User + system CPU seconds of the running process (0 when it is not running)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    async def stop(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(self.proc.wait, timeout_s)
        self.restarts += 1
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self) -> str:
        logs = sorted(self.workdir.glob(f"{self.name}.*.log"))
        return logs[-1].read_text()[-2000:] if logs else ""


async def _all_ready(members: list[Member], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = await asyncio.gather(*(asyncio.to_thread(m.ready) for m in members))
        if all(ready):
            return
        for m in members:
            if m.proc is not None and m.proc.poll() is not None:
                raise RuntimeError(f"{m.name} exited: {m.log_tail()}")
        await asyncio.sleep(0.5)
    raise RuntimeError("members not ready in time: " + members[0].log_tail())


def _sim_calls(base_url: str) -> int:
    return int(httpx.get(f"{base_url}/sim/stats", timeout=5.0).json()["requests"])


def _config(
    bootstrap: str, topics: dict[str, str], artifact: Path, base_url: str, **kafka: Any
) -> dict[str, Any]:
    return worker_config_data(
        bootstrap,
        topics,
        artifact,
        base_url,
        kafka={"group_id": f"g-{topics['requests']}", **kafka},
        loop={"max_in_flight": 2000, "resume_below": 1500, "drain_timeout_s": 30.0},
        providers={"max_connections": 2000},
    )


async def _scaling_run(
    bootstrap: str,
    artifact: Path,
    base_url: str,
    k: int,
    n: int,
    workdir: Path,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    topics = await _topics(bootstrap, f"m{k}")
    data = _config(bootstrap, topics, artifact, base_url)
    members = [Member(workdir, f"scale{k}-{i}", data) for i in range(k)]
    try:
        for m in members:
            m.start()
        await _all_ready(members)
        await asyncio.sleep(3.0)  # joins settle: no rebalance left pending
        await _all_ready(members)
        async with Responses(bootstrap, topics["responses"]) as responses:
            cpu0 = sum(m.cpu_s() for m in members)
            await _produce(bootstrap, topics["requests"], _values(rows, 0, n))
            await responses.wait_for(n, timeout_s=300)
            cpu_ms = (sum(m.cpu_s() for m in members) - cpu0) * 1000 / max(1, n)
        rcs = await asyncio.gather(*(m.stop() for m in members))
    finally:
        for m in members:
            m.kill()
    return {
        "rate": responses.rate,
        "lost": n - len(responses.counts),
        "exit_codes": rcs,
        "cpu_ms": cpu_ms,
    }


async def _rolling_restart(
    bootstrap: str,
    artifact: Path,
    base_url: str,
    n: int,
    rate: float,
    workdir: Path,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    topics = await _topics(bootstrap, "rolling")
    members = [
        Member(
            workdir,
            f"roll-{i}",
            _config(
                bootstrap,
                topics,
                artifact,
                base_url,
                group_instance_id=f"member-{i}",
                session_timeout_ms=30_000,
            ),
        )
        for i in range(4)
    ]
    calls_before = _sim_calls(base_url)
    restart_s: list[tuple[float, float]] = []  # (SIGTERM to exit, start to ready)
    exit_codes: list[int] = []
    try:
        for m in members:
            m.start()
        await _all_ready(members)
        async with Responses(bootstrap, topics["responses"]) as responses:
            feed = asyncio.create_task(
                _produce(bootstrap, topics["requests"], _values(rows, 0, n), rate)
            )
            await responses.wait_for(n // 10, timeout_s=120)  # under load before the first stop
            at_first_stop = len(responses.counts)
            for m in members:
                t0 = time.monotonic()
                exit_codes.append(await m.stop())
                t1 = time.monotonic()
                m.start()  # the same group_instance_id: no rebalance, the same partitions
                await _all_ready([m])
                restart_s.append((t1 - t0, time.monotonic() - t1))
            at_last_rejoin = len(responses.counts)
            await feed
            await responses.wait_for(n, timeout_s=300)
            await asyncio.sleep(2.0)  # late duplicates, if any, show up too
        exit_codes += await asyncio.gather(*(m.stop() for m in members))
    finally:
        for m in members:
            m.kill()
    calls = _sim_calls(base_url) - calls_before
    return {
        "lost": n - len(responses.counts),
        "repeated_calls": calls - n,
        "repeated_responses": sum(c - 1 for c in responses.counts.values()),
        "stop_s": [round(a, 1) for a, _ in restart_s],
        "rejoin_s": [round(b, 1) for _, b in restart_s],
        "answered_at_first_stop": at_first_stop,
        "answered_at_last_rejoin": at_last_rejoin,
        "exit_codes": exit_codes,
    }


def _start_sim() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "sim-provider", "--port", "0", "--latency", LATENCY],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, str(json.loads(proc.stdout.readline())["base_url"])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6000, help="per member count")
    parser.add_argument("--members", default="1,2,4")
    parser.add_argument("--restart-requests", type=int, default=15000)
    parser.add_argument("--restart-rate", type=float, default=250.0, help="requests/s fed")
    parser.add_argument("--workdir", help="keep configs and member logs here (default: temporary)")
    args = parser.parse_args()
    counts = [int(x) for x in args.members.split(",")]
    os.environ.update(KEYS)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    lk, name = None, f"scale-bench-{os.getpid()}"
    if not bootstrap:
        lk = _localkafka()
        bootstrap = lk.start(name, 1, 0, heap_mb=1024).bootstrap
    sim, base_url = _start_sim()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(args.workdir or tmp)
            await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
            rows = dataset_rows(2000)
            artifact = train_artifact(workdir / "router", rows)
            scaling = {}
            for k in counts:
                scaling[k] = await _scaling_run(
                    bootstrap, artifact, base_url, k, args.requests, workdir, rows
                )
            rolling = await _rolling_restart(
                bootstrap,
                artifact,
                base_url,
                args.restart_requests,
                args.restart_rate,
                workdir,
                rows,
            )
    finally:
        sim.terminate()
        sim.wait(timeout=30)
        if lk is not None:
            lk.stop(name)
    rates = {str(k): round(v["rate"], 1) for k, v in scaling.items()}
    base = scaling[counts[0]]["rate"] / counts[0] if counts and scaling[counts[0]]["rate"] else 0
    efficiency = {
        f"efficiency_{k}": round(v["rate"] / (k * base), 3) if base else None
        for k, v in scaling.items()
    }
    out = {
        "req_per_s": rates,
        **efficiency,
        "scaling_lost": sum(v["lost"] for v in scaling.values()),
        "rolling_restart_lost": rolling["lost"],
        "rolling_restart_repeated_calls": rolling["repeated_calls"],
        "rolling_restart_repeated_responses": rolling["repeated_responses"],
        "cpu_ms_per_req": {str(k): round(v["cpu_ms"], 3) for k, v in scaling.items()},
        "rolling_restart_stop_s": rolling["stop_s"],
        "rolling_restart_rejoin_s": rolling["rejoin_s"],
        # how far the stream had got: restarts ran between these two counts of answered requests
        "rolling_restart_answered_at_first_stop": rolling["answered_at_first_stop"],
        "rolling_restart_answered_at_last_rejoin": rolling["answered_at_last_rejoin"],
        "member_exit_codes": sorted(
            {rc for v in scaling.values() for rc in v["exit_codes"]} | set(rolling["exit_codes"])
        ),
        "partitions": PARTITIONS,
        "simulator_latency": LATENCY,
        "requests": {
            "scaling_per_run": args.requests,
            "rolling_restart": args.restart_requests,
            "rolling_restart_rate_per_s": args.restart_rate,
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
