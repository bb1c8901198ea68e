"""Real parts to run the worker against, for benches and tests: a broker (the project's local one
unless `KAFKA_BOOTSTRAP` names one), topics, a router trained on labelled rows, a worker config
pointed at the simulator, request events, a producer with an optional rate, a follower counting
what a topic receives, and member and simulator processes (`llmroute run`, `llmroute
sim-provider`).

    async with local_broker("my-bench") as bootstrap:
        names = topic_names("bench-0ms")
        await create_topics(bootstrap, [names["requests"]], partitions=6)
        artifact = train_artifact(workdir / "router", dataset_rows(2000))
        sim, base_url = start_sim("fixed:0")
        ...

Nothing here is imported by the worker itself. The labelled rows are the first rows of
`../shared/data/routing/mmlu_dev.jsonl` beside the checkout when it is there, else synthetic
ones; the broker and the process helpers need the source checkout (`deploy/kafka/localkafka.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import schemas
from routers import artifact as rartifact
from routers.base import strong_need
from routers.calibration import score_quantiles, threshold_for_strong_fraction
from routers.dataset import Record, data_sha256, record_from_obj
from routers.training import TrainOptions, train
from worker import config as config_mod
from worker.config.models import STRONG_MODEL, WEAK_MODEL, simulator_catalogue
from worker.sim.answers import Dataset

__all__ = [
    "MMLU",
    "ROOT",
    "SIM_KEYS",
    "Follower",
    "Member",
    "NotUtf8",
    "all_ready",
    "cpu_s",
    "create_topics",
    "dataset_rows",
    "free_port",
    "local_broker",
    "localkafka",
    "peak_rss_mb",
    "poll_until",
    "produce",
    "read_all",
    "replay_dataset",
    "request_event",
    "request_values",
    "send_raw_batch",
    "sim_calls",
    "spawn_member",
    "start_sim",
    "topic_names",
    "train_artifact",
    "worker_config",
    "worker_config_data",
]

ROOT = Path(__file__).resolve().parents[2]  # the source checkout
MMLU = ROOT.parent / "shared" / "data" / "routing" / "mmlu_dev.jsonl"

SIM_KEYS = {
    "SIM_OPENAI_API_KEY": "sk-test-openai-0123456789",
    "SIM_ANTHROPIC_API_KEY": "sk-ant-test-0123456789",
}

_WORDS = [
    "integral",
    "matrix",
    "theorem",
    "prove",
    "derivative",
    "compute",
    "history",
    "poem",
    "translate",
    "summarise",
    "capital",
    "river",
    "protein",
    "enzyme",
    "contract",
    "tort",
    "statute",
    "python",
    "function",
    "recursion",
    "proof",
]


# ---------------------------------------------------------------- data, router, config


def dataset_rows(n: int, seed: int = 7, path: Path = MMLU) -> list[dict[str, Any]]:
    """Labelled rows: the first n of `path` when it is here, else synthetic ones."""
    if path.exists():
        rows = []
        with path.open() as fh:
            for line in fh:
                rows.append(json.loads(line))
                if len(rows) >= n:
                    break
        return rows
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        words = rng.choices(_WORDS, k=rng.randint(5, 40))
        hard = sum(w in ("prove", "theorem", "integral", "recursion") for w in words)
        strong = 1.0 if rng.random() < 0.9 else 0.0
        weak = 1.0 if rng.random() < (0.8 - 0.15 * hard) else 0.0
        out.append(
            {
                "id": f"syn-{i}",
                "prompt": f"Q{i}: " + " ".join(words),
                "scores": {STRONG_MODEL: strong, WEAK_MODEL: weak},
            }
        )
    return out


def replay_dataset(rows: Iterable[Mapping[str, Any]]) -> Dataset:
    """What the simulator replays: the labels of `rows`."""
    return Dataset(Dataset.row_from_json(dict(r)) for r in rows)


def train_artifact(directory: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """A classifier router trained on `rows`, calibrated at a 50% strong share."""
    records: list[Record] = [record_from_obj(r) for r in rows]
    router = train(records, TrainOptions(router="classifier"))
    s = strong_need(router, router.predict([r.text for r in records]))
    path = rartifact.save(
        router,
        directory,
        data_sha256=data_sha256(records),
        calibration={"default": threshold_for_strong_fraction(s, 0.5)},
    )
    rartifact.update_meta(path, {"score_quantiles": score_quantiles(s)})
    return path


def worker_config(
    bootstrap: str, topics: dict[str, str], artifact: Path, sim_base_url: str, **sections: Any
) -> config_mod.Config:
    return config_mod.parse(
        worker_config_data(bootstrap, topics, artifact, sim_base_url, **sections)
    )


def worker_config_data(
    bootstrap: str,
    topics: dict[str, str],
    artifact: Path,
    sim_base_url: str,
    **sections: Any,
) -> dict[str, Any]:
    """A worker config (as data) for the simulator's catalogue; `sections` are merged in."""
    catalogue = simulator_catalogue(sim_base_url)
    models = {}
    for name, spec in catalogue.models.items():
        models[name] = {
            "provider": spec.provider,
            "base_url": spec.base_url,
            "api_key_env": spec.api_key_env,
            "provider_model": spec.provider_model,
            "input_usd_per_mtok": spec.prices.input_usd_per_mtok,
            "output_usd_per_mtok": spec.prices.output_usd_per_mtok,
            "context_window_tokens": spec.context_window_tokens,
            "logprobs": spec.supports_logprobs,
            "batch": spec.supports_batch,
        }
    data: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"g-{topics['requests']}",
            "session_timeout_ms": 10_000,
            "heartbeat_interval_ms": 1_000,
        },
        "topics": topics,
        "loop": {"commit_interval_ms": 200, "drain_timeout_s": 10.0},
        "router": {"artifact": str(artifact)},
        "policies": {"default": {"kind": "threshold", "strong_fraction": 0.3}},
        "models": models,
        "providers": {"max_retries": 2, "request_deadline_s": 30.0},
        "metrics": {"enabled": False},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def request_event(row: Mapping[str, Any], i: int, **fields: Any) -> schemas.RouteRequest:
    prompt = row.get("prompt") or row["messages"][-1]["content"]
    base: dict[str, Any] = {
        "schema_version": 1,
        "request_id": f"req-{i:06d}",
        "tenant": "acme",
        "messages": [schemas.Message(role="user", content=prompt)],
        "created_at": datetime.now(UTC),
        "params": schemas.GenerationParams(max_tokens=64),
    }
    base.update(fields)
    return schemas.RouteRequest(**base)


