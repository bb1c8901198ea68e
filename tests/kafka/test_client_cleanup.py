"""A Kafka client whose start is cancelled (a broker that accepts connections and never answers,
a member stopped while it connects) is still closed: no unclosed client or socket is left for
the garbage collector to warn about later, in whatever code happens to run then."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import warnings
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest

from tests.worker.support import worker_config
from worker.app import build
from worker.cli.demo import _follow
from worker.cli.kafka_args import load_connection
from worker.cli.ops.produce import produce
from worker.cli.ops.status import collect
from worker.cli.ops.tail import tail
from worker.kafka.table import scan
from worker.sim.harness import Follower, read_all, topic_names


@pytest.fixture
async def silent_broker() -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that accepts and never says a word."""
    writers: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def _unclosed_after_cancelling(work: Awaitable[object]) -> list[str]:
    """Run `work` for a second, cancel it, and return the ResourceWarnings that follow."""
    task = asyncio.ensure_future(work)
    await asyncio.sleep(1.0)
    task.cancel()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.suppress(asyncio.CancelledError):
            await task
        del task
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


async def test_a_table_scan_cancelled_while_connecting_closes_its_consumer(
    silent_broker: str,
) -> None:
    async def read() -> None:
        async for _batch in scan(
            {"bootstrap_servers": silent_broker}, "anything", partitions=[0], timeout_s=60
        ):
            pass

    work = read()
    assert await _unclosed_after_cancelling(work) == []


async def test_a_member_stopped_while_connecting_closes_its_clients(
    silent_broker: str, artifact: Path, sim_keys: None
) -> None:
    config = worker_config(silent_broker, topic_names("requests-x"), artifact, "http://127.0.0.1:9")
    app = build(config)
    try:
        assert await _unclosed_after_cancelling(app.worker.run()) == []
    finally:
        await app.close()


async def test_a_follower_cancelled_while_connecting_closes_its_consumer(
    silent_broker: str,
) -> None:
    async def follow() -> None:
        async with Follower(silent_broker, "anything"):
            pass

    assert await _unclosed_after_cancelling(follow()) == []


async def test_read_all_cancelled_while_connecting_closes_its_consumer(silent_broker: str) -> None:
    assert await _unclosed_after_cancelling(read_all(silent_broker, "anything", 1)) == []


@pytest.mark.parametrize("tool", ["tail", "produce", "status", "demo"])
async def test_the_kafka_tools_cancelled_while_connecting_close_their_clients(
    silent_broker: str, tool: str
) -> None:
    conn = load_connection(None, silent_broker, {})
    work = {
        "tail": lambda: tail(conn, None, max_records=1),
        "produce": lambda: produce(conn, ['{"prompt": "hi"}']),
        "status": lambda: collect(conn, group="group"),
        "demo": lambda: _follow(silent_broker, ["anything"], 1, 60.0),
    }[tool]()
    assert await _unclosed_after_cancelling(work) == []
