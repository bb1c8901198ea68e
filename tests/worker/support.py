"""Real parts for worker tests: a trained router artifact, the provider simulator, a config."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import schemas
from routers import artifact as rartifact
from routers.base import strong_need
from routers.calibration import score_quantiles, threshold_for_strong_fraction
from routers.dataset import Record, data_sha256, record_from_obj
from routers.training import TrainOptions, train
from worker import config as config_mod
from worker.config.models import STRONG_MODEL, WEAK_MODEL, simulator_catalogue
from worker.sim import Dataset

ROOT = Path(__file__).resolve().parents[2]
MMLU = ROOT.parent / "shared" / "data" / "routing" / "mmlu_dev.jsonl"

_WORDS = [
    "integral", "matrix", "theorem", "prove", "derivative", "compute", "history", "poem",
    "translate", "summarise", "capital", "river", "protein", "enzyme", "contract", "tort",
    "statute", "python", "function", "recursion", "proof",
]  # fmt: skip


SIM_KEYS = {"SIM_OPENAI_API_KEY": "sk-test-openai-0123456789",
            "SIM_ANTHROPIC_API_KEY": "sk-ant-test-0123456789"}  # fmt: skip


def dataset_rows(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Labelled rows: the first n of mmlu_dev when it is here, else synthetic ones."""
    if MMLU.exists():
        rows = []
        with MMLU.open() as fh:
            for line in fh:
                rows.append(json.loads(line))
                if len(rows) >= n:
                    break
        return rows
    rng = random.Random(seed)
    out = []
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


def train_artifact(directory: Path, rows: Iterable[dict[str, Any]]) -> Path:
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


class Collector:
    """Follows a topic from its start in the background, counting records per key."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.counts: Counter[str] = Counter()
        self.values: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def __aenter__(self) -> Collector:
        consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False,
        )  # fmt: skip
        await consumer.start()
        self._task = asyncio.create_task(self._follow(consumer))
        return self

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for r in records:
                        self.counts[(r.key or b"").decode()] += 1
                        self.values.append(r.value)
        finally:
            await consumer.stop()

    async def wait_for(self, keys: set[str], timeout_s: float) -> bool:
        return await poll_until(lambda: keys <= set(self.counts), timeout_s)

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


def request_event(row: dict[str, Any], i: int, **fields: Any) -> schemas.RouteRequest:
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


async def produce(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 60.0) -> list[Any]:
    """Every record of `topic` from the start, waiting until at least `expect` arrived."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[Any] = []
    try:
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


ROWS = dataset_rows(600)


def replay_dataset() -> Dataset:
    """What the simulator replays: the labels of ROWS."""
    return Dataset(Dataset.row_from_json(r) for r in ROWS)
