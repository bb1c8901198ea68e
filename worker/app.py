"""Wiring: build the worker from a Config (loading is I/O; it happens once, here)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

import schemas
from routers.artifact import load_artifact
from worker import secrets
from worker.batch.backends import backend_factory
from worker.cli import version
from worker.config import Config
from worker.config.models import Catalogue
from worker.feedback import FeedbackStats, run_feedback
from worker.kafka import lograte
from worker.kafka.member import Worker, close_quietly
from worker.kafka.observer import MetricsObserver
from worker.kafka.publisher import Publisher
from worker.kafka.semcache_sync import SemanticCacheSync
from worker.kafka.service import Service
from worker.kafka.topics import ensure_topics
from worker.metrics import Health, OpsServer, OpsServerConfig, WorkerMetrics
from worker.pipeline.cascade import load_answer_scorers
from worker.pipeline.core import Pipeline
from worker.pipeline.experiments import Arm
from worker.pipeline.routing import RoutingCore
from worker.pipeline.spend import SpendLedger, SpendLimit, SpendSync
from worker.providers.client import ClientSettings, ModelClient
from worker.providers.http import HttpSettings
from worker.providers.retry import RetryPolicy
from worker.telemetry import Tracing
from worker.telemetry.scores import LangfuseScores
from worker.training.judge import Judge, JudgeSettings
from worker.training.registry import resolve_artifact

log = logging.getLogger(__name__)


@dataclass
class App:
    config: Config
    client: ModelClient
    pipeline: Pipeline
    worker: Worker
    tracing: Tracing
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    health: Health = field(default_factory=Health)
    reloader: Reloader | None = None
    _cache_seen: dict[str, int] = field(default_factory=dict)

    def _cache_metrics(self, cache: SemanticCacheSync) -> None:
        seen = self._cache_seen
        for result, now in (
            ("hit", cache.stats.hits),
            ("miss", cache.stats.misses),
            ("skipped", cache.stats.skipped),
        ):
            if now > seen.get(result, 0):
                self.metrics.cache_lookups.labels(result).inc(now - seen.get(result, 0))
                seen[result] = now
        self.metrics.cache_entries.set(len(cache.cache))
        self.metrics.cache_saved_usd.set(cache.stats.saved_usd)

    async def background(self, stop: asyncio.Event) -> None:
        """The gauges the member does not set."""
        while not stop.is_set():
            batches = self.worker.batches
            if batches is not None:
                self.metrics.batch_open_jobs.set(batches.open_jobs)
                self.metrics.batch_waiting.set(batches.waiting())
            cache = self.pipeline.cache
            if cache is not None:
                self._cache_metrics(cache)
            shadow = self.pipeline.shadow_stats
            self.metrics.shadow_calls.set(shadow["calls"])
            self.metrics.shadow_cost_usd.set(shadow["cost_usd"] + shadow["judge_cost_usd"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def close(self) -> None:
        await self.client.aclose()
        await self.tracing.aclose(5.0)


def build(config: Config, tracing: Tracing | None = None) -> App:
    artifact = load_artifact(resolve_artifact(config.router.artifact))
    catalogue = config.models
    p = config.providers
    client = ModelClient(
        catalogue,
        ClientSettings(
            http=HttpSettings(
                connect_timeout_s=p.connect_timeout_s,
                read_timeout_s=p.read_timeout_s,
                max_connections=p.max_connections,
            ),
            retry=RetryPolicy(max_retries=p.max_retries),
            default_deadline_s=p.request_deadline_s,
            max_rate_limit_wait_s=p.rate_limit_max_wait_s,
            failover_timeout_min_s=p.failover_timeout_min_s,
            failover_timeout_factor=p.failover_timeout_factor,
            max_answer_bytes=p.max_answer_bytes,
        ),
    )
    secrets.protect(client.redactor)  # logs and span error texts: the key values themselves
    if client.missing_keys:
        log.warning("no API key set in %s; those models will fail", ", ".join(client.missing_keys))
    tracing = tracing or Tracing(config.telemetry)
    core = RoutingCore(config, artifact, catalogue)
    limits = {
        name: SpendLimit(t.spend_limit_usd_per_hour, t.spend_limit_usd_per_day)
        for name, t in config.tenants.items()
        if t.spend_limit_usd_per_hour is not None or t.spend_limit_usd_per_day is not None
    }
    # a member id of its own per process: after a restart, the old one's spend still counts
    ledger = (
        SpendLedger(f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}", limits) if limits else None
    )
    metrics, health = WorkerMetrics(tenants=config.tenants), Health()
    observer = MetricsObserver(metrics, health, config.topics.requests)
    publisher = Publisher(config.kafka, config.topics, config.loop, observer)
    backends = backend_factory(client, catalogue)
    cache = (
        SemanticCacheSync(
            config.cache,
            topic=config.topics.cache,
            client_kwargs=config.kafka.common_kwargs(),
            worker_id=config.loop.worker_id,
        )
        if config.cache.enabled
        else None
    )
    judge = (
        Judge(client, JudgeSettings(model=config.shadow.judge_model))
        if config.shadow.judge_model is not None
        else None
    )
    pipeline = Pipeline(
        core,
        client,
        tracing=tracing,
        mask_prompts=tracing_masks(config),
        answer_scorers=load_answer_scorers(config),
        spend=ledger,
        cache=cache,
        can_batch=(lambda model: backends(model) is not None) if config.batch.enabled else None,
        arms=_arms(config, catalogue),
        shadow_sink=publisher.shadow,
        shadow_judge=judge,
    )
    reloader = Reloader(config, pipeline, metrics)
    services: list[Service] = [ShadowCalls(pipeline)]
    if ledger is not None:
        services.append(
            SpendSync(ledger, topic=config.topics.spend, client_kwargs=config.kafka.common_kwargs())
        )
    if cache is not None:
        services.append(cache)
    services.append(reloader)
    worker = Worker(
        config.kafka,
        config.topics,
        config.loop,
        pipeline,
        observer,
        tracing,
        batch=config.batch,
        batch_backend=backends,
        on_share=client.set_share,
        services=services,
        publisher=publisher,
    )
    metrics.set_router(artifact.router.name, artifact.router.version)
    # read when scraped: what a crash would make the next owner do again, at that moment
    metrics.in_progress.labels("calling").set_function(lambda: worker.calling)
    metrics.in_progress.labels("answered").set_function(lambda: worker.answers_held)
    return App(config, client, pipeline, worker, tracing, metrics, health, reloader)


def _arms(config: Config, catalogue: Catalogue) -> dict[str, list[Arm]]:
    """Each experiment's arms; an arm with its own artifact gets its own routing core."""
    out: dict[str, list[Arm]] = {}
    for exp in config.experiments:
        arms = []
        for spec in exp.arms:
            core = None
            if spec.artifact is not None:
                core = RoutingCore(
                    config, load_artifact(resolve_artifact(spec.artifact)), catalogue
                )
            arms.append(Arm(exp.name, spec.name, spec.weight, spec.policy, core))
        out[exp.name] = arms
    return out


