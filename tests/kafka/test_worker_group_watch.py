"""A member kept out of its consumer group says so. Its join (or a rebalance) can wait for
minutes: no group coordinator, or another member that holds the rebalance. Before, it sat
silent then: no assignment, no lag, no error, nothing in its log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

from tests.conftest import TopicFactory
from tests.kafka.test_worker_kafka import _topics
from tests.worker.support import poll_until, worker_config
from worker.app import build
from worker.kafka.topics import ensure_topics
from worker.sim import Simulator

pytestmark = pytest.mark.kafka

OUT = "not in consumer group"
BACK = "in consumer group"


class _HoldRebalances(ConsumerRebalanceListener):  # type: ignore[misc]
    """After its first assignment, holds every revoke until `release` is set: the group's
    rebalance waits for this member, up to its max.poll.interval.ms."""

    def __init__(self) -> None:
        self.assigned = asyncio.Event()
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def on_partitions_revoked(self, revoked: object) -> None:
        if self.assigned.is_set():
            self.holding.set()
            await self.release.wait()

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.assigned.set()


async def _poll(consumer: AIOKafkaConsumer) -> None:
    while True:
        await consumer.getmany(timeout_ms=200)


async def test_a_member_held_out_of_its_group_warns_and_says_when_it_is_back(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    artifact: Path,
    sim: Simulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="worker.kafka.member")
    topics = await _topics(new_topic, partitions=2)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url, loop={"join_warn_s": 2})
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 2)
    hold = _HoldRebalances()
    hostage = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=config.kafka.group_id,
        max_poll_interval_ms=120_000,  # the rebalance timeout the member waits up to
        session_timeout_ms=30_000,
        heartbeat_interval_ms=1_000,
    )
    app = build(config)
    poller: asyncio.Task[None] | None = None
    member: asyncio.Task[None] | None = None
    try:
        await hostage.start()
        hostage.subscribe([topics["requests"]], listener=hold)
        poller = asyncio.create_task(_poll(hostage))
        await asyncio.wait_for(hold.assigned.wait(), 60)

        def said(text: str) -> list[str]:
            return [r.getMessage() for r in caplog.records if r.getMessage().startswith(text)]

        member = asyncio.create_task(app.worker.run())
        assert await poll_until(lambda: bool(said(OUT)) or member.done(), 60, 0.2)
        assert not member.done(), member.exception() if member.done() else None
        assert hold.holding.is_set()  # the rebalance is the hostage's to finish
        warning = said(OUT)[0]
        assert config.kafka.group_id in warning and "coordinator" in warning
        assert not app.worker.ready.is_set()

        hold.release.set()
        assert await poll_until(lambda: bool(said(BACK)) or member.done(), 60, 0.2)
        assert not member.done()
        assert await poll_until(app.worker.ready.is_set, 60, 0.2)
        assert len(said(OUT)) == 1  # once a minute, not every second
    finally:
        hold.release.set()
        if member is not None:
            app.worker.stop()
            await asyncio.wait_for(member, 60)
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        await asyncio.wait_for(hostage.stop(), 60)
        await app.close()
