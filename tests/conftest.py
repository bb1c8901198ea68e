from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.kafka_support import create_topics, localkafka, unique_topic
from tests.worker.support import ROWS, SIM_KEYS, replay_dataset, train_artifact
from worker.app import await_chain
from worker.sim import SimConfig, Simulator


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real broker: KAFKA_BOOTSTRAP when set (make test sets it), else one started here."""
    given = os.environ.get("KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    lk = localkafka()
    name = f"pytest-{os.getpid()}"
    inst = lk.start(name, 1, 0, heap_mb=1024)
    try:
        yield inst.bootstrap
    finally:
        lk.stop(name)


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> TopicFactory:
    """`await new_topic(partitions=3)` creates a fresh topic that no other test uses."""

    async def make(prefix: str = "t", partitions: int = 1, **configs: str) -> str:
        name = unique_topic(prefix)
        await create_topics(kafka_bootstrap, [name], partitions=partitions, configs=configs)
        return name

    return make


# ------------------------------------------------------------ a trained router and the simulator
# (shared by tests/worker and tests/training: the router is trained once per session)


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A default router trained on ROWS, calibrated, with score quantiles."""
    return train_artifact(tmp_path_factory.mktemp("router"), ROWS)


@pytest.fixture
def sim_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SIM_KEYS.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
async def sim(sim_keys: None) -> AsyncIterator[Simulator]:
    """The provider simulator on a free port, replaying ROWS, with no latency or faults."""
    async with Simulator(SimConfig(seed=1), replay_dataset()) as server:
        yield server


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """A client or socket a test leaves unclosed is finalised in that test's teardown, so the
    ResourceWarning (an error here) names the test that leaked it, not whichever later test the
    collector happened to run in."""
    yield
    gc.collect()


class Processes:
    """Child processes a test starts; each still running at teardown is killed and reaped, even
    when the test's own code never got to its cleanup (a timeout, an abandoned coroutine)."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self._procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.kill_all()


# ---------------------------------------------------------------- a failed test's teardown

TEARDOWN_AFTER_FAILURE_S = float(os.environ.get("TEST_TEARDOWN_AFTER_FAILURE_S", "180"))


class _Watchdog:
    """pytest-timeout stops its timer as soon as a test fails (it expects a debugger next), so
    a teardown that then hangs (an event loop whose leftover tasks never finish on a sick
    cluster) would hold the run until CI's own limit. After a failure, this gives the rest of
    the test's protocol `TEARDOWN_AFTER_FAILURE_S`, then prints every thread's stack and every
    asyncio task, and ends the run."""

    def __init__(self) -> None:
        self._timer: threading.Timer | None = None

    def arm(self, item: pytest.Item, failure: str) -> None:
        self.cancel()
        self._timer = threading.Timer(TEARDOWN_AFTER_FAILURE_S, _expire, (item, failure))
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _expire(item: pytest.Item, failure: str) -> None:
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(item)
    out = item.config.get_terminal_writer()
    out.sep("+", f"{item.nodeid}: teardown hung {TEARDOWN_AFTER_FAILURE_S:.0f} s after a failure")
    out.write(failure + "\n")  # the run ends before pytest's own report would show it
    for ident, frame in sys._current_frames().items():
        out.line(f"--- thread {ident}")
        out.write("".join(traceback.format_stack(frame)))
    for task in list(getattr(asyncio.tasks, "_all_tasks", ())):  # every loop's (no public API)
        if task.done():
            continue
        out.line(f"--- {task!r}")
        out.write("\n".join(await_chain(task.get_coro())) + "\n")
    out.flush()
    os._exit(1)


_WATCHDOG = _Watchdog()


@pytest.hookimpl(trylast=True)
def pytest_exception_interact(
    node: pytest.Item | pytest.Collector, report: pytest.TestReport | pytest.CollectReport
) -> None:
    if isinstance(node, pytest.Item):
        _WATCHDOG.arm(node, report.longreprtext)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    try:
        yield
    finally:
        _WATCHDOG.cancel()
