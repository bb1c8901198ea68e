"""Prometheus metrics, health and readiness of one worker, served over HTTP from the event loop.

`WorkerMetrics` owns its own `CollectorRegistry` (never the global one), so tests and several
workers in one process do not collide. The loop feeds it through small typed methods; label
values must come from bounded sets (model names of the catalogue, statuses, error classes, the
configured tenant names with "other" for the rest).

`OpsServer` is an asyncio HTTP/1.1 server (one request per connection) on 127.0.0.1 by default:

    GET /metrics   Prometheus text format (OpenMetrics when the scraper asks for it);
                   the registry is rendered in a worker thread, never on the loop
    GET /healthz   200 while the process is alive and the loop responsive: answering at all
                   proves the loop runs, and `Health.beat()` must have been called within
                   `liveness_timeout_s` once the loop started beating; 503 otherwise
    GET /readyz    200 once the loop said `Health.set_ready(True)` (partitions assigned,
                   router loaded); 503 with the reason before and while draining

While it runs, the server also measures event-loop lag (how late a periodic wake-up fires) into
`llmroute_event_loop_lag_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

__all__ = ["Health", "OpsServer", "OpsServerConfig", "WorkerMetrics"]

log = logging.getLogger(__name__)

# Routing is pure CPU work measured in microseconds; a request includes model calls (seconds).
# `unfamiliar` is 1.0 at the training prompts' 99th percentile
UNFAMILIAR_BUCKETS: Final = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
ROUTE_BUCKETS_S: Final = (
    25e-6,
    50e-6,
    100e-6,
    250e-6,
    500e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    50e-3,
    0.1,
    0.25,
)
REQUEST_BUCKETS_S: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)


class WorkerMetrics:
    """Every metric of one worker, registered in `self.registry`."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "llmroute",
        *,
        tenants: Iterable[str] = (),
    ):
        self.registry = registry if registry is not None else CollectorRegistry()
        # every metric in this registry and namespace
        counter = functools.partial(Counter, namespace=namespace, registry=self.registry)
        gauge = functools.partial(Gauge, namespace=namespace, registry=self.registry)
        histogram = functools.partial(Histogram, namespace=namespace, registry=self.registry)
        # tenant labels: the configured names only (a request's name is never a label)
        self._tenants = frozenset(tenants)
        self.requests = counter(
            "requests",
            "Requests finished, by chosen model and status ('none' before routing).",
            ["model", "status"],
        )
        self.cost_usd = counter("cost_usd", "Provider cost of the model calls, USD.", ["model"])
        self.always_strong_cost_usd = counter(
            "always_strong_cost_usd",
            "Estimated cost had every request gone to the strong model, USD.",
        )
        self.tenant_cost_usd = counter(
            "tenant_cost_usd",
            "Provider cost of the model calls per configured tenant, USD "
            '(tenant="other": every name not configured).',
            ["tenant"],
        )
        self.tenant_always_strong_cost_usd = counter(
            "tenant_always_strong_cost_usd",
            "Estimated always-strong cost by tenant, USD (the saving is the difference).",
            ["tenant"],
        )
        self.cost_saved_usd = gauge(
            "cost_saved_usd",
            "Net saving versus always-strong since start, USD (may go negative). For rates use "
            "always_strong_cost_usd_total - cost_usd_total.",
        )
        self.route_duration = histogram(
            "route_duration_seconds", "Time to make a routing decision.", buckets=ROUTE_BUCKETS_S
        )
        self.route_unfamiliar = histogram(
            "route_unfamiliar",
            "Distance of routed prompts from the router's training prompts (above 1.0: "
            "further than 99% of them).",
            buckets=UNFAMILIAR_BUCKETS,
        )
        self.request_duration = histogram(
            "request_duration_seconds",
            "End to end: record received to response acknowledged, by chosen model.",
            ["model"],
            buckets=REQUEST_BUCKETS_S,
        )
        self.in_flight = gauge("in_flight_requests", "Requests received and not yet finished.")
        self.in_progress = gauge(
            "in_flight_requests_by_stage",
            "Requests in flight by stage: 'calling' (in the pipeline: routing and model calls), "
            "'answered' (the answer in hand, its response not yet published and committed). "
            "What a crash would make the next owner do again.",
            ["stage"],
        )
        self.consumer_lag = gauge(
            "consumer_lag_records",
            "High watermark minus position, per assigned partition.",
            ["topic", "partition"],
        )
        self.dead_letters = counter(
            "dead_letters", "Records sent to the dead-letter topic, by reason type.", ["reason"]
        )
        self.retries = counter(
            "provider_retries", "Model calls retried on the same model.", ["model"]
        )
        self.fallbacks = counter(
            "fallbacks", "Calls moved to another model after a failure.", ["from_model", "to_model"]
        )
        self.escalations = counter(
            "escalations",
            "Cascade escalations from a cheap to a stronger model.",
            ["from_model", "to_model"],
        )
        self.cache_lookups = counter(
            "route_cache_lookups",
            "Semantic cache lookups before routing, by result (hit, miss, skipped: not cacheable).",
            ["result"],
        )
        self.redeliveries_skipped = counter(
            "redeliveries_skipped", "Redelivered requests skipped: a response was already sent."
        )
        self.journal_replays = counter(
            "journal_replays",
            "Redelivered requests answered from the answer journal (a member died after the "
            "model answered, before the response was committed): model calls not repeated.",
        )
        self.arm_requests = counter(
            "ab_requests",
            "A/B experiments: requests finished per arm, by status.",
            ["arm", "status"],
        )
        self.arm_cost_usd = counter(
            "ab_cost_usd", "A/B experiments: provider cost per arm, USD.", ["arm"]
        )
        self.arm_duration = histogram(
            "ab_request_duration_seconds",
            "A/B experiments: end-to-end latency per arm.",
            ["arm"],
            buckets=REQUEST_BUCKETS_S,
        )
        self.shadow_calls = gauge(
            "shadow_calls", "Shadow calls made since start (never part of a user's answer)."
        )
        self.shadow_cost_usd = gauge(
            "shadow_cost_usd",
            "Cost of shadow calls and their judging since start, USD (kept apart from cost_usd).",
        )
        self.cache_entries = gauge(
            "semantic_cache_entries", "Entries in this member's semantic cache."
        )
        self.cache_saved_usd = gauge(
            "semantic_cache_saved_usd",
            "Recorded cost of the answers served from the semantic cache since start, USD.",
        )
        self.batch_open_jobs = gauge(
            "batch_open_jobs", "Batch jobs this member follows (submitted, not yet published)."
        )
        self.batch_waiting = gauge(
            "batch_waiting_requests", "Batch-mode requests accumulated, not yet submitted."
        )
        self.router_version = gauge(
            "router_info",
            "The router in use (value 1), by name and version.",
            ["router", "version"],
        )
        self.assigned_partitions = gauge(
            "assigned_partitions", "Partitions of the request topic this member holds."
        )
        self.topic_partitions = gauge(
            "request_topic_partitions", "Partitions of the request topic."
        )
        self.idle_member = gauge(
            "idle_member",
            "1 when this member holds no partition while the request topic has some: the group "
            "has more members than partitions.",
        )
        self.event_loop_lag = gauge(
            "event_loop_lag_seconds", "How late the last periodic event-loop wake-up fired."
        )
        # labelled children of the per-request series, looked up once per label set (a
        # `labels()` call takes a lock and validates the values: per request, that shows);
        # label sets are bounded (module docstring), and these series are never cleared
        self._per_model: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._model_cost: dict[str, Counter] = {}
        self._per_arm: dict[tuple[str, str], tuple[Counter, Counter, Histogram]] = {}

    # The calls the loop makes; all O(1), lock-per-metric, safe from any thread.

    def observe_route(self, duration_s: float, *, cache_hit: bool | None = None) -> None:
        self.route_duration.observe(duration_s)
        if cache_hit is not None:
            self.cache_lookups.labels("hit" if cache_hit else "miss").inc()

    def observe_unfamiliar(self, unfamiliar: float) -> None:
        self.route_unfamiliar.observe(unfamiliar)

    def observe_arm(self, arm: str, status: str, cost_usd: float, duration_s: float) -> None:
        children = self._per_arm.get((arm, status))
        if children is None:
            children = self._per_arm[(arm, status)] = (
                self.arm_requests.labels(arm, status),
                self.arm_cost_usd.labels(arm),
                self.arm_duration.labels(arm),
            )
        children[0].inc()
        children[1].inc(cost_usd)
        children[2].observe(duration_s)

    def set_router(self, router: str, version: str) -> None:
        self.router_version.clear()
        self.router_version.labels(router, version).set(1)

    def observe_request(self, model: str | None, status: str, duration_s: float) -> None:
        label = model or "none"
        children = self._per_model.get((label, status))
        if children is None:
            children = self._per_model[(label, status)] = (
                self.requests.labels(label, status),
                self.request_duration.labels(label),
            )
        children[0].inc()
        children[1].observe(duration_s)

    def add_cost(self, model: str, cost_usd: float, always_strong_cost_usd: float) -> None:
        """Actual cost of a request's calls and what always-strong would have cost."""
        cost = self._model_cost.get(model)
        if cost is None:
            cost = self._model_cost[model] = self.cost_usd.labels(model)
        cost.inc(cost_usd)
        self.always_strong_cost_usd.inc(always_strong_cost_usd)
        self.cost_saved_usd.inc(always_strong_cost_usd - cost_usd)

    def add_tenant_cost(
        self, tenant: str, cost_usd: float, always_strong_cost_usd: float = 0.0
    ) -> None:
        """The real cost of one request's calls (and its always-strong estimate) on its tenant's
        series: a configured tenant's name, else "other" (a request's name is never a label)."""
        label = tenant if tenant in self._tenants else "other"
        self.tenant_cost_usd.labels(label).inc(cost_usd)
        self.tenant_always_strong_cost_usd.labels(label).inc(always_strong_cost_usd)

    @contextlib.contextmanager
    def track_in_flight(self) -> Iterator[None]:
        self.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight.dec()

    def set_consumer_lag(self, topic: str, partition: int, lag_records: int) -> None:
        self.consumer_lag.labels(topic, str(partition)).set(lag_records)

    def forget_partition(self, topic: str, partition: int) -> None:
        """On revoke: drop the partition's lag series (a stale value would alert forever)."""
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(topic, str(partition))

    def dead_letter(self, reason: str) -> None:
        self.dead_letters.labels(reason).inc()

    def retry(self, model: str) -> None:
        self.retries.labels(model).inc()

    def fallback(self, from_model: str, to_model: str) -> None:
        self.fallbacks.labels(from_model, to_model).inc()

    def escalation(self, from_model: str, to_model: str) -> None:
        self.escalations.labels(from_model, to_model).inc()

    def redelivery_skipped(self) -> None:
        self.redeliveries_skipped.inc()


