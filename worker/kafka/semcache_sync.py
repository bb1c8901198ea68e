"""The semantic cache in the worker: which requests may use it, and sharing it across members.

    cache_key           request -> (params key, text) or the reason it is not cacheable
    SemanticCacheSync   the local `routers.semcache.SemanticCache` of one member, filled by
                        this member's answers (`publish`) and by everyone's, read back from the
                        compacted topic `llm.cache` (`start` runs the follower)

What a hit must not change: the answer is only reused for the same tenant and the same *params
key*, a sha256 over the generation parameters (minus `user`), the routing options and every
message except the last user message (system prompt, history): only the last user message is
compared for similarity. Requests with image parts, an explicit temperature above
`max_temperature` (unless the tenant is in `tenants_any_temperature`), a mode or tenant not
listed, or metadata `cache = "off"` neither read nor write the cache.

The follower (`worker.kafka.table.TopicFollower`) reads the topic from the beginning (a compacted
topic keeps the latest entry per key), skips expired entries and null values (tombstones remove
the key), then keeps following; after a failure it resumes where it was. Vectors are computed in
a worker thread with the same `PromptVectorizer` parameters on every member, so an entry
published by one member is found by the others. `wait_loaded()` returns once the backlog
present at start is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer

import schemas
from routers.semcache import (
    CacheHit,
    PromptVector,
    PromptVectorizer,
    SemanticCache,
    VectorizerParams,
)
from worker.config.cache import CacheSettings
from worker.kafka.table import TopicFollower

__all__ = [
    "CacheStats",
    "CachedAnswer",
    "SemanticCacheSync",
    "cache_key",
    "entry_key",
]

log = logging.getLogger(__name__)


class CachedAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """What a hit returns: the answer as first produced (its cost is what the hit saved)."""

    model: str
    provider: str | None
    content: str
    finish_reason: str | None
    usage: schemas.Usage
    cost_usd: float
    request_id: str | None = None


@dataclass(slots=True)
class CacheStats:
    """Counters of one member since start; map them to metrics (all only increase):
    lookups by result (`hits`, `misses`, `skipped` = not cacheable), `saved_usd` (the recorded
    cost of the answers served from cache), and the sharing traffic."""

    hits: int = 0
    misses: int = 0
    skipped: int = 0
    saved_usd: float = 0.0
    saved_output_tokens: int = 0
    stored: int = 0  # answers this member added
    published: int = 0
    publish_errors: int = 0
    loaded: int = 0  # entries read from the topic and added
    load_expired: int = 0  # entries read from the topic that had already expired
    load_invalid: int = 0
    removed: int = 0  # tombstones applied


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def cache_key(settings: CacheSettings, request: schemas.RouteRequest) -> tuple[str, str] | str:
    """(params key, text to compare) when the request may use the cache, else the reason."""
    if settings.tenants is not None and request.tenant not in settings.tenants:
        return "tenant not cached"
    if request.routing.mode not in settings.modes:
        return "mode not cached"
    if (request.metadata or {}).get("cache") == "off":
        return "metadata cache=off"
    temperature = request.params.temperature
    if request.tenant not in settings.tenants_any_temperature:
        if temperature is None and not settings.cache_unset_temperature:
            return "temperature unset"
        if temperature is not None and temperature > settings.max_temperature:
            return "temperature above max_temperature"
    last_user = -1
    for i, message in enumerate(request.messages):
        if not isinstance(message.content, str) and any(
            not isinstance(part, schemas.TextPart) for part in message.content
        ):
            return "non-text content"
        if message.role == "user":
            last_user = i
    if last_user < 0:
        return "no user message"
    text = request.messages[last_user].text()
    if not text.strip():
        return "empty prompt"
    context = [m for i, m in enumerate(request.messages) if i != last_user]
    params = msgspec.structs.replace(request.params, user=None)
    fingerprint = {
        "params": schemas.to_builtins(params),
        "routing": schemas.to_builtins(
            msgspec.structs.replace(request.routing, mode="interactive")
        ),
        "context": [schemas.to_builtins(m) for m in context],
        "position": last_user,
    }
    blob = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _sha256(blob), text


def entry_key(tenant: str, params_key: str, prompt_sha256: str) -> bytes:
    return f"{tenant}/{params_key}/{prompt_sha256}".encode()


def _parse_key(key: bytes) -> tuple[str, str, str] | None:
    parts = key.decode("utf-8", "replace").rsplit("/", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def _epoch(ts: datetime) -> float:
    return ts.timestamp()


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


class SemanticCacheSync:
    """One member's semantic cache and its share of the compacted topic.

    `clock` gives wall-clock seconds (entries carry absolute expiry times that other members
    compare with theirs). Not thread-safe: call it from the event loop it was started on.
    """

    def __init__(
        self,
        settings: CacheSettings,
        *,
        topic: str = schemas.TOPICS["cache"],
        client_kwargs: dict[str, Any] | None = None,
        producer: AIOKafkaProducer | None = None,
        vectorizer: PromptVectorizer | None = None,
        clock: Callable[[], float] = time.time,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.vectorizer = vectorizer or PromptVectorizer(VectorizerParams())
        self.cache: SemanticCache[CachedAnswer] = SemanticCache(
            settings.params(), dim=self.vectorizer.dim
        )
        self.stats = CacheStats()
        self._client_kwargs = client_kwargs or {}
        self._producer = producer
        self._own_producer = False
        self._clock = clock
        self._worker_id = worker_id
        self._follower: asyncio.Task[None] | None = None
        # from the beginning: a compacted topic keeps the latest entry per key
        self._reader = TopicFollower(self._client_kwargs, topic, self._apply, max_records=2_000)

    @property
    def sharing(self) -> bool:
        return self.settings.enabled and self.settings.share_topic

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Start the topic follower (and a producer, when none was given)."""
        if not self.sharing or self._follower is not None:
            return
        if self._producer is None:
            self._producer = AIOKafkaProducer(
                acks="all", enable_idempotence=True, **self._client_kwargs
            )
            await self._producer.start()
            self._own_producer = True
        self._follower = asyncio.create_task(self._reader.run(), name="semcache-follower")

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        if self._own_producer and self._producer is not None:
            await self._producer.stop()
            self._producer = None
            self._own_producer = False

    async def wait_loaded(self, timeout_s: float | None = None) -> bool:
        """True once the entries present on the topic at start are loaded (False on timeout)."""
        if not self.sharing:
            return True
        timeout = self.settings.load_timeout_s if timeout_s is None else timeout_s
        return await self._reader.wait_loaded(timeout)

    # ------------------------------------------------------------------ the pipeline's calls

    def lookup(self, request: schemas.RouteRequest) -> CacheHit[CachedAnswer] | None:
        """The cached answer for a near-duplicate of this request, or None (also when the
        request may not use the cache: `stats.skipped`). Vectorising costs ~0.3-1 ms."""
        if not self.settings.enabled:
            return None
        key = cache_key(self.settings, request)
        if isinstance(key, str):
            self.stats.skipped += 1
            return None
        params_key, text = key
        hit = self.cache.lookup(
            request.tenant, params_key, self.vectorizer.encode_one(text), self._clock()
        )
        if hit is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self.stats.saved_usd += hit.value.cost_usd
        self.stats.saved_output_tokens += hit.value.usage.output_tokens
        return hit

    def entry_for(
        self, request: schemas.RouteRequest, response: schemas.RouteResponse
    ) -> schemas.CacheEntry | None:
        """The cache entry for an answered request, or None when it must not be cached (not
        cacheable, an error, an empty answer, itself served from cache, a content filter)."""
        if not self.settings.enabled or response.status != "ok" or response.cache_hit:
            return None
        if response.message is None or not response.message.content or response.model is None:
            return None
        if response.finish_reason not in (None, "stop", "length"):
            return None
        key = cache_key(self.settings, request)
        if isinstance(key, str):
            return None
        params_key, text = key
        now = self._clock()
        return schemas.CacheEntry(
            schema_version=1,
            tenant=request.tenant,
            params_key=params_key,
            prompt_sha256=_sha256(text),
            prompt=text,
            model=response.model,
            provider=response.provider,
            content=response.message.content,
            finish_reason=response.finish_reason,
            usage=response.usage,
            cost_usd=response.cost_usd,
            created_at=_utc(now),
            expires_at=_utc(now + self.settings.ttl_s),
            request_id=request.request_id,
            worker_id=self._worker_id,
        )

    async def publish(self, request: schemas.RouteRequest, response: schemas.RouteResponse) -> bool:
        """Store an answer locally and, when sharing, send it to the topic (waits for the
        broker's acknowledgement; a failure is counted and logged, never raised). True when it
        was stored."""
        entry = self.entry_for(request, response)
        if entry is None:
            return False
        vector = self.vectorizer.encode_one(entry.prompt)
        if not self._add(entry, vector):
            return False
        self.stats.stored += 1
        if self.sharing and self._producer is not None:
            key = entry_key(entry.tenant, entry.params_key, entry.prompt_sha256)
            try:
                await self._producer.send_and_wait(self.topic, schemas.encode(entry), key=key)
                self.stats.published += 1
            except Exception:  # the answer is served already; sharing it is best effort
                self.stats.publish_errors += 1
                log.warning("could not publish a cache entry to %s", self.topic, exc_info=True)
        return True

    # ------------------------------------------------------------------ the follower

    def _add(self, entry: schemas.CacheEntry, vector: PromptVector) -> bool:
        answer = CachedAnswer(
            model=entry.model,
            provider=entry.provider,
            content=entry.content,
            finish_reason=entry.finish_reason,
            usage=entry.usage,
            cost_usd=entry.cost_usd,
            request_id=entry.request_id,
        )
        return self.cache.put(
            entry.tenant,
            entry.params_key,
            entry.prompt_sha256,
            vector,
            answer,
            self._clock(),
            expires_at=_epoch(entry.expires_at),
            created_at=_epoch(entry.created_at),
        )

    async def _apply(self, records: list[Any]) -> None:
        now = self._clock()
        fresh: list[schemas.CacheEntry] = []
        for record in records:
            if record.value is None:  # tombstone
                parsed = _parse_key(record.key or b"")
                if parsed is not None and self.cache.remove(*parsed):
                    self.stats.removed += 1
                continue
            try:
                entry = schemas.decode(record.value, schemas.CacheEntry)
            except schemas.InvalidEvent as exc:
                self.stats.load_invalid += 1
                log.warning("ignoring an invalid cache entry: %s", exc)
                continue
            if _epoch(entry.expires_at) <= now:
                self.stats.load_expired += 1
                continue
            fresh.append(entry)
        if not fresh:
            return
        # CPU work (~0.5 ms a prompt): off the event loop
        vectors = await asyncio.to_thread(self.vectorizer.encode, [e.prompt for e in fresh])
        for entry, vector in zip(fresh, vectors, strict=True):
            if self._add(entry, vector):
                self.stats.loaded += 1
            else:
                self.stats.load_expired += 1