def request_values(
    rows: list[dict[str, Any]], start: int, n: int
) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of requests `start` .. `start + n - 1`, keyed `req-000042`, over `rows`."""
    return [
        (f"req-{i:06d}".encode(), schemas.encode(request_event(rows[i % len(rows)], i)))
        for i in range(start, start + n)
    ]


# ---------------------------------------------------------------- Kafka


def deploy_script(relative: str, name: str) -> ModuleType:
    """A script of the checkout's `deploy/` (e.g. "kafka/localkafka.py"), imported by path once
    per process under `name` (a script, not a package: its module state, such as the brokers it
    started, is shared by every caller)."""
    if name in sys.modules:
        return sys.modules[name]
    path = ROOT / "deploy" / relative
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not path.exists():
        raise FileNotFoundError(f"{path} (the harness needs the source checkout)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def localkafka() -> ModuleType:
    """The checkout's `deploy/kafka/localkafka.py`."""
    return deploy_script("kafka/localkafka.py", "localkafka")


@contextlib.asynccontextmanager
async def local_broker(name: str, heap_mb: int = 1024) -> AsyncIterator[str]:
    """`$KAFKA_BOOTSTRAP` when set, else a broker started for the block (and stopped after it)."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if bootstrap:
        yield bootstrap
        return
    lk, name = localkafka(), f"{name}-{os.getpid()}"
    bootstrap = lk.start(name, 1, 0, heap_mb=heap_mb).bootstrap  # blocks: only at start-up
    try:
        yield str(bootstrap)
    finally:
        lk.stop(name)


def topic_names(requests: str) -> dict[str, str]:
    """The worker's topics, named after its request topic."""
    return {
        "requests": requests,
        "responses": f"{requests}.responses",
        "decisions": f"{requests}.decisions",
        "dlq": f"{requests}.dlq",
        "done": f"{requests}.done",
        "journal": f"{requests}.journal",
        "feedback": f"{requests}.feedback",
        "batch_jobs": f"{requests}.batch-jobs",
        "control": f"{requests}.control",
    }


async def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create `names` with `partitions` each (`configs`: topic configs by name)."""
    configs = configs or {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        await admin.create_topics(
            [NewTopic(n, partitions, 1, topic_configs=dict(configs.get(n, {}))) for n in names]
        )
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    values: list[tuple[bytes | None, bytes]],
    *,
    rate: float | None = None,
    linger_ms: int = 5,
) -> None:
    """Send (key, value) pairs and wait for every ack; at most `rate` per second when given."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms)
    try:
        await producer.start()
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


