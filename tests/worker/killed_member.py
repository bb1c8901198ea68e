"""A member that SIGKILLs itself right after its n-th response is published (tests only).

    python -m tests.worker.killed_member CONFIG N

The observer's `published` runs once a response is acknowledged (or, with transactions, once
its transaction committed) and before its dedupe marker is written and its offset committed:
the window a real crash can hit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from worker.app import build
from worker.config import load
from worker.kafka.member import Worker
from worker.kafka.observer import NullObserver


class _KillAfter(NullObserver):
    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0

    def published(self, handled: object) -> None:
        self.count += 1
        if self.count >= self.n:
            os.kill(os.getpid(), signal.SIGKILL)


async def main(path: str, n: int) -> None:
    config = load(path)
    app = build(config)
    worker = Worker(
        config.kafka, config.topics, config.loop, app.pipeline, _KillAfter(n), app.tracing
    )
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
