"""The control-topic follower on a real broker: commands published before the start are not
replayed; each later command reaches every service once; a failing service stops neither the
follower nor the others; an invalid event is skipped."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer

import schemas
from tests.conftest import TopicFactory
from tests.worker.support import poll_until
from worker.kafka.control import ControlFollower

pytestmark = pytest.mark.kafka


def _command(command_id: str, action: str = "reload_router") -> bytes:
    return schemas.encode(
        schemas.Control(
            schema_version=1,
            command_id=command_id,
            action=action,  # type: ignore[arg-type]
            issued_at=datetime.now(UTC),
        )
    )


class _Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.seen: list[tuple[str, str]] = []
        self.fail = fail

    async def on_control(self, command: schemas.Control) -> None:
        self.seen.append((command.command_id, command.action))
        if self.fail:
            raise RuntimeError("this service fails on every command")


async def _send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def test_each_later_command_reaches_every_service_once(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("control", partitions=1)
    await _send(kafka_bootstrap, topic, [_command("before")])
    failing, recording = _Recorder(fail=True), _Recorder()
    follower = ControlFollower({"bootstrap_servers": kafka_bootstrap}, topic, [failing, recording])
    task = asyncio.create_task(follower.run())
    try:
        assert await poll_until(follower.ready.is_set, 30)
        await _send(
            kafka_bootstrap,
            topic,
            [_command("c1"), b"not json", _command("c1"), _command("c2", "cancel_batch")],
        )
        assert await poll_until(lambda: len(recording.seen) >= 2, 30)
        await asyncio.sleep(0.5)  # a repeated c1 would arrive by now
        want = [("c1", "reload_router"), ("c2", "cancel_batch")]
        assert recording.seen == want
        assert failing.seen == want
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
