"""The semantic cache in the worker: what may be cached, and sharing through a compacted topic
between two members on a real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

import schemas
from tests.conftest import TopicFactory
from worker.config.cache import CacheSettings
from worker.kafka.semcache_sync import SemanticCacheSync, cache_key, entry_key

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
QUESTION = "What is the boiling point of water at sea level, in degrees Celsius?"


def request(
    text: str = QUESTION, *, tenant: str = "acme", request_id: str = "r1", **fields: Any
) -> schemas.RouteRequest:
    messages = fields.pop("messages", [schemas.Message(role="user", content=text)])
    return schemas.RouteRequest(
        schema_version=1,
        request_id=request_id,
        tenant=tenant,
        messages=messages,
        created_at=NOW,
        **fields,
    )


def response(
    req: schemas.RouteRequest, content: str = "100 degrees Celsius.", **fields: Any
) -> schemas.RouteResponse:
    base: dict[str, Any] = {
        "schema_version": 1,
        "request_id": req.request_id,
        "tenant": req.tenant,
        "status": "ok",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "message": schemas.OutputMessage(content=content),
        "finish_reason": "stop",
        "usage": schemas.Usage(input_tokens=20, output_tokens=6),
        "cost_usd": 0.0021,
        "latency_ms": 300.0,
        "decision": None,
        "attempts": [],
        "error": None,
        "trace_id": None,
        "created_at": NOW,
    }
    base.update(fields)
    return schemas.RouteResponse(**base)


ON = CacheSettings(enabled=True, share_topic=False)


# ---------------------------------------------------------------- what may be cached


def test_the_params_key_covers_what_changes_an_answer() -> None:
    key = cache_key(ON, request())
    assert isinstance(key, tuple) and key[1] == QUESTION

    def params_key(req: schemas.RouteRequest) -> str:
        got = cache_key(ON, req)
        assert isinstance(got, tuple), got
        return got[0]

    base = params_key(request())
    system = [
        schemas.Message(role="system", content="Answer in Fahrenheit."),
        schemas.Message(role="user", content=QUESTION),
    ]
    assert params_key(request(messages=system)) != base
    assert params_key(request(params=schemas.GenerationParams(max_tokens=5))) != base
    assert params_key(request(routing=schemas.RoutingOptions(denied_models=["x"]))) != base
    # who asks and how the request travels do not change the answer
    assert params_key(request(params=schemas.GenerationParams(user="u-42"))) == base
    assert params_key(request(routing=schemas.RoutingOptions(mode="batch"))) == base
    assert params_key(request(request_id="other")) == base


@pytest.mark.parametrize(
    ("settings", "req", "reason"),
    [
        (ON, request(params=schemas.GenerationParams(temperature=0.7)), "temperature"),
        (
            msgspec.structs.replace(ON, cache_unset_temperature=False),
            request(),
            "temperature unset",
        ),
        (msgspec.structs.replace(ON, tenants=("globex",)), request(), "tenant"),
        (msgspec.structs.replace(ON, modes=("batch",)), request(), "mode"),
        (ON, request(metadata={"cache": "off"}), "cache=off"),
        (
            ON,
            request(
                messages=[
                    schemas.Message(
                        role="user",
                        content=[
                            schemas.TextPart(text="what is in this picture?"),
                            schemas.ImagePart(image_url=schemas.ImageUrl(url="https://x/y.png")),
                        ],
                    )
                ]
            ),
            "non-text",
        ),
        (ON, request(messages=[schemas.Message(role="system", content="hi")]), "no user"),
    ],
)
def test_requests_that_must_not_use_the_cache(
    settings: CacheSettings, req: schemas.RouteRequest, reason: str
) -> None:
    got = cache_key(settings, req)
    assert isinstance(got, str) and reason in got


def test_a_tenant_may_be_cached_at_any_temperature() -> None:
    settings = msgspec.structs.replace(ON, tenants_any_temperature=("acme",))
    hot = request(params=schemas.GenerationParams(temperature=1.2))
    assert isinstance(cache_key(settings, hot), tuple)


async def test_local_hits_count_savings_and_errors_are_not_stored() -> None:
    sync = SemanticCacheSync(ON)
    req = request()
    assert sync.lookup(req) is None
    assert not await sync.publish(req, response(req, status="error", message=None))
    assert not await sync.publish(req, response(req, cache_hit=True))
    assert await sync.publish(req, response(req))
    hit = sync.lookup(request(QUESTION.lower() + "  ", request_id="r2"))
    assert hit is not None and hit.value.content == "100 degrees Celsius."
    assert sync.lookup(request(tenant="globex", request_id="r3")) is None
    assert (sync.stats.hits, sync.stats.misses, sync.stats.stored) == (1, 2, 1)
    assert sync.stats.saved_usd == pytest.approx(0.0021)
    disabled = SemanticCacheSync(CacheSettings(enabled=False))
    assert not await disabled.publish(req, response(req))
    assert disabled.lookup(req) is None


def test_settings_reject_bad_values() -> None:
    for bad in ({"similarity_threshold": 1.5}, {"ttl_s": 0}, {"max_temperature": -1.0}):
        with pytest.raises(ValueError):
            CacheSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(msgspec.ValidationError, match="unknown"):
        msgspec.convert({"enabled": True, "treshold": 0.9}, CacheSettings)


# ---------------------------------------------------------------- sharing on a real broker


class Clock:
    """Wall-clock seconds that a test can move forward."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def _eventually(check: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


