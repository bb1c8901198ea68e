"""The member's hooks (`LoopObserver`): none (`NullObserver`), or fed into the Prometheus metrics
and the health endpoints (`MetricsObserver`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from worker.kafka.records import Handled
from worker.metrics import Health, WorkerMetrics

log = logging.getLogger(__name__)


def quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Metrics and telemetry never raise into the request path (a negative count from a
    hostile provider once made a metric raise after the response was acknowledged)."""
    try:
        call(*args, **kwargs)
    except Exception as exc:
        log.warning(
            "%s failed: %s: %s", getattr(call, "__qualname__", call), type(exc).__name__, exc
        )


class LoopObserver(Protocol):
    """Metrics and health hooks; every method must be cheap and must not raise."""

    def heartbeat(self) -> None: ...
    def ready(self, ready: bool, reason: str) -> None: ...
    def assignment(self, assigned: int, partitions: int) -> None: ...
    def dead_letter(self, error_type: str) -> None: ...
    def duplicate(self) -> None: ...
    def journal_replay(self) -> None: ...
    def in_flight(self, count: int) -> None: ...
    def lag(self, partition: int, lag: int) -> None: ...
    def published(self, handled: Handled) -> None: ...


class NullObserver:
    def heartbeat(self) -> None:
        pass

    def ready(self, ready: bool, reason: str) -> None:
        pass

    def assignment(self, assigned: int, partitions: int) -> None:
        pass

    def dead_letter(self, error_type: str) -> None:
        pass

    def duplicate(self) -> None:
        pass

    def journal_replay(self) -> None:
        pass

    def in_flight(self, count: int) -> None:
        pass

    def lag(self, partition: int, lag: int) -> None:
        pass

    def published(self, handled: Handled) -> None:
        pass


class MetricsObserver:
    def __init__(
        self,
        metrics: WorkerMetrics,
        health: Health,
        topic: str,
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.topic = topic

    def heartbeat(self) -> None:
        self.health.beat()

    def ready(self, ready: bool, reason: str) -> None:
        self.health.set_ready(ready, reason)

    def assignment(self, assigned: int, partitions: int) -> None:
        """A member that holds no partition of a topic that has some is idle: warn (log,
        metric, /readyz) so a group larger than the topic does not go unnoticed."""
        self.metrics.assigned_partitions.set(assigned)
        self.metrics.topic_partitions.set(partitions)
        idle = assigned == 0 and partitions > 0
        self.metrics.idle_member.set(1 if idle else 0)
        if idle:
            text = (
                f"idle: this member holds none of the {partitions} partitions of {self.topic}; "
                "the group has more members than partitions (raise [topics].partitions and run "
                "`llmroute topics create`, or run fewer members)"
            )
            log.warning(text)
            self.health.note(text)
        else:
            self.health.note("")

    def dead_letter(self, error_type: str) -> None:
        self.metrics.dead_letter(error_type)

    def duplicate(self) -> None:
        self.metrics.redelivery_skipped()

    def journal_replay(self) -> None:
        self.metrics.journal_replays.inc()

    def in_flight(self, count: int) -> None:
        self.metrics.in_flight.set(count)

    def lag(self, partition: int, lag: int) -> None:
        self.metrics.set_consumer_lag(self.topic, partition, lag)

    def published(self, handled: Handled) -> None:
        r = handled.response
        m = self.metrics
        m.observe_request(r.model, r.status, r.latency_ms / 1000)
        if handled.routing_ms is not None:
            m.observe_route(handled.routing_ms / 1000)
        if r.model is not None or r.cost_usd:
            strong = handled.strong_cost_usd
            always = r.cost_usd if strong is None else strong
            m.add_cost(r.model or "none", r.cost_usd, always)
            m.add_tenant_cost(r.tenant, r.cost_usd, always)
        if r.decision is not None and r.decision.unfamiliar is not None:
            m.observe_unfamiliar(r.decision.unfamiliar)
        if r.decision is not None and r.decision.arm is not None:
            m.observe_arm(r.decision.arm, r.status, r.cost_usd, r.latency_ms / 1000)
        for before, a in zip(r.attempts, r.attempts[1:], strict=False):
            if a.model == before.model and a.retry:
                m.retry(a.model)
            elif a.model != before.model and before.status == "escalated":
                m.escalation(before.model, a.model)
            elif a.model != before.model:
                m.fallback(before.model, a.model)