class Health:
    """Liveness and readiness as the loop reports them; `clock` is injectable for tests."""

    def __init__(
        self, *, liveness_timeout_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._timeout_s = liveness_timeout_s
        self._clock = clock
        self._last_beat: float | None = None
        self._ready = False
        self._not_ready_reason = "starting"
        self._blocked: str | None = None  # a problem no rebalance fixes (missing API keys)
        self._note = ""  # said by /readyz while ready (an idle member)

    def beat(self) -> None:
        """Call from each iteration of the consume loop (paused or not)."""
        self._last_beat = self._clock()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """True once partitions are assigned and the router is loaded; False when draining."""
        self._ready = ready
        self._not_ready_reason = "" if ready else (reason or "not ready")

    def block(self, reason: str) -> None:
        """Never ready, whatever the loop says: a configuration problem (e.g. no API key for a
        model a policy may choose) that only a restart with a fixed environment clears."""
        self._blocked = reason

    def note(self, text: str) -> None:
        """What /readyz says instead of "ok" while ready ("" clears it)."""
        self._note = text

    def liveness(self) -> tuple[bool, str]:
        if self._last_beat is None:
            return True, "ok"
        silent_s = self._clock() - self._last_beat
        if silent_s > self._timeout_s:
            return False, f"consume loop silent for {silent_s:.1f}s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        if self._blocked is not None:
            return False, self._blocked
        return (True, self._note or "ok") if self._ready else (False, self._not_ready_reason)


@dataclass(frozen=True, kw_only=True)
class OpsServerConfig:
    host: str = "127.0.0.1"
    port: int = 9464  # 0: any free port (see OpsServer.port)
    read_timeout_s: float = 5.0
    lag_probe_interval_s: float = 1.0


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class OpsServer:
    """`/metrics`, `/healthz`, `/readyz` on the running event loop. `async with` or start/stop."""

    def __init__(
        self, metrics: WorkerMetrics, health: Health, config: OpsServerConfig | None = None
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.config = config if config is not None else OpsServerConfig()
        self._server: asyncio.Server | None = None
        self._lag_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("OpsServer is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.config.host, self.config.port, limit=16 * 1024
        )
        self._lag_task = asyncio.create_task(self._probe_loop_lag(), name="ops-loop-lag")

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _probe_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.lag_probe_interval_s
        while True:
            expected = loop.time() + interval
            await asyncio.sleep(interval)
            self.metrics.event_loop_lag.set(max(0.0, loop.time() - expected))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(
                    reader.readuntil(b"\r\n\r\n"), self.config.read_timeout_s
                )
            except asyncio.LimitOverrunError:
                await self._reply(writer, 431, b"", "text/plain", head_only=False)
                return
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            try:
                status, body, content_type, head_only = await self._route(head)
            except Exception:
                log.exception("ops endpoint failed")
                status, body, content_type, head_only = 500, b"error\n", "text/plain", False
            await self._reply(writer, status, body, content_type, head_only=head_only)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _route(self, head: bytes) -> tuple[int, bytes, str, bool]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return 400, b"bad request line\n", "text/plain", False
        method, target, _version = parts
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, b"method not allowed\n", "text/plain", False
        path = target.split("?", 1)[0]
        if path == "/metrics":
            accept = ""
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "accept":
                    accept = value.strip()
            encoder, content_type = choose_encoder(accept)
            body = await asyncio.to_thread(encoder, self.metrics.registry)
            return 200, body, content_type, head_only
        if path == "/healthz":
            ok, reason = self.health.liveness()
        elif path == "/readyz":
            ok, reason = self.health.readiness()
        else:
            return 404, b"not found\n", "text/plain", head_only
        body = json.dumps({"status": "ok" if ok else "fail", "reason": reason}).encode()
        return (200 if ok else 503), body + b"\n", "application/json", head_only

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str,
        *,
        head_only: bool,
    ) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        writer.write(head if head_only else head + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
