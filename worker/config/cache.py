"""`[cache]`: the semantic cache (worker.kafka.semcache_sync; its core: routers.semcache)."""

from __future__ import annotations

from typing import Literal

from routers.semcache import CacheParams
from worker.config.base import Section

__all__ = ["CacheSettings", "Mode"]

Mode = Literal["interactive", "batch"]


class CacheSettings(Section, frozen=True, kw_only=True):
    """`[cache]`: the semantic cache (off by default)."""

    enabled: bool = False
    similarity_threshold: float = 0.92  # cosine; README "Semantic cache" has the trade-off
    ttl_s: float = 86_400.0
    max_entries: int = 100_000
    max_entries_per_tenant: int = 20_000
    share_topic: bool = True  # publish answers to, and load from, topics.cache
    match_numbers: bool = True  # a hit needs the same numbers in the prompt
    max_temperature: float = 0.0  # an explicit temperature above this is not cached
    cache_unset_temperature: bool = True  # requests that leave temperature to the provider
    tenants_any_temperature: tuple[str, ...] = ()  # tenants cached at any temperature
    tenants: tuple[str, ...] | None = None  # None: every tenant
    modes: tuple[Mode, ...] = ("interactive", "batch")
    load_timeout_s: float = 60.0  # how long `wait_loaded` waits for the backlog by default

    def __post_init__(self) -> None:
        # the pure core validates the rest and says which field is wrong
        self.params()
        if self.max_temperature < 0:
            raise ValueError("max_temperature must be >= 0")

    def params(self) -> CacheParams:
        return CacheParams(
            similarity_threshold=self.similarity_threshold,
            ttl_s=self.ttl_s,
            max_entries=self.max_entries,
            max_entries_per_tenant=self.max_entries_per_tenant,
            match_numbers=self.match_numbers,
        )
