"""End-to-end throughput of one worker process, against a bare aiokafka pass-through.

    .venv/bin/python bench/worker_bench.py [--requests 5000] [--requests-500ms 10000]
        [--profile DIR]   # py-spy (when installed) samples each worker: DIR/worker-<tag>.txt

Uses KAFKA_BOOTSTRAP when set, else starts the project's local broker (and stops it). The
provider simulator runs in its own process (`llmroute sim-provider`), the worker in its own
(`llmroute run`), so the three do not share an event loop. Prints one JSON object:

- passthrough_msgs_per_s: consume -> produce of the same request records with aiokafka alone
- req_per_s_0ms / req_per_s_500ms: first response to last, one worker, simulator latency 0 / 500 ms
- ratio_0ms: worker / pass-through at 0 ms (goal >= 0.5)
- route_overhead_p50_ms / _p99_ms: one routing decision (features + predict + policy), in process
- lost: requests without a response (must be 0); peak_rss_mb: the worker process's VmHWM
- cpu_ms_per_req_0ms / _500ms: the worker process's CPU (user + system, /proc) from its first
  response to its last, per response: unlike the rates, it barely moves when other processes
  load the machine
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

import schemas  # noqa: E402
from routers.artifact import load_artifact  # noqa: E402
from tests.worker.support import (  # noqa: E402
    dataset_rows,
    request_event,
    train_artifact,
    worker_config_data,
)
from worker import config as config_mod  # noqa: E402
from worker.pipeline.routing import RoutingCore  # noqa: E402

KEYS = {"SIM_OPENAI_API_KEY": "sk-bench", "SIM_ANTHROPIC_API_KEY": "sk-ant-bench"}
PARTITIONS = 6


def _localkafka() -> Any:
    spec = importlib.util.spec_from_file_location(
        "localkafka", ROOT / "deploy" / "kafka" / "localkafka.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["localkafka"] = module
    spec.loader.exec_module(module)
    return module


async def _create(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=k) for k, v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _passthrough(bootstrap: str, source: str, sink: str, n: int) -> float:
    """Consume n records and produce each to `sink`, awaiting acks, committing as it goes."""
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=f"pt-{source}",
                                enable_auto_commit=False, auto_offset_reset="earliest")  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    done, started = 0, 0.0
    try:
        while done < n:
            batch = await consumer.getmany(timeout_ms=500)
            if batch and not started:
                started = time.perf_counter()
            futures = []
            for records in batch.values():
                for r in records:
                    futures.append(await producer.send(sink, r.value, key=r.key))
            await asyncio.gather(*futures)
            done += len(futures)
            if batch:
                await consumer.commit()
        return n / (time.perf_counter() - started)
    finally:
        await producer.stop()
        await consumer.stop()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _count_responses(
    bootstrap: str, topic: str, n: int, timeout_s: float, pid: int
) -> tuple[int, float, float]:
    """Responses seen, their rate, and the worker's CPU ms per response after the first."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    seen: set[bytes] = set()
    first = last = 0.0
    cpu_start, seen_start = 0.0, 0
    try:
        deadline = time.monotonic() + timeout_s
        while len(seen) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    ts = r.timestamp / 1000
                    first = ts if not first else min(first, ts)
                    last = max(last, ts)
                    seen.add(r.key or b"")
            if seen and not seen_start:
                cpu_start, seen_start = _cpu_s(pid), len(seen)
        cpu_ms = (_cpu_s(pid) - cpu_start) * 1000 / max(1, len(seen) - seen_start)
    finally:
        await consumer.stop()
    return len(seen), (len(seen) / (last - first) if last > first else 0.0), cpu_ms


def _start_sim(latency: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "sim-provider", "--port", "0", "--latency", latency],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    return proc, str(ready["base_url"])