@pytest.mark.kafka
async def test_two_members_share_entries_through_the_compacted_topic(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("cache", partitions=3, **{"cleanup.policy": "compact"})
    settings = CacheSettings(enabled=True, share_topic=True, ttl_s=3_600.0)
    kw = {"bootstrap_servers": kafka_bootstrap}
    clock = Clock()
    a = SemanticCacheSync(settings, topic=topic, client_kwargs=kw, clock=clock, worker_id="a")
    b = SemanticCacheSync(settings, topic=topic, client_kwargs=kw, clock=clock, worker_id="b")
    late: SemanticCacheSync | None = None
    producer = AIOKafkaProducer(**kw)
    await producer.start()
    try:
        await a.start()
        await b.start()
        assert await a.wait_loaded(30) and await b.wait_loaded(30)

        req = request()
        assert await a.publish(req, response(req))
        assert a.stats.published == 1
        paraphrase = request(QUESTION.upper().replace(" ", "  ").rstrip("?"), request_id="r2")
        assert await _eventually(lambda: b.cache.tenant_size("acme") == 1)
        hit = b.lookup(paraphrase)
        assert hit is not None
        assert hit.value.content == "100 degrees Celsius." and hit.value.request_id == "r1"
        assert b.lookup(request(tenant="globex", request_id="r3")) is None  # other tenant
        other_params = request(params=schemas.GenerationParams(max_tokens=3), request_id="r4")
        assert b.lookup(other_params) is None

        # an entry that expired before a member read it is not loaded; a live one is
        key = cache_key(settings, request("How many legs does a spider have?"))
        assert isinstance(key, tuple)
        expired = schemas.CacheEntry(
            schema_version=1,
            tenant="acme",
            params_key=key[0],
            prompt_sha256="0" * 64,
            prompt=key[1],
            model="gpt-4o-mini",
            content="Eight.",
            usage=schemas.Usage(),
            cost_usd=0.001,
            created_at=datetime.fromtimestamp(clock.now - 7_200, UTC),
            expires_at=datetime.fromtimestamp(clock.now - 60, UTC),
        )
        await producer.send_and_wait(
            topic, schemas.encode(expired), key=entry_key("acme", key[0], "0" * 64)
        )
        await producer.send_and_wait(topic, b"{not json", key=b"junk")
        late = SemanticCacheSync(settings, topic=topic, client_kwargs=kw, clock=clock)
        await late.start()
        assert await late.wait_loaded(30)
        assert late.cache.tenant_size("acme") == 1
        assert late.stats.load_expired == 1 and late.stats.load_invalid == 1
        assert late.lookup(request("how many legs does a spider have?")) is None
        assert late.lookup(paraphrase) is not None

        # a tombstone removes the entry everywhere
        entry = a.entry_for(req, response(req))
        assert entry is not None
        await producer.send_and_wait(
            topic, None, key=entry_key(entry.tenant, entry.params_key, entry.prompt_sha256)
        )
        assert await _eventually(lambda: len(b.cache) == 0 and len(late.cache) == 0)
        assert b.lookup(paraphrase) is None

        # time passes: what was loaded expires on the member's clock
        assert await a.publish(req, response(req))
        assert await _eventually(lambda: b.cache.tenant_size("acme") == 1)
        clock.now += 3_601
        assert b.lookup(paraphrase) is None
    finally:
        for sync in (a, b, late):
            if sync is not None:
                await sync.stop()
        await producer.stop()
