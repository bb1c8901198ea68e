from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.worker.support import ROWS, SIM_KEYS, replay_dataset, train_artifact
from worker.sim import SimConfig, Simulator


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A default router trained on ROWS (as tests/worker uses)."""
    return train_artifact(tmp_path_factory.mktemp("router"), ROWS)


@pytest.fixture
def sim_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SIM_KEYS.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
async def sim(sim_keys: None) -> AsyncIterator[Simulator]:
    """The provider simulator replaying ROWS; it also answers judge prompts (worker.sim)."""
    async with Simulator(SimConfig(seed=1), replay_dataset()) as server:
        yield server
