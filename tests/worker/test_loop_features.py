"""Closing the loop inside the worker, with the real broker: A/B arms, shadow calls with a
pairwise judge, router reloads without a restart (control event and registry watch), and the
semantic cache shared through its topic."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

import schemas
from routers.artifact import load_artifact
from routers.split import choose
from tests.conftest import TopicFactory
from tests.kafka.test_worker_kafka import _topics
from tests.worker.support import (
    ROWS,
    Collector,
    poll_until,
    produce,
    request_event,
    train_artifact,
    worker_config,
)
from worker.app import build
from worker.config.models import STRONG_MODEL, WEAK_MODEL
from worker.kafka.topics import ensure_topics
from worker.sim import Simulator

pytestmark = [pytest.mark.kafka]


def _events(n: int, start: int = 0, **fields: Any) -> list[tuple[bytes | None, bytes]]:
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(start, start + n):
        event = request_event(ROWS[i % len(ROWS)], i, **fields)
        out.append((event.request_id.encode(), schemas.encode(event)))
    return out


def _decode_all(values: list[bytes], kind: type[Any]) -> list[Any]:
    return [schemas.decode(v, kind) for v in values]


async def _topics_with_shadow(new_topic: TopicFactory, partitions: int = 2) -> dict[str, str]:
    topics = await _topics(new_topic, partitions=partitions)
    base = topics["requests"]
    return {**topics, "shadow": f"{base}.shadow", "cache": f"{base}.cache"}


class _Running:
    """A worker app running in this event loop (with its background tasks, as `serve` runs)."""

    def __init__(self, config: Any) -> None:
        self.app = build(config)
        self.stop = asyncio.Event()

    async def __aenter__(self) -> Any:
        self.task = asyncio.create_task(self.app.worker.run())
        self.background = asyncio.create_task(self.app.background(self.stop))
        return self.app

    async def __aexit__(self, *exc: object) -> None:
        self.app.worker.stop()
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=60)
        await self.background
        await self.app.close()


async def test_ab_arms_split_by_a_stable_hash_and_are_recorded(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    topics = await _topics_with_shadow(new_topic)
    config = worker_config(
        kafka_bootstrap,
        topics,
        artifact,
        sim.base_url,
        policies={
            "default": {"kind": "threshold", "strong_fraction": 0.5},
            "cheap": {"kind": "threshold", "strong_fraction": 0.05},
        },
        experiments=[
            {
                "name": "frugal",
                "tenants": ["acme"],
                "arms": [{"name": "control"}, {"name": "cheap", "policy": "cheap"}],
            }
        ],
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    n = 240
    events = _events(n) + _events(20, start=n, tenant="other")
    await produce(kafka_bootstrap, topics["requests"], events)
    wanted = {f"req-{i:06d}" for i in range(n + 20)}
    async with (
        Collector(kafka_bootstrap, topics["responses"]) as responses,
        _Running(config) as app,
    ):
        assert await responses.wait_for(wanted, timeout_s=90)
        arms = app.metrics.arm_requests
    by_arm: dict[str | None, list[schemas.RouteResponse]] = {}
    for r in _decode_all(responses.values, schemas.RouteResponse):
        assert r.decision is not None
        by_arm.setdefault(r.decision.arm, []).append(r)
        if r.tenant == "other":
            assert r.decision.arm is None  # not part of the experiment
            continue
        expected = ["control", "cheap"][choose(r.request_id, [1.0, 1.0], "frugal")]
        assert r.decision.arm == f"frugal:{expected}"
    control, cheap = by_arm["frugal:control"], by_arm["frugal:cheap"]
    assert 0.35 < len(control) / n < 0.65
    strong_share = {
        k: sum(r.model == STRONG_MODEL for r in v) / len(v)
        for k, v in (("control", control), ("cheap", cheap))
    }
    assert strong_share["cheap"] < strong_share["control"]
    # each arm routed with its own policy: the cheap arm's threshold asks for more confidence
    thresholds = {
        k: {r.decision.threshold for r in v if r.decision}
        for k, v in (("control", control), ("cheap", cheap))
    }
    assert len(thresholds["control"]) == len(thresholds["cheap"]) == 1
    assert min(thresholds["cheap"]) > max(thresholds["control"])
    assert arms.labels("frugal:cheap", "ok")._value.get() == len(cheap)


async def test_shadow_calls_never_change_the_answer_and_are_judged(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    topics = await _topics_with_shadow(new_topic)
    config = worker_config(
        kafka_bootstrap,
        topics,
        artifact,
        sim.base_url,
        shadow={"sample": 0.5, "model": "other", "judge_model": STRONG_MODEL},
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    n = 80
    await produce(kafka_bootstrap, topics["requests"], _events(n))
    wanted = {f"req-{i:06d}" for i in range(n)}
    async with (
        Collector(kafka_bootstrap, topics["responses"]) as responses,
        Collector(kafka_bootstrap, topics["shadow"]) as shadow,
        Collector(kafka_bootstrap, topics["feedback"]) as feedback,
        Collector(kafka_bootstrap, topics["decisions"]) as decisions,
    ):
        async with _Running(config) as app:
            assert await responses.wait_for(wanted, timeout_s=90)
            await poll_until(lambda: app.pipeline.shadow_stats["calls"] >= 20, 30)
            await poll_until(lambda: len(feedback.counts) >= 20, 30)
            stats = dict(app.pipeline.shadow_stats)
        answers = {r.request_id: r for r in _decode_all(responses.values, schemas.RouteResponse)}
        shadows = _decode_all(shadow.values, schemas.RouteResponse)
        verdicts = _decode_all(feedback.values, schemas.Feedback)
        shadow_decisions = [
            d for d in _decode_all(decisions.values, schemas.RoutingDecision) if d.shadow
        ]
    assert max(responses.counts.values()) == 1 and set(answers) == wanted
    assert 0.3 * n < len(shadows) < 0.7 * n
    for s in shadows:
        user = answers[s.request_id]
        assert s.model != user.model and {s.model, user.model} == {STRONG_MODEL, WEAK_MODEL}
    assert {d.request_id for d in shadow_decisions} == {s.request_id for s in shadows}
    assert all(d.shadow_model in (STRONG_MODEL, WEAK_MODEL) for d in shadow_decisions)
    assert verdicts and all(v.source == "judge" and v.name == "judge_pairwise" for v in verdicts)
    # shadow cost is kept apart: the users' responses carry only their own calls
    assert stats["cost_usd"] > 0 and stats["judge_cost_usd"] > 0
    assert sum(s.cost_usd for s in shadows) == pytest.approx(stats["cost_usd"], rel=1e-6)


async def test_reload_router_by_control_event_without_losing_requests(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    artifact: Path,
    sim: Simulator,
    tmp_path: Path,
) -> None:
    other = train_artifact(tmp_path / "v2", ROWS[:300])
    old_version = load_artifact(artifact).router.version
    new_version = load_artifact(other).router.version
    assert old_version != new_version
    topics = await _topics_with_shadow(new_topic)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    n = 300
    wanted = {f"req-{i:06d}" for i in range(n)}
    async with (
        Collector(kafka_bootstrap, topics["responses"]) as responses,
        _Running(config) as app,
    ):
        await poll_until(lambda: app.worker.ready.is_set(), 30)
        assert await poll_until(lambda: app.worker.control_ready.is_set(), 30)
        # requests keep flowing while the new version is announced and loaded
        sending = asyncio.create_task(produce(kafka_bootstrap, topics["requests"], _events(n // 2)))
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            command = schemas.Control(
                schema_version=1,
                command_id="reload-1",
                action="reload_router",
                artifact_path=str(other),
                router_version=new_version,
                issued_at=datetime.now(UTC),
            )
            await producer.send_and_wait(topics["control"], schemas.encode(command))
        finally:
            await producer.stop()
        await sending
        assert await poll_until(lambda: app.pipeline.core.router.version == new_version, 30)
        await produce(kafka_bootstrap, topics["requests"], _events(n // 2, start=n // 2))
        assert await responses.wait_for(wanted, timeout_s=90)
    assert set(responses.counts) == wanted and max(responses.counts.values()) == 1
    versions = Counter(
        r.decision.router_version
        for r in _decode_all(responses.values, schemas.RouteResponse)
        if r.decision is not None
    )
    assert set(versions) <= {old_version, new_version}
    assert versions[new_version] >= n // 2  # every request produced after the reload


async def test_registry_watch_picks_up_a_promoted_version(
    artifact: Path, sim: Simulator, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    first = train_artifact(registry / "v0001", ROWS[:400])
    second = train_artifact(registry / "v0002", ROWS[100:500])
    (registry / "CURRENT").write_text(first.name + "\n")
    config = worker_config(
        "127.0.0.1:1",
        {"requests": "unused"},
        registry,
        sim.base_url,
        router={"artifact": str(registry), "watch_s": 0.1},
    )
    app = build(config)
    v1 = load_artifact(first).router.version
    v2 = load_artifact(second).router.version
    assert app.pipeline.core.router.version == v1
    assert app.reloader is not None
    await app.reloader.start()  # the member starts its services (the reloader among them)
    try:
        tmp = registry / ".CURRENT.tmp"
        tmp.write_text(second.name + "\n")
        os.replace(tmp, registry / "CURRENT")  # how `llmroute retrain` promotes
        assert await poll_until(lambda: app.pipeline.core.router.version == v2, 10)
        assert app.metrics.router_version.labels(app.pipeline.core.router.name, v2)._value.get()
    finally:
        await app.reloader.stop()
        await app.close()


async def test_semantic_cache_answers_near_duplicates_per_tenant(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    topics = await _topics_with_shadow(new_topic)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url, cache={"enabled": True})
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    row = ROWS[7]
    prompt = row["prompt"]
    first = request_event(row, 1)
    again = request_event({"prompt": "  " + prompt.upper() + " "}, 2)  # a near-duplicate
    other_tenant = request_event(row, 3, tenant="globex")
    async with (
        Collector(kafka_bootstrap, topics["responses"]) as responses,
        _Running(config) as app,
    ):
        await produce(kafka_bootstrap, topics["requests"], [(b"req-000001", schemas.encode(first))])
        assert await responses.wait_for({"req-000001"}, timeout_s=60)
        cache = app.pipeline.cache
        assert cache is not None
        assert await poll_until(lambda: cache.stats.stored >= 1, 10)
        await produce(
            kafka_bootstrap,
            topics["requests"],
            [
                (b"req-000002", schemas.encode(again)),
                (b"req-000003", schemas.encode(other_tenant)),
            ],
        )
        assert await responses.wait_for({"req-000002", "req-000003"}, timeout_s=60)
    by_id = {r.request_id: r for r in _decode_all(responses.values, schemas.RouteResponse)}
    hit, miss = by_id["req-000002"], by_id["req-000003"]
    assert hit.cache_hit and hit.cost_usd == 0.0 and hit.attempts == []
    assert hit.message is not None and by_id["req-000001"].message is not None
    assert hit.message.content == by_id["req-000001"].message.content
    assert hit.decision is not None and hit.decision.cache_hit
    assert not miss.cache_hit and miss.attempts  # another tenant never sees the entry


FOREIGN = [
    "def merge(a, b):\n    return {**a, **b}  # why does this drop keys? fix the bug {i}",
    "SELECT name, COUNT(*) FROM orders o JOIN users u ON o.uid = u.id GROUP BY name -- v{i}",
    "Schreibe eine kurze Zusammenfassung des Romans Der Prozess von Franz Kafka, Teil {i}.",
]


async def test_unfamiliar_prompts_are_on_the_decision_event_and_shadow_judged_first(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    topics = await _topics_with_shadow(new_topic)
    config = worker_config(
        kafka_bootstrap,
        topics,
        artifact,
        sim.base_url,
        shadow={"sample": 0.001, "model": "other", "judge_model": STRONG_MODEL},
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    familiar = _events(30)
    foreign = []
    for i in range(9):
        row = {"prompt": FOREIGN[i % 3].replace("{i}", str(i))}
        event = request_event(row, 1000 + i)
        foreign.append((event.request_id.encode(), schemas.encode(event)))
    await produce(kafka_bootstrap, topics["requests"], familiar + foreign)
    wanted = {f"req-{i:06d}" for i in range(30)} | {f"req-{1000 + i:06d}" for i in range(9)}
    async with (
        Collector(kafka_bootstrap, topics["responses"]) as responses,
        Collector(kafka_bootstrap, topics["decisions"]) as decisions,
    ):
        async with _Running(config) as app:
            assert await responses.wait_for(wanted, timeout_s=90)
            await poll_until(lambda: app.pipeline.shadow_stats["calls"] >= 9, 30)
        events = _decode_all(decisions.values, schemas.RoutingDecision)
    routed = {d.request_id: d for d in events if not d.shadow}
    shadowed = {d.request_id for d in events if d.shadow}
    assert set(routed) == wanted
    assert all(d.decision.unfamiliar is not None for d in routed.values())
    far = {r for r, d in routed.items() if d.decision.unfamiliar > 1.0}
    assert {f"req-{1000 + i:06d}" for i in range(9)} <= far
    assert len(far) < 15  # most familiar prompts stay under 1.0
    assert far <= shadowed  # every unfamiliar prompt was shadowed, whatever the sample
    assert all("unfamiliar prompt" in routed[r].decision.reason for r in far)