def _spawn_worker(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config),
             "--log-level", "WARNING"],
            cwd=ROOT, env={**os.environ, **KEYS}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _profile(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling `pid` until it exits, as collapsed stacks (one `frames count` a line,
    idle time left out): where the worker's CPU goes under the bench's load."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed: no profile", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--nonblocking",
         "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _worker_run(
    bootstrap: str,
    artifact: Path,
    latency: str,
    n: int,
    tag: str,
    workdir: Path,
    max_in_flight: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    sim, base_url = _start_sim(latency)
    req = f"bench-{tag}-{int(time.time())}"
    topics = {"requests": req, "responses": f"{req}.responses", "decisions": f"{req}.decisions",
              "dlq": f"{req}.dlq", "done": f"{req}.done", "feedback": f"{req}.feedback",
              "batch_jobs": f"{req}.batch-jobs", "control": f"{req}.control"}  # fmt: skip
    await _create(bootstrap, [req])
    rows = dataset_rows(2000)
    values = [(f"r-{i}".encode(), schemas.encode(request_event(rows[i % len(rows)], i)))
              for i in range(n)]  # fmt: skip
    await _produce(bootstrap, req, values)
    data = worker_config_data(bootstrap, topics, artifact, base_url,
        loop={"max_in_flight": max_in_flight, "resume_below": max_in_flight * 3 // 4},
        providers={"max_connections": max_in_flight})  # fmt: skip
    path = workdir / f"{tag}.json"
    path.write_text(json.dumps(data))
    proc = _spawn_worker(path, workdir / f"{tag}.log")
    spy = _profile(proc.pid, profile / f"worker-{tag}.txt") if profile is not None else None
    try:
        got, rate, cpu_ms = await _count_responses(
            bootstrap, topics["responses"], n, timeout_s=300, pid=proc.pid
        )
        rss = _peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if spy is not None:
            spy.wait(timeout=60)
        sim.terminate()
        sim.wait(timeout=30)
    pt_rate = 0.0
    if tag == "0ms":
        await _create(bootstrap, [f"{req}.pt"])
        pt_rate = await _passthrough(bootstrap, req, f"{req}.pt", n)
    return {"rate": rate, "lost": n - got, "rss": rss, "passthrough": pt_rate, "cpu_ms": cpu_ms}


def _route_overhead(artifact: Path) -> tuple[float, float]:
    """Per-request decision time with the worker's own RoutingCore, on 500-token-ish prompts."""
    rows = dataset_rows(400)
    topics = {"requests": "bench.requests"}
    config = config_mod.parse(worker_config_data("x:1", topics, artifact, "http://127.0.0.1:1"))
    core = RoutingCore(config, load_artifact(artifact), config.models)
    times = []
    for i in range(2000):
        event = request_event(rows[i % len(rows)], i)
        t0 = time.perf_counter()
        core.decide(event, core.resolve(event))
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--requests-500ms", type=int, default=10000)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output folder")
    args = parser.parse_args()
    os.environ.update(KEYS)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    lk, name = None, f"bench-{os.getpid()}"
    if not bootstrap:
        lk = _localkafka()
        bootstrap = lk.start(name, 1, 0, heap_mb=1024).bootstrap
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            artifact = train_artifact(workdir / "router", dataset_rows(2000))
            p50, p99 = _route_overhead(artifact)
            zero = await _worker_run(
                bootstrap, artifact, "fixed:0", args.requests, "0ms", workdir, 256, args.profile
            )
            slow = await _worker_run(
                bootstrap, artifact, "fixed:500", args.requests_500ms, "500ms", workdir, 2000,
                args.profile,
            )  # fmt: skip
    finally:
        if lk is not None:
            lk.stop(name)
    out = {
        "req_per_s_0ms": round(zero["rate"], 1),
        "req_per_s_500ms": round(slow["rate"], 1),
        "passthrough_msgs_per_s": round(zero["passthrough"], 1),
        "ratio_0ms": round(zero["rate"] / zero["passthrough"], 3) if zero["passthrough"] else None,
        "route_overhead_p50_ms": round(p50, 3),
        "route_overhead_p99_ms": round(p99, 3),
        "lost": zero["lost"] + slow["lost"],
        "peak_rss_mb": round(max(zero["rss"], slow["rss"]), 1),
        "cpu_ms_per_req_0ms": round(zero["cpu_ms"], 3),
        "cpu_ms_per_req_500ms": round(slow["cpu_ms"], 3),
        "requests": {"0ms": args.requests, "500ms": args.requests_500ms},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
