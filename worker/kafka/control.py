"""Operator commands on the control topic (`schemas.Control`): every member applies them all.

The follower starts at the topic's end offsets when the member starts (a command published
before is not replayed), hands each command once (by `command_id`) to every service that takes
commands (`worker.kafka.service.Controlled`: each acts on its own actions), and after a failure
resumes where it was, so no command is skipped. A service's failure is logged; it never stops
the follower or the other services.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import schemas
from worker.kafka.service import Controlled
from worker.kafka.table import TopicFollower

log = logging.getLogger(__name__)


class ControlFollower:
    def __init__(
        self, client_kwargs: Mapping[str, Any], topic: str, services: Sequence[Controlled]
    ) -> None:
        self.topic = topic
        self.services = services  # each sees every command (the member may add to it)
        self._seen: set[str] = set()
        self._follower = TopicFollower(client_kwargs, topic, self._apply, start="end")

    @property
    def ready(self) -> asyncio.Event:
        """Set once the start position is taken: commands published from then on are applied."""
        return self._follower.loaded

    async def run(self) -> None:
        """Follow until cancelled."""
        await self._follower.run()

    async def _apply(self, records: list[Any]) -> None:
        for record in records:
            await self.apply(record.value)

    async def apply(self, value: bytes | None) -> None:
        """Apply one control event (an invalid one is logged and ignored)."""
        try:
            command = schemas.decode(value or b"", schemas.Control)
        except schemas.InvalidEvent as exc:
            log.warning("ignoring an invalid control event: %s", exc)
            return
        if command.command_id in self._seen:
            return
        self._seen.add(command.command_id)
        for service in list(self.services):
            try:
                await service.on_control(command)
            except Exception:
                log.exception(
                    "control command %s (%s) failed in %s",
                    command.command_id,
                    command.action,
                    type(service).__name__,
                )
