"""Wiring: build the worker from a Config (loading is I/O; it happens once, here)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from routers.artifact import load_artifact
from worker.batch.backends import backend_factory
from worker.config import Config
from worker.feedback import run_feedback
from worker.loop import Worker
from worker.metrics import Health, OpsServer, OpsServerConfig, WorkerMetrics
from worker.observer import MetricsObserver
from worker.pipeline import Pipeline, RoutingCore
from worker.providers.catalogue import Catalogue
from worker.providers.client import ClientSettings, RouterClient
from worker.providers.http import HttpSettings
from worker.providers.retry import RetryPolicy
from worker.telemetry import TelemetryConfig, Tracing
from worker.topics import ensure_topics

log = logging.getLogger(__name__)


@dataclass
class App:
    config: Config
    client: RouterClient
    pipeline: Pipeline
    worker: Worker
    tracing: Tracing
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    health: Health = field(default_factory=Health)

    async def close(self) -> None:
        await self.client.aclose()
        await self.tracing.aclose(5.0)


def build(config: Config, tracing: Tracing | None = None) -> App:
    artifact = load_artifact(config.router.artifact)
    catalogue = Catalogue.from_dict({"models": config.models})
    p = config.providers
    client = RouterClient(
        catalogue,
        ClientSettings(
            http=HttpSettings(
                connect_timeout_s=p.connect_timeout_s,
                read_timeout_s=p.read_timeout_s,
                max_connections=p.max_connections,
            ),
            retry=RetryPolicy(max_retries=p.max_retries),
            default_deadline_s=p.request_deadline_s,
        ),
    )
    if client.missing_keys:
        log.warning("no API key set in %s; those models will fail", ", ".join(client.missing_keys))
    tracing = tracing or Tracing(TelemetryConfig.from_mapping(config.telemetry))
    core = RoutingCore(config, artifact, catalogue)
    pipeline = Pipeline(core, client, tracing=tracing, mask_prompts=tracing_masks(config))
    metrics, health = WorkerMetrics(), Health()
    observer = MetricsObserver(metrics, health, config.topics.requests)
    backends = backend_factory(client, catalogue)
    if config.batch.enabled:
        pipeline.can_batch = lambda model: backends(model) is not None
    worker = Worker(
        config.kafka, config.topics, config.loop, pipeline, observer, tracing,
        batch=config.batch, batch_backend=backends,
    )  # fmt: skip
    return App(config, client, pipeline, worker, tracing, metrics, health)


def tracing_masks(config: Config) -> bool:
    return bool(config.telemetry.get("mask_prompts", False))


async def serve(config: Config) -> int:
    """Run one consumer-group member until SIGTERM / SIGINT; drain, commit, exit 0."""
    await ensure_topics(
        config.kafka.common_kwargs(), config.topics, config.topic_replication_factor
    )
    app = build(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.worker.stop)
    async with contextlib.AsyncExitStack() as stack:
        if config.metrics.enabled:
            ops = OpsServer(
                app.metrics,
                app.health,
                OpsServerConfig(host=config.metrics.host, port=config.metrics.port),
            )
            await stack.enter_async_context(ops)
            log.info("metrics and health on %s", ops.url)
        stack.push_async_callback(app.close)
        feedback = await stack.enter_async_context(_FeedbackTask(app))
        await app.worker.run()
        feedback.stop.set()
    log.info("worker stopped: %s", app.worker.stats)
    return 0


class _FeedbackTask:
    """Feedback -> Langfuse scores, alongside the main loop, with a producer for dead letters."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.stop = asyncio.Event()
        self.task: asyncio.Task[int] | None = None
        self.producer = AIOKafkaProducer(acks="all", **app.config.kafka.common_kwargs())

    async def __aenter__(self) -> _FeedbackTask:
        await self.producer.start()
        c = self.app.config
        self.task = asyncio.create_task(
            run_feedback(c.kafka, c.topics, self.app.tracing, self.producer, self.stop)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, timeout=10)
            except Exception:
                log.exception("feedback consumer failed")
        await self.producer.stop()
