"""Per-tenant spend limits per hour and per day, enforced by every member from spend shared
through a compacted topic.

    [tenants.acme]
    spend_limit_usd_per_hour = 5.0
    spend_limit_usd_per_day = 50.0

`SpendLedger` is the bookkeeping (no I/O, injected wall clock). Windows are UTC hours and days
(`int(now // 3600)`, `int(now // 86400)`). A member's own spend in a window is the real cost of
its finished calls plus the cost bound of its calls in flight (`reserve` before the call,
`settle` with the real cost after). A request is admitted when, in every limited window,
`others' published spend + own spend + the request's cost bound <= limit`; else it is rejected
(`RequestRejected`, naming the window and the figures).

`SpendSync` shares it: every `publish_interval_s` a member publishes its own totals that changed
(key `<tenant>|<h|d><window>|<member>`, value `{"usd": x}`) to the compacted topic, and it follows
the topic from the start, keeping each other member's latest total per key (older windows are
dropped).

Overshoot bound. A member's spend reaches the others after at most
`D = publish_interval_s + the topic's end-to-end delay`. Every member admits a request only when
its own view stays within the limit, and its own reservations are counted at once, so with one
member nothing overshoots (within what `cost bound` bounds: the policy's input token bound and
the output tokens the call is held to). With N members, during D the other N - 1 members may each
admit spend the others do not see yet: spend in a window can exceed its limit by at most the
spend the members admit within one delay D, and never by more than (N - 1) x the limit (each
member alone stays within it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from worker.kafka.table import TopicFollower

log = logging.getLogger(__name__)

__all__ = ["SpendLedger", "SpendLimit", "SpendSync"]

WINDOWS = (("h", 3600), ("d", 86400))


@dataclass(frozen=True, slots=True)
class SpendLimit:
    per_hour_usd: float | None = None
    per_day_usd: float | None = None

    def of(self, kind: str) -> float | None:
        return self.per_hour_usd if kind == "h" else self.per_day_usd


class SpendLedger:
    """Own spend (settled + reserved) and the other members' published spend, per window."""

    def __init__(
        self,
        member: str,
        limits: Mapping[str, SpendLimit],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.member = member
        self.limits = dict(limits)
        self._clock = clock
        self._own: dict[tuple[str, str], float] = {}  # (tenant, window) -> usd
        self._others: dict[tuple[str, str], dict[str, float]] = {}  # -> member -> usd
        self._dirty: set[tuple[str, str]] = set()

    def limited(self, tenant: str) -> bool:
        return tenant in self.limits

    def _windows(self) -> list[tuple[str, str]]:
        now = self._clock()
        return [(kind, f"{kind}{int(now // size)}") for kind, size in WINDOWS]

    def spent(self, tenant: str, window: str) -> float:
        """Everyone's known spend of `tenant` in `window` (this member's is current)."""
        others = self._others.get((tenant, window), {})
        return self._own.get((tenant, window), 0.0) + sum(others.values())

    def reserve(self, tenant: str, bound_usd: float) -> str | None:
        """Count `bound_usd` against every limited window of `tenant`; None when admitted, else
        why not (nothing is reserved then)."""
        limit = self.limits.get(tenant)
        if limit is None:
            return None
        windows = self._windows()
        for kind, window in windows:
            cap = limit.of(kind)
            if cap is None:
                continue
            spent = self.spent(tenant, window)
            if not spent + bound_usd <= cap:
                name = "hour" if kind == "h" else "day"
                return (
                    f"tenant {tenant!r} spend limit: ${spent:.6f} spent this {name} + up to "
                    f"${bound_usd:.6f} for this request > ${cap:.6f}"
                )
        for _, window in windows:
            self._add(tenant, window, bound_usd)
        return None

    def settle(self, tenant: str, reserved_usd: float, actual_usd: float) -> None:
        """Replace a reservation by the real cost (a call that cost nothing settles with 0)."""
        if tenant not in self.limits:
            return
        for _, window in self._windows():
            self._add(tenant, window, actual_usd - reserved_usd)

    def _add(self, tenant: str, window: str, usd: float) -> None:
        key = (tenant, window)
        self._own[key] = max(0.0, self._own.get(key, 0.0) + usd)
        self._dirty.add(key)

    # ------------------------------------------------------------ sharing

    def changed(self) -> list[tuple[bytes, bytes]]:
        """(key, value) records of this member's totals that changed since the last call."""
        out = [
            (
                f"{tenant}|{window}|{self.member}".encode(),
                json.dumps({"usd": round(self._own.get((tenant, window), 0.0), 9)}).encode(),
            )
            for tenant, window in sorted(self._dirty)
        ]
        self._dirty.clear()
        return out

    def unsent(self, records: list[tuple[bytes, bytes]]) -> None:
        """Publishing `records` failed: send those totals again next time."""
        for key, _ in records:
            tenant, window, _member = key.decode().rsplit("|", 2)
            self._dirty.add((tenant, window))

    def observe(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the spend topic (another member's total, or this member's own echo)."""
        if key is None or value is None:
            return
        try:
            tenant, window, member = key.decode().rsplit("|", 2)
            usd = float(json.loads(value)["usd"])
        except (ValueError, KeyError, TypeError):
            return
        if member == self.member:
            # after a restart: this member's earlier spend in a current window is still spent
            if (tenant, window) not in self._own and window in {w for _, w in self._windows()}:
                self._own[(tenant, window)] = usd
            return
        if window not in {w for _, w in self._windows()}:
            return  # an old window
        self._others.setdefault((tenant, window), {})[member] = usd

    def forget_old(self) -> None:
        current = {w for _, w in self._windows()}
        for store in (self._own, self._others):
            for key in [k for k in store if k[1] not in current]:
                del store[key]


class SpendSync:
    """Publishes this member's spend and follows the others' on a compacted topic."""

    def __init__(
        self,
        ledger: SpendLedger,
        *,
        topic: str,
        client_kwargs: dict[str, Any],
        publish_interval_s: float = 1.0,
    ) -> None:
        self.ledger = ledger
        self.topic = topic
        self.client_kwargs = client_kwargs
        self.publish_interval_s = publish_interval_s
        self._producer: AIOKafkaProducer | None = None
        # the others' totals: from the beginning of the compacted topic, then following it
        self._follower = TopicFollower(client_kwargs, topic, self._observe)
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(acks="all", **self.client_kwargs)
        await self._producer.start()
        self._stop.clear()
        self._tasks = [
            asyncio.create_task(self._publish_loop()),
            asyncio.create_task(self._follower.run()),
        ]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.publish()  # what was spent since the last publication
        if self._producer is not None:
            await self._producer.stop()

    async def publish(self) -> int:
        assert self._producer is not None
        records = self.ledger.changed()
        try:
            acks = [await self._producer.send(self.topic, v, key=k) for k, v in records]
            if acks:
                await asyncio.gather(*acks)
        except BaseException:
            self.ledger.unsent(records)
            raise
        return len(records)

    async def _publish_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.publish_interval_s)
            try:
                await self.publish()
                self.ledger.forget_old()
            except Exception:  # Kafka trouble: the totals stay dirty only if not sent; retry
                log.exception("publishing spend to %s failed", self.topic)

    async def _observe(self, records: list[Any]) -> None:
        for record in records:
            self.ledger.observe(record.key, record.value)
