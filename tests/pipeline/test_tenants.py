"""Tenants against the pipeline, with the provider simulator over real HTTP (issue 13):
no escape from the allow-list, exact tenant names, topic binding, caps that hold."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import schemas
from routers.artifact import load_artifact
from schemas import RoutingOptions
from tests.worker.support import ROWS, SIM_KEYS, request_event, worker_config
from worker.config.models import STRONG_MODEL, WEAK_MODEL
from worker.kafka.records import Handled, RecordInfo
from worker.pipeline.core import Pipeline
from worker.pipeline.routing import RoutingCore
from worker.providers.client import ModelClient
from worker.sim import Simulator

TOPIC = "unit.requests"
TENANTS: dict[str, Any] = {
    "cheap": {"allowed_models": [WEAK_MODEL], "allow_overrides": []},
    "capped": {"max_cost_usd": 0.001, "allow_overrides": []},
    "bound": {"topics": ["bound.requests"]},
    "acme": {},
}


def make_core(artifact: Path, base_url: str, **sections: Any) -> RoutingCore:
    sections.setdefault("tenants", TENANTS)
    config = worker_config("127.0.0.1:1", {"requests": TOPIC}, artifact, base_url, **sections)
    return RoutingCore(config, load_artifact(artifact), config.models)


@pytest.fixture
async def pipeline(artifact: Path, sim: Simulator) -> AsyncIterator[Pipeline]:
    core = make_core(artifact, sim.base_url, unknown_tenant="reject")
    async with ModelClient(core.catalogue, env=SIM_KEYS) as client:
        yield Pipeline(core, client)


def record(topic: str = TOPIC) -> RecordInfo:
    return RecordInfo(topic, 0, 0, None, [], None)


async def answer(pipeline: Pipeline, request: schemas.RouteRequest, topic: str = TOPIC) -> Any:
    handled = await pipeline.handle(request, record(topic))
    assert isinstance(handled, Handled)
    return handled.response


# ------------------------------------------------------------ who the tenant is


@pytest.mark.parametrize("name", ["Restricted", "restricted ", "cheap ", "CHEAP", "nobody"])
async def test_unknown_tenant_names_are_rejected_when_configured(pipeline, name) -> None:
    response = await answer(pipeline, request_event(ROWS[0], 1, tenant=name))
    assert response.status == "error" and response.error.type == "RequestRejected"
    assert "unknown tenant" in response.error.message
    assert response.error.retriable is False and response.attempts == []


def test_unknown_tenants_route_as_the_default_tenant_when_configured(artifact: Path) -> None:
    core = make_core(
        artifact,
        "http://127.0.0.1:1",
        unknown_tenant="default",
        default_tenant={"allowed_models": [WEAK_MODEL]},
    )
    req = request_event(ROWS[0], 1, tenant="Cheap")
    core.admit(req, TOPIC)
    assert core.decide(req, core.resolve(req)).eligible == {WEAK_MODEL}


async def test_a_tenant_bound_to_a_topic_is_asked_for_only_from_it(pipeline) -> None:
    # the bound tenant named on the shared topic: the payload cannot claim who asks
    response = await answer(pipeline, request_event(ROWS[0], 1, tenant="bound"))
    assert response.error is not None and "does not send on topic" in response.error.message
    # another tenant named on the bound topic
    response = await answer(pipeline, request_event(ROWS[0], 2, tenant="acme"), "bound.requests")
    assert response.error is not None and "carries only the requests of bound" in (
        response.error.message
    )
    ok = await answer(pipeline, request_event(ROWS[0], 3, tenant="bound"), "bound.requests")
    assert ok.status == "ok"


# ------------------------------------------------------------ no escape


@pytest.mark.parametrize("asked", [[STRONG_MODEL], []])
async def test_a_hostile_allow_list_is_answered_by_no_model(pipeline, asked) -> None:
    req = request_event(ROWS[0], 1, tenant="cheap", routing=RoutingOptions(allowed_models=asked))
    response = await answer(pipeline, req)
    assert response.status == "error" and response.model is None and response.attempts == []
    assert response.error.message.startswith("no eligible model")


# ------------------------------------------------------------ caps that hold


def _big(role: str, n: int) -> schemas.Message:
    return schemas.Message(role=role, content=("lorem ipsum dolor sit amet " * (n // 27 + 1))[:n])


@pytest.mark.parametrize(
    "messages",
    [
        # a 400 KB system prompt before a short question
        [_big("system", 400_000), schemas.Message(role="user", content="hi?")],
        # a long history
        [_big("user" if i % 2 == 0 else "assistant", 2_000) for i in range(30)]
        + [schemas.Message(role="user", content="and now?")],
        # images at their documented token cost
        [
            schemas.Message(
                role="user",
                content=[
                    schemas.ImagePart(
                        image_url=schemas.ImageUrl(url=f"https://example.test/{i}.png")
                    )
                    for i in range(4)
                ]
                + [schemas.TextPart(text="what is in these?")],
            )
        ],
    ],
    ids=["system-prompt", "history", "images"],
)
async def test_a_per_request_cap_holds_over_the_whole_input(pipeline, messages) -> None:
    req = request_event(ROWS[0], 1, tenant="capped", messages=messages)
    response = await answer(pipeline, req)
    assert response.cost_usd <= 0.001
    assert response.status == "error" and response.error.type == "RequestRejected"
    assert "budget" in response.error.message


async def test_without_max_tokens_the_call_is_held_to_the_output_the_cap_assumed(pipeline) -> None:
    req = request_event(ROWS[0], 1, tenant="capped", params=schemas.GenerationParams())
    response = await answer(pipeline, req)
    assert response.status == "ok"
    assert response.usage.output_tokens <= 256  # the policy's default_output_tokens
    assert response.cost_usd <= 0.001


# ------------------------------------------------------------ ids and JSON


@pytest.mark.parametrize("rid", ["請求-ü-1", "emoji-😀-id", "tab-less ümlaut", "x" * 256])
async def test_any_unicode_request_id_is_answered(pipeline, rid) -> None:
    response = await answer(pipeline, request_event(ROWS[0], 1, request_id=rid))
    assert response.status == "ok", response.error
    assert response.request_id == rid


def _raw(request_id: str, extra: str = "") -> bytes:
    head = '{"schema_version": 1, "request_id": ' + json.dumps(request_id) + ', "tenant": "acme", '
    tail = '"messages": [{"role": "user", "content": "hi"}], "created_at": "2026-11-27T10:00:00Z"}'
    return (head + extra + tail).encode()


@pytest.mark.parametrize("rid", ["a\x00b", "line\nbreak", "bell\x07", "del\x7f", "c1\x85"])
def test_control_characters_in_ids_are_a_validation_error(rid) -> None:
    with pytest.raises(schemas.InvalidEvent, match="request_id"):
        schemas.decode(_raw(rid), schemas.RouteRequest)


@pytest.mark.parametrize(
    "extra",
    [
        '"request_id": "other", ',
        '"tenant": "someone-else", ',
        '"routing": {"allowed_models": ["a"], "allowed_models": ["b"]}, ',
    ],
)
def test_duplicate_json_keys_are_a_validation_error(extra) -> None:
    with pytest.raises(schemas.InvalidEvent, match="duplicate key"):
        schemas.decode(_raw("r-1", extra), schemas.RouteRequest)


def test_repeated_keys_in_different_objects_are_fine() -> None:
    data = _raw("r-1").replace(
        b'[{"role": "user", "content": "hi"}]',
        b'[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a:b"},'
        b' {"role": "user", "content": "again"}]',
    )
    assert len(schemas.decode(data, schemas.RouteRequest).messages) == 3


# ------------------------------------------------------------ real cost, per tenant


def test_real_cost_is_counted_per_tenant_with_a_bounded_label_set() -> None:
    from prometheus_client import generate_latest

    from worker.metrics import WorkerMetrics

    metrics = WorkerMetrics(tenants=("acme", "globex"))
    metrics.add_tenant_cost("acme", 0.25)
    metrics.add_tenant_cost("acme", 0.5)
    metrics.add_tenant_cost("globex", 0.125)
    for i in range(50):  # names from requests never become labels
        metrics.add_tenant_cost(f"stranger-{i}", 0.01)
    text = generate_latest(metrics.registry).decode()
    assert 'llmroute_tenant_cost_usd_total{tenant="acme"} 0.75' in text
    assert 'llmroute_tenant_cost_usd_total{tenant="globex"} 0.125' in text
    other = [
        s
        for s in text.splitlines()
        if s.startswith('llmroute_tenant_cost_usd_total{tenant="other"')
    ]
    assert other and float(other[0].split()[-1]) == pytest.approx(0.5)
    assert "stranger" not in text


# ------------------------------------------------------------ the semantic cache


async def test_a_cached_answer_is_served_only_from_an_eligible_model(
    artifact: Path, sim: Simulator
) -> None:
    """A rolling deploy narrows a tenant to the weak model; entries the old members cached from
    the strong model (shared through the cache topic) must not answer it."""
    import asyncio

    from worker.config.cache import CacheSettings
    from worker.kafka.semcache_sync import SemanticCacheSync

    cache = SemanticCacheSync(CacheSettings(enabled=True))
    prompt = [schemas.Message(role="user", content="What is the boiling point of water?")]
    params = schemas.GenerationParams(max_tokens=64, temperature=0.0)
    old = make_core(artifact, sim.base_url, tenants={"acme": {"allowed_models": [STRONG_MODEL]}})
    new = make_core(artifact, sim.base_url, tenants={"acme": {"allowed_models": [WEAK_MODEL]}})
    async with ModelClient(old.catalogue, env=SIM_KEYS) as client:
        before, after = Pipeline(old, client, cache=cache), Pipeline(new, client, cache=cache)
        first = await answer(before, request_event(ROWS[0], 1, messages=prompt, params=params))
        assert first.status == "ok" and first.model == STRONG_MODEL
        for _ in range(100):  # the answer is stored in the background
            if cache.stats.stored:
                break
            await asyncio.sleep(0.02)
        again = await answer(before, request_event(ROWS[0], 2, messages=prompt, params=params))
        assert again.cache_hit and again.model == STRONG_MODEL  # the cache works here
        narrowed = await answer(after, request_event(ROWS[0], 3, messages=prompt, params=params))
        assert narrowed.status == "ok" and not narrowed.cache_hit
        assert narrowed.model == WEAK_MODEL
