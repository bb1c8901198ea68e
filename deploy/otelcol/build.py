#!/usr/bin/env python3
"""Build the OpenTelemetry Collector the tests run, with the collector builder (ocb), cached.

Standard library only, like deploy/kafka/localkafka.py. Needs Go (1.24 or newer) and the Go
module proxy; everything else comes from there:

    build.py              build (once) and print the collector's path
    build.py --path       print where the binary is (or would be), build nothing

The builder itself is installed at BUILDER_VERSION into `.otelcol/bin`; `manifest.yaml` (beside
this file) names every component at one collector release. The binary lands in
`.otelcol/<digest>/otelcol-llmroute`, the digest covering the manifest and the builder version,
so a second run (and a second `make test`) does no work; ~/go/pkg/mod and Go's build cache make a
rebuild after `rm -rf .otelcol` quick too. A first build takes a few minutes of CPU.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MANIFEST = HERE / "manifest.yaml"
STATE = Path(os.environ.get("LLMROUTE_OTELCOL_HOME", ROOT / ".otelcol"))
BUILDER_MODULE = "go.opentelemetry.io/collector/cmd/builder"
BUILDER_VERSION = "v0.161.0"  # the collector release every module in manifest.yaml is at
BINARY = "otelcol-llmroute"


class BuildError(RuntimeError):
    """The collector could not be built."""


def _digest() -> str:
    h = hashlib.sha256(MANIFEST.read_bytes())
    h.update(BUILDER_VERSION.encode())
    return h.hexdigest()[:16]


def binary_path() -> Path:
    """Where the collector for the current manifest lives (it may not be built yet)."""
    return STATE / _digest() / BINARY


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError("go is not on PATH: the collector is built from the Go module proxy")
    return go


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> None:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


def ensure_collector() -> Path:
    """Build the collector unless the one for this manifest is there; returns its path."""
    target = binary_path()
    if target.exists():
        return target
    go = _go()
    env = {**os.environ, "GOBIN": str(STATE / "bin"), "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    builder = STATE / "bin" / f"builder-{BUILDER_VERSION}"
    if not builder.exists():
        (STATE / "bin").mkdir(parents=True, exist_ok=True)
        _run([go, "install", f"{BUILDER_MODULE}@{BUILDER_VERSION}"], env, ROOT)
        (STATE / "bin" / "builder").rename(builder)
    work = target.parent.with_name(target.parent.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _run([str(builder), "--config", str(MANIFEST), "--output-path", str(work)], env, work)
    built = work / BINARY
    if not built.exists():
        raise BuildError(f"the builder finished but {built} is missing")
    shutil.rmtree(target.parent, ignore_errors=True)
    target.parent.mkdir(parents=True)
    built.rename(target)
    shutil.rmtree(work, ignore_errors=True)
    return target


def main(argv: list[str]) -> int:
    if argv[1:] == ["--path"]:
        print(binary_path())
        return 0
    try:
        print(ensure_collector())
    except BuildError as exc:
        print(f"otelcol build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
