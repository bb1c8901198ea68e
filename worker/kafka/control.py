"""Operator commands on the control topic (`schemas.Control`): every member applies them all.

The follower starts at the topic's end offsets when the member starts (a command published
before is not replayed), applies each command once (by `command_id`) with the handler of its
action, and after a failure resumes where it was, so no command is skipped. A handler's failure
is logged; it never stops the follower.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import schemas
from worker.kafka.table import TopicFollower

log = logging.getLogger(__name__)

ControlHandler = Callable[[schemas.Control], Awaitable[None]]


class ControlFollower:
    def __init__(
        self, client_kwargs: Mapping[str, Any], topic: str, handlers: Mapping[str, ControlHandler]
    ) -> None:
        self.topic = topic
        self.handlers = handlers
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
        handler = self.handlers.get(command.action)
        if command.command_id in self._seen or handler is None:
            return
        self._seen.add(command.command_id)
        try:
            await handler(command)
        except Exception:
            log.exception("control command %s (%s) failed", command.command_id, command.action)
