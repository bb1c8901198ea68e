"""Real parts for worker tests: the harness benches use too (`worker.sim.harness`: a trained
router artifact, the provider simulator, a config, producing and reading topics) and the rows
the tests share."""

from __future__ import annotations

from collections import Counter
from typing import Any

from worker.sim import Dataset
from worker.sim.harness import (
    MMLU,
    ROOT,
    SIM_KEYS,
    Follower,
    dataset_rows,
    poll_until,
    produce,
    read_all,
    request_event,
    train_artifact,
    worker_config,
    worker_config_data,
)
from worker.sim.harness import replay_dataset as _replay

__all__ = [
    "MMLU",
    "ROOT",
    "ROWS",
    "SIM_KEYS",
    "Collector",
    "dataset_rows",
    "poll_until",
    "produce",
    "read_all",
    "replay_dataset",
    "request_event",
    "train_artifact",
    "worker_config",
    "worker_config_data",
]


class Collector(Follower):
    """Follows a topic from its start in the background, counting records per key (as text)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.counts: Counter[str] = Counter()

    def record(self, r: Any, now: float) -> None:
        self.counts[(r.key or b"").decode()] += 1
        self.values.append(r.value)

    async def wait_for(self, keys: set[str], timeout_s: float) -> bool:
        return await poll_until(lambda: keys <= set(self.counts), timeout_s)


ROWS = dataset_rows(600)


def replay_dataset() -> Dataset:
    """What the simulator replays: the labels of ROWS."""
    return _replay(ROWS)