class ShadowCalls:
    """The pipeline's shadow calls as a member's service: at stop, those still in flight get
    5 s to end (their records go out through the member's producer, still open then)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self.pipeline.close_shadow(5.0)


class Reloader:
    """Loads a promoted router without a restart: on a `reload_router` control event, and (with
    `router.watch_s`) when the artifact folder or its registry's CURRENT names a new version.
    Loading runs in a thread; the pipeline swaps cores between requests, so none is lost or
    stalled (requests already routed finish with the router that routed them). A member's
    service: `start` begins the watch, `stop` ends it."""

    def __init__(self, config: Config, pipeline: Pipeline, metrics: WorkerMetrics) -> None:
        self.config = config
        self.pipeline = pipeline
        self.metrics = metrics
        self._stop = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.config.router.watch_s > 0 and self._watch is None:
            self._stop.clear()
            self._watch = asyncio.create_task(self.watch(self._stop))

    async def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            await self._watch
            self._watch = None

    @property
    def version(self) -> str:
        return self.pipeline.core.router.version

    async def load(self, path: str | Path, expect_version: str | None = None) -> bool:
        folder = resolve_artifact(path)
        artifact = await asyncio.to_thread(load_artifact, folder)
        if expect_version is not None and artifact.router.version != expect_version:
            log.error(
                "artifact %s holds version %s, not %s: not loaded",
                folder,
                artifact.router.version,
                expect_version,
            )
            return False
        if artifact.router.version == self.version:
            return False
        self.pipeline.reload(artifact)
        self.metrics.set_router(artifact.router.name, artifact.router.version)
        return True

    async def on_control(self, command: schemas.Control) -> None:
        if command.action != "reload_router":
            return
        path = command.artifact_path or self.config.router.artifact
        try:
            await self.load(path, command.router_version)
        except Exception:
            log.exception("reload_router %s: loading %s failed", command.command_id, path)

    async def watch(self, stop: asyncio.Event) -> None:
        every = self.config.router.watch_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
            if stop.is_set():
                return
            try:
                folder = resolve_artifact(self.config.router.artifact)
                meta = await asyncio.to_thread((folder / "meta.json").read_text, "utf-8")
                if json.loads(meta).get("version") != self.version:
                    await self.load(folder)
            except Exception:
                log.exception(
                    "checking %s for a new router version failed", self.config.router.artifact
                )


def tracing_masks(config: Config) -> bool:
    return config.telemetry.mask_prompts


async def serve(config: Config, *, blocked: str | None = None) -> int:
    """Run one consumer-group member until SIGTERM / SIGINT; drain, commit, exit 0.

    `blocked`: a problem found before start (e.g. a policy's model has no API key) that keeps
    /readyz failing while the member runs."""
    lograte.install()  # aiokafka repeats each connection error many times a second
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, log_tasks)  # `kill -USR1`: what is it waiting on?
    partitions = await ensure_topics(
        config.kafka.common_kwargs(),
        config.topics,
        config.topic_replication_factor if config.topic_replication_factor != 1 else None,
    )
    app = build(config)
    if blocked is not None:
        app.health.block(blocked)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.worker.stop)
    metrics_url = "off"
    async with contextlib.AsyncExitStack() as stack:
        if config.metrics.enabled:
            ops = await start_ops_server(
                app.metrics, app.health, config.metrics.host, config.metrics.port
            )
            stack.push_async_callback(ops.stop)
            metrics_url = ops.url
        log.info(startup_line(config, app, metrics_url, partitions.get(config.topics.requests, 0)))
        stack.push_async_callback(app.close)
        feedback = await stack.enter_async_context(_FeedbackTask(app))
        stop = asyncio.Event()
        background = asyncio.create_task(app.background(stop))
        try:
            await app.worker.run()
        finally:
            stop.set()
            await background
        feedback.stop.set()
    log.info(stop_line(app.worker.stats), extra={"stats": dict(app.worker.stats)})
    return 0


def log_tasks() -> None:
    """Log where every task of the running loop is waiting, its whole chain of awaits (SIGUSR1):
    what a member that looks stuck (no progress, nothing logged) is waiting on."""
    tasks = asyncio.all_tasks()
    for task in tasks:
        chain = "\n".join(await_chain(task.get_coro()))
        log.warning("task %s of %d waits in:\n%s", task.get_name(), len(tasks), chain)


def await_chain(coro: object) -> list[str]:
    """`File ..., line ..., in ...` for a coroutine and each coroutine it awaits, outermost
    first (a task's own stack shows only the outermost frame of a suspended coroutine)."""
    lines = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return lines


async def start_ops_server(
    metrics: WorkerMetrics, health: Health, host: str, port: int
) -> OpsServer:
    """/metrics, /healthz, /readyz on `port`; when another process (a second member on this
    host) holds it, on a free port, with a warning naming it."""
    settings = OpsServerConfig(host=host, port=port)
    ops = OpsServer(metrics, health, settings)
    try:
        await ops.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or settings.port == 0:
            raise
        ops = OpsServer(metrics, health, replace(settings, port=0))
        await ops.start()
        log.warning(
            "metrics port %d is taken (another member on this host?): serving on %s instead; "
            "set LLMROUTE_METRICS_PORT per member to choose",
            settings.port,
            ops.url,
        )
    return ops


def startup_line(config: Config, app: App, metrics_url: str, partitions: int) -> str:
    """One line naming what this member serves."""
    router = app.pipeline.core.router
    t = config.topics
    return (
        f"llmroute {version()} member of group {config.kafka.group_id} on "
        f"{config.kafka.bootstrap_servers}: router {router.name} {router.version}, models "
        f"{', '.join(router.models)}; reads {t.requests} ({partitions} partitions), writes "
        f"{t.responses} (decisions {t.decisions}, dead letters {t.dlq}); metrics {metrics_url}"
    )


def stop_line(stats: dict[str, int]) -> str:
    return (
        f"worker stopped: {stats.get('records', 0)} records read, {stats.get('published', 0)} "
        f"responses published, {stats.get('dead_letters', 0)} dead letters, "
        f"{stats.get('duplicates', 0)} duplicates skipped, {stats.get('batched', 0)} batched"
    )


class _FeedbackTask:
    """Feedback -> Langfuse scores, alongside the main loop, with a producer for dead letters."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.stop = asyncio.Event()
        self.task: asyncio.Task[FeedbackStats] | None = None
        self.producer = AIOKafkaProducer(acks="all", **app.config.kafka.common_kwargs())
        langfuse = app.tracing.config.langfuse
        self.scores = LangfuseScores(langfuse, environ=os.environ) if langfuse is not None else None

    async def __aenter__(self) -> _FeedbackTask:
        await self.producer.start()
        c = self.app.config
        self.task = asyncio.create_task(
            run_feedback(c.kafka, c.topics, self.scores, self.producer, self.stop)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, timeout=10)
            except KafkaError as exc:  # the cluster is gone: expected, one line
                log.warning("feedback consumer stopped: %s: %s", type(exc).__name__, exc)
            except Exception:
                log.exception("feedback consumer failed")
        await close_quietly("the feedback producer", self.producer.stop)
        if self.scores is not None:
            await self.scores.aclose()