class Follower:
    """Follows a topic from its start in the background: records per key, their values, when
    they arrived (this process's monotonic clock) and their first and last record timestamps.
    `committed_only`: what a read_committed reader sees (nothing of an aborted transaction)."""

    def __init__(
        self, bootstrap: str, topic: str, poll_ms: int = 200, committed_only: bool = False
    ) -> None:
        self.bootstrap, self.topic, self.poll_ms = bootstrap, topic, poll_ms
        self.committed_only = committed_only
        self.counts: Counter[Any] = Counter()
        self.values: list[bytes] = []
        self.arrivals: list[float] = []
        self.first_ms = self.last_ms = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def record(self, r: Any, now: float) -> None:
        self.counts[r.key or b""] += 1
        self.values.append(r.value)
        self.arrivals.append(now)
        self.first_ms = min(self.first_ms or r.timestamp, r.timestamp)
        self.last_ms = max(self.last_ms, r.timestamp)

    async def __aenter__(self) -> Follower:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed" if self.committed_only else "read_uncommitted",
        )
        try:
            await consumer.start()
        except BaseException:
            await asyncio.shield(consumer.stop())
            raise
        self._task = asyncio.create_task(self._follow(consumer))
        return self

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=self.poll_ms)
                now = time.monotonic()
                for records in batch.values():
                    for r in records:
                        self.record(r, now)
        finally:
            # shielded: the caller's bound may cancel this task, and a half-stopped consumer
            # leaves its fetcher task behind
            await asyncio.shield(consumer.stop())

    async def wait_for_count(self, n: int, timeout_s: float) -> bool:
        """Until `n` distinct keys arrived (or time runs out)."""
        return await poll_until(lambda: len(self.counts) >= n, timeout_s, every_s=0.2)

    @property
    def rate(self) -> float:
        """Distinct keys per second between the first and the last record timestamp."""
        span_s = (self.last_ms - self.first_ms) / 1000
        return len(self.counts) / span_s if span_s > 0 else 0.0

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            # bounded: a consumer that cannot close (a sick cluster) must not hang its caller
            await asyncio.wait_for(self._task, timeout=60)


async def read_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 60.0) -> list[Any]:
    """Every record of `topic` from the start, waiting until at least `expect` arrived."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    out: list[Any] = []
    try:
        await consumer.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(out) < expect and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                out.extend(records)
        # a little longer, to catch duplicates that would exceed the expected count
        batch = await consumer.getmany(timeout_ms=500)
        for records in batch.values():
            out.extend(records)
    finally:
        await consumer.stop()
    return out


async def poll_until(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.1) -> bool:
    """Wait until `predicate()` holds (state owned by other tasks or processes) or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate() and loop.time() < deadline:  # noqa: ASYNC110 (polls foreign state)
        await asyncio.sleep(every_s)
    return predicate()


class NotUtf8(str):
    """A header key whose encoding is not UTF-8: what a hostile or broken producer can write
    (aiokafka's own builder encodes keys with `str.encode`)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfebad-\xc3"


async def send_raw_batch(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]],
    codec: int = 0,
) -> None:
    """One record batch, built by aiokafka's pure-Python builder (which writes header keys as
    given) and sent as is to partition 0."""
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        await producer.start()
        batch = producer.create_batch()
        batch._builder = _DefaultRecordBatchBuilderPy(
            2,
            codec,
            is_transactional=0,
            producer_id=-1,
            producer_epoch=-1,
            base_sequence=0,
            batch_size=1 << 20,
        )
        for key, value, headers in records:
            if not batch.append(timestamp=None, key=key, value=value, headers=headers):
                raise ValueError("the records do not fit one batch")
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sim(latency: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """`llmroute sim-provider` on a free port, in its own process; returns it and its base URL."""
    proc, ready = start_sim_ready(latency, *extra)
    return proc, str(ready["base_url"])


def start_sim_ready(latency: str, *extra: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """`start_sim`, returning the simulator's whole ready line (base URL, dataset rows...)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker",
            "sim-provider",
            "--port",
            "0",
            "--latency",
            latency,
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.stdout is None:
        raise RuntimeError("the simulator has no stdout")
    ready: dict[str, Any] = json.loads(proc.stdout.readline())
    return proc, ready


def sim_calls(base_url: str) -> int:
    """HTTP requests the simulator has taken so far (each `/sim/stats` call counts too)."""
    return int(httpx.get(f"{base_url}/sim/stats", timeout=5.0).json()["requests"])


def spawn_member(
    config: Path, log_path: Path, log_level: str = "WARNING", keys: Mapping[str, str] = SIM_KEYS
) -> subprocess.Popen[bytes]:
    """`llmroute run --config CONFIG` in its own process, its output in `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker",
                "run",
                "--config",
                str(config),
                "--log-level",
                log_level,
            ],
            cwd=ROOT,
            env={**os.environ, **keys},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of process `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Member:
    """One `llmroute run` process with its own metrics port (for /readyz)."""

    def __init__(
        self, workdir: Path, name: str, data: dict[str, Any], log_level: str = "WARNING"
    ) -> None:
        self.name, self.workdir, self.log_level = name, workdir, log_level
        self.port = free_port()
        data = {**data, "metrics": {"enabled": True, "host": "127.0.0.1", "port": self.port}}
        self.config = workdir / f"{name}.json"
        self.config.write_text(json.dumps(data))
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        log = self.workdir / f"{self.name}.{self.restarts}.log"
        self.proc = spawn_member(self.config, log, self.log_level)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the running process (0 when it is not running)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        return cpu_s(self.proc.pid)

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    async def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then the exit status."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        self.proc.terminate()
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


async def all_ready(members: list[Member], timeout_s: float = 120.0) -> None:
    """Until every member's /readyz answers 200; RuntimeError when one exits or time runs out."""
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
