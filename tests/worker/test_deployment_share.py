"""Group-wide rate limits: each member takes the share of the request partitions it owns, so the
members' shares of a deployment's rpm / tpm add up to the whole (a real broker, two members)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import TopicFactory
from tests.worker.support import poll_until, worker_config, worker_config_data
from worker.app import build
from worker.config.models import STRONG_MODEL
from worker.kafka.topics import ensure_topics
from worker.sim import Simulator

pytestmark = pytest.mark.kafka


async def test_two_members_take_half_of_every_limit_each(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    requests = await new_topic("share", partitions=4)
    topics = {
        name: f"{requests}.{name}"
        for name in ("responses", "decisions", "dlq", "done", "feedback", "batch_jobs", "control")
    }
    topics["requests"] = requests
    base = worker_config_data(kafka_bootstrap, topics, artifact, sim.base_url)
    models = dict(base["models"])
    models[STRONG_MODEL] = {**models[STRONG_MODEL], "rpm": 600}
    config = worker_config(
        kafka_bootstrap,
        topics,
        artifact,
        sim.base_url,
        models=models,
        providers={"rate_limit_max_wait_s": 5.0, "failover_timeout_min_s": 0.5},
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    apps = [build(config), build(config)]
    settings = apps[0].client.settings
    assert (settings.max_rate_limit_wait_s, settings.failover_timeout_min_s) == (5.0, 0.5)
    for app in apps:
        app.client.set_share(0.0)  # replaced on assignment
    shares = [app.client.deployment_state(STRONG_MODEL).limits for app in apps]
    tasks = [asyncio.create_task(app.worker.run()) for app in apps]
    try:
        settled = await poll_until(
            lambda: [s.share for s in shares] == [0.5, 0.5] or any(t.done() for t in tasks), 90
        )
        for task in tasks:
            if task.done():
                task.result()
        assert settled, [s.share for s in shares]
    finally:
        for app in apps:
            app.worker.stop()
        await asyncio.wait(tasks, timeout=60)
        for app in apps:
            await app.close()
