"""Imports run one way: the runtime (Kafka shell, pipeline, providers, telemetry) may import
`worker.config`, `routers` and `schemas`, never the reverse.

Each group is imported, every module of it, in a fresh interpreter; the test then lists what
`sys.modules` holds. `routers` and `schemas` may load nothing of `worker`; `worker.config` may
load only itself, `worker.errors` and `worker.secrets` (pure modules) and the `worker` package.
None of them may load a network, Kafka or telemetry library.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN_LIBRARIES = ("aiokafka", "httpx", "httpcore", "opentelemetry", "langfuse")

# modules of `worker` that configuration may load: nothing that runs
CONFIG_MAY_LOAD = ("worker", "worker.config", "worker.errors", "worker.secrets")


def modules_of(package: str) -> list[str]:
    """Every importable module of `package` (a folder of ROOT, or a single module file)."""
    path = ROOT / Path(*package.split("."))
    if path.with_suffix(".py").is_file():
        return [package]
    names = []
    for file in sorted(path.rglob("*.py")):
        parts = file.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def loaded_after_import(modules: list[str]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=ROOT,
    )
    loaded: list[str] = json.loads(out.stdout)
    return loaded


def offending(loaded: list[str], worker_allowed: tuple[str, ...]) -> list[str]:
    def allowed_in_worker(name: str) -> bool:
        return any(
            name == ok or (ok != "worker" and name.startswith(ok + ".")) for ok in worker_allowed
        )

    return [
        name
        for name in loaded
        if name.split(".")[0] in FORBIDDEN_LIBRARIES
        or (name.split(".")[0] == "worker" and not allowed_in_worker(name))
    ]


@pytest.mark.parametrize(
    ("package", "worker_allowed"),
    [
        pytest.param("routers", (), id="routers"),
        pytest.param("schemas", (), id="schemas"),
        pytest.param("worker.config", CONFIG_MAY_LOAD, id="worker.config"),
    ],
)
def test_package_loads_no_runtime(package: str, worker_allowed: tuple[str, ...]) -> None:
    modules = modules_of(package)
    assert modules, package
    loaded = loaded_after_import(modules)
    assert package in loaded
    assert offending(loaded, worker_allowed) == []


def test_the_check_sees_a_runtime_import() -> None:
    # the detector itself: importing the Kafka loop is flagged, for routers' rules and config's
    loaded = loaded_after_import(["worker.kafka.offsets", "httpx"])
    assert "worker.kafka.offsets" in offending(loaded, ())
    assert "worker.kafka.offsets" in offending(loaded, CONFIG_MAY_LOAD)
    assert "httpx" in offending(loaded, CONFIG_MAY_LOAD)
    assert offending(["worker", "worker.config", "worker.config.kafka"], CONFIG_MAY_LOAD) == []
