"""The parts a member is assembled from, besides its Kafka clients (as aiokafka assembles its
consumer from a fetcher, a coordinator and a subscription state): each is given to the
`Worker` constructor, started once the member's clients are up, and stopped after the drain
and the last commit.

    Service      start / stop (the semantic-cache follower, spend sharing, shadow calls, the
                 router reloader)
    Controlled   a service that also takes operator commands from the control topic
                 (`on_control` sees every command and acts on its own actions)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import schemas


@runtime_checkable
class Service(Protocol):
    async def start(self) -> None:
        """Called once the member's producer and consumer have started."""
        ...

    async def stop(self) -> None:
        """Called after the drain and the last commit (in the reverse order of `start`)."""
        ...


@runtime_checkable
class Controlled(Protocol):
    async def on_control(self, command: schemas.Control) -> None:
        """One operator command (each applied once per member); ignore other actions."""
        ...
