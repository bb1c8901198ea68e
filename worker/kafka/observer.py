"""The loop's hooks, fed into the Prometheus metrics and the health endpoints."""

from __future__ import annotations

import logging

from worker.kafka.records import Handled
from worker.metrics import Health, WorkerMetrics

log = logging.getLogger(__name__)


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
