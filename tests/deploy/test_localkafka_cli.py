"""`make kafka-down` / `make clean` stop only what `make` started here (issue 16): before, they
stopped every local broker, a running `make test`'s included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCALKAFKA = ROOT / "deploy" / "kafka" / "localkafka.py"
JARS = Path(os.environ.get("LLMROUTE_KAFKA_HOME", ROOT / ".kafka")) / "jars"

pytestmark = pytest.mark.slow


def _lk(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMROUTE_KAFKA_HOME": str(home)}
    return subprocess.run(
        [sys.executable, str(LOCALKAFKA), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _running(home: Path) -> dict[str, list[int]]:
    out = _lk(home, "status").stdout.strip().splitlines()
    return {(s := json.loads(line))["name"]: s["running"] for line in out}


def test_down_and_clean_leave_other_instances_running(tmp_path: Path) -> None:
    if not (JARS / ".complete").exists():
        pytest.skip("no Kafka jars (make kafka-jars)")
    home = tmp_path / "kafka-home"
    home.mkdir()
    (home / "jars").symlink_to(JARS, target_is_directory=True)
    started = _lk(home, "up", "--name", "other-run", "--port", "0", "--json")
    assert started.returncode == 0, started.stderr
    try:
        assert _lk(home, "down").returncode == 0  # `make kafka-down`: the `single` instance only
        assert _running(home) == {"other-run": [1]}
        cleaned = _lk(home, "clean")  # `make clean` while another run's broker works
        assert cleaned.returncode == 0 and "still running" in cleaned.stdout
        assert (home / "other-run").is_dir()
    finally:
        assert _lk(home, "down", "--name", "other-run").returncode == 0
    assert _running(home) == {}
    (home / "jars").unlink()
    assert "removed" in _lk(home, "clean").stdout and not home.exists()
