"""Wiring: build the worker from a Config (loading is I/O; it happens once, here)."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from routers.artifact import load_artifact
from worker.config import Config
from worker.loop import LoopObserver, Worker
from worker.pipeline import Pipeline, RoutingCore
from worker.providers.catalogue import Catalogue
from worker.providers.client import ClientSettings, RouterClient
from worker.providers.http import HttpSettings
from worker.providers.retry import RetryPolicy
from worker.topics import ensure_topics

log = logging.getLogger(__name__)


@dataclass
class App:
    config: Config
    client: RouterClient
    pipeline: Pipeline
    worker: Worker

    async def close(self) -> None:
        await self.client.aclose()


def build(config: Config, observer: LoopObserver | None = None) -> App:
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
    core = RoutingCore(config, artifact, catalogue)
    pipeline = Pipeline(core, client)
    worker = Worker(config.kafka, config.topics, config.loop, pipeline, observer)
    return App(config, client, pipeline, worker)


async def serve(config: Config) -> int:
    """Run one consumer-group member until SIGTERM / SIGINT; drain, commit, exit 0."""
    await ensure_topics(
        config.kafka.common_kwargs(), config.topics, config.topic_replication_factor
    )
    app = build(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.worker.stop)
    try:
        await app.worker.run()
    finally:
        await app.close()
    log.info("worker stopped: %s", app.worker.stats)
    return 0
