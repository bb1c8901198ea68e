"""Run the simulator until SIGINT or SIGTERM, announcing where it listens (`llmroute sim-provider`
and the bench scripts start it this way, each in its own process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from typing import IO

from worker.sim.answers import Dataset
from worker.sim.config import SimConfig
from worker.sim.server import Simulator

__all__ = ["serve_until_stopped"]


async def serve_until_stopped(
    config: SimConfig,
    dataset: Dataset | None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    out: IO[str] | None = None,
) -> None:
    """Serve until a signal; first writes one JSON line to `out` (stdout):
    {"event": "sim_provider_ready", "base_url", "openai_base_url", "port", "dataset_rows"}."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with Simulator(config, dataset, host=host, port=port) as sim:
        ready = {
            "event": "sim_provider_ready",
            "base_url": sim.base_url,
            "openai_base_url": sim.openai_base_url,
            "port": sim.port,
            "dataset_rows": len(dataset) if dataset else 0,
        }
        print(json.dumps(ready), file=sys.stdout if out is None else out, flush=True)
        await stop.wait()
