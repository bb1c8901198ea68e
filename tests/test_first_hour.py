"""A newcomer's first hour, scripted (issue 16): a fresh clone with no `../shared` beside it, the
README's "Run a member yourself" commands run as written, and each mistake the README lists ends
in one line with the exit status it documents.

What is not as a newcomer has it, to keep this test minutes long: the clone reuses this
checkout's virtualenv (its package is put first on `PYTHONPATH`, so the clone's code is what
runs) and Kafka jars (a symlink: `make kafka-up` would otherwise copy them from ~/.m2), and the
router is trained with `llmroute demo --train-only` instead of a whole `make demo`. The README's
block starts a broker on 127.0.0.1:19092, the simulator on 8089 and metrics on 9464: when
another program holds one of those ports the test is skipped, naming it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXED_PORTS = {19092: "the README's broker", 8089: "the simulator", 9464: "/metrics"}

pytestmark = pytest.mark.slow


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def readme_block(readme: str, heading: str) -> str:
    """The first ```sh block after `heading`."""
    after = readme[readme.index(heading) :]
    found = re.search(r"```sh\n(.*?)```", after, re.S)
    assert found, f"no sh block under {heading}"
    return found.group(1)


def readme_errors(readme: str) -> list[tuple[str, int]]:
    """(the start of the line the README shows, its exit status) for each mistake it lists with
    a message and an exit status."""
    table = readme[readme.index("### When something is wrong") :].split("\n\n")[2]
    out = []
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        shown = re.match(r"`([^`]*)`", cells[0])
        if shown and cells[-1].isdigit():
            out.append((shown.group(1).split("...")[0].split(" (any command)")[0], int(cells[-1])))
    return out


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not (ROOT / ".venv" / "bin" / "llmroute").exists():
        pytest.skip("no .venv here (make install)")
    if not (ROOT / ".kafka" / "jars" / ".complete").exists():
        pytest.skip("no Kafka jars here (make kafka-jars)")
    for port, what in FIXED_PORTS.items():
        if _port_taken(port):
            pytest.skip(f"127.0.0.1:{port} ({what}) is taken by another program")
    where = tmp_path_factory.mktemp("first-hour") / "llm-routing-worker"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(where)], check=True, timeout=120)
    assert not (where.parent.parent / "shared").exists()
    (where / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    (where / ".kafka").mkdir()
    (where / ".kafka" / "jars").symlink_to(ROOT / ".kafka" / "jars", target_is_directory=True)
    yield where
    subprocess.run(
        [sys.executable, "deploy/kafka/localkafka.py", "down", "--all"],
        cwd=where,
        env=_env(where),
        timeout=120,
        check=False,
    )
    shutil.rmtree(where / ".kafka", ignore_errors=True)


def _env(clone: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLMROUTE_", "KAFKA_", "SIM_", "LANGFUSE_", "VIRTUAL_ENV"))
    }
    env["PYTHONPATH"] = str(clone)  # the clone's code, not this checkout's
    return {**env, **extra}


def _llmroute(clone: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(clone / ".venv" / "bin" / "llmroute"), *args],
        cwd=clone,
        env=_env(clone, **env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_run_a_member_yourself_as_written(clone: Path) -> None:
    trained = _llmroute(clone, "demo", "--train-only")
    assert trained.returncode == 0, trained.stderr
    assert "built-in prompt set" in trained.stdout  # no ../shared beside the clone
    assert (clone / ".demo" / "router" / "meta.json").is_file()  # the path local.toml names

    block = readme_block((clone / "README.md").read_text(), "### Run a member yourself")
    script = clone / "first-hour.sh"
    script.write_text("set -euo pipefail\n" + block)
    proc = subprocess.Popen(
        ["bash", str(script)],
        cwd=clone,
        env=_env(clone),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the block's background jobs die with it, whatever happens
    )
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None or proc.returncode != 0:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    assert proc.returncode == 0, out[-4000:]
    assert "ready to run" in out  # run --check
    assert re.search(r"^\d\d:\d\d:\d\d ok +\S+ tenant=default model=", out, re.M), out[-3000:]
    assert "group llmroute-local (Stable)" in out
    assert "member of group llmroute-local" in out and "reads llm.requests (6 partitions)" in out
    assert "worker stopped: 1 records read, 1 responses published" in out
    assert "Traceback" not in out
    assert not _port_taken(19092)  # make kafka-down stopped the broker


def test_each_listed_mistake_is_one_line_with_its_exit_status(clone: Path) -> None:
    readme = (clone / "README.md").read_text()
    expected = readme_errors(readme)
    assert len(expected) == 5, expected
    local = "deploy/config/local.toml"
    if not (clone / ".demo" / "router").exists():
        assert _llmroute(clone, "demo", "--train-only").returncode == 0
    bad = clone / "bad.toml"
    langfuse = clone / "langfuse.toml"
    text = (clone / local).read_text().replace('"../../.demo/router"', '"./.demo/router"')
    bad.write_text(text.replace("[metrics]", "[metrics]\nprot = 1"))
    langfuse.write_text(text + "\n[telemetry.langfuse]\nbase_url = 'http://127.0.0.1:9'\n")
    router = clone / ".demo" / "router"
    moved = clone / ".demo" / "router.away"

    def no_router() -> subprocess.CompletedProcess[str]:
        router.rename(moved)
        try:
            return _llmroute(clone, "run", "--config", local)
        finally:
            moved.rename(router)

    runs = [
        _llmroute(clone, "run", "--config", local),  # nothing on 127.0.0.1:19092
        no_router(),
        _llmroute(clone, "run", "--config", str(bad)),
        _llmroute(clone, "run", "--config", str(langfuse)),
        _llmroute(clone, "run", "--config", local, "--log-level", "LOUD"),
    ]
    for (shown, code), run in zip(expected, runs, strict=True):
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr
        assert lines[0].startswith(shown), (lines[0], shown)
        assert "(hint: " in lines[0] and run.returncode == code and run.stdout == ""
    check = _llmroute(clone, "run", "--config", local, "--check")  # no SIM_OPENAI_API_KEY
    assert check.returncode == 1 and "FAIL keys" in check.stdout
    assert "SIM_OPENAI_API_KEY (for " in check.stdout
