"""The registry owns `CURRENT`: versions are added, listed and promoted through it, and a member
resolves `router.artifact` through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from routers.artifact import load_artifact
from routers.dataset import record_from_obj
from routers.training import TrainOptions, train
from tests.routers.synth import records
from worker.training.registry import CURRENT, Registry, RegistryError, resolve_artifact


@pytest.fixture(scope="module")
def router():
    return train([record_from_obj(r) for r in records(120, seed=3)], TrainOptions("classifier"))


def _add(registry: Registry, router) -> tuple[str, Path]:
    return registry.add(router, data_hash="d" * 64, metrics={}, calibration={}, quantiles=[0.5])


def test_add_list_promote(router, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    assert registry.current() is None and registry.versions() == []
    first, path = _add(registry, router)
    second, _ = _add(registry, router)
    assert first.startswith("v0001-") and second.startswith("v0002-")
    assert registry.versions() == [first, second]
    assert registry.current() is None  # adding does not promote
    assert load_artifact(path).router.version == first
    registry.promote(second)
    assert registry.current() == registry.folder / second
    assert (registry.folder / CURRENT).read_text() == second + "\n"
    assert not [p for p in registry.folder.iterdir() if p.name.startswith(".")]  # no leftovers
    with pytest.raises(RegistryError, match="not an artifact"):
        registry.promote("v0009-missing")
    assert registry.current() == registry.folder / second


def test_resolve_artifact(router, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    first, path = _add(registry, router)
    assert resolve_artifact(path) == path  # an artifact folder names itself
    assert resolve_artifact(registry.folder) == registry.folder  # nothing promoted yet
    registry.promote(first)
    assert resolve_artifact(str(registry.folder)) == path
    (registry.folder / CURRENT).write_text("\n")
    assert resolve_artifact(registry.folder) == registry.folder
