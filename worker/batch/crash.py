"""Crash points for the batch jobs' kill tests (fault injection, off unless asked for).

`LLMROUTE_CRASH_AT=<step>` makes the process kill itself with SIGKILL the first time it reaches
that step, exactly as an OOM kill or a node loss would, so tests can stop a worker between any two
steps of a job. Steps: accumulated, uploaded, created, polling, downloaded, half_published.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

STEPS = ("accumulated", "uploaded", "created", "polling", "downloaded", "half_published")
ENV = "LLMROUTE_CRASH_AT"


def crash_point(step: str) -> None:
    if os.environ.get(ENV) == step:
        log.warning("crash point %s reached: killing the process (%s)", step, ENV)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
