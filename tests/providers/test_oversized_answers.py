"""An answer body beyond the cap is refused without a retry, and the client stops reading it:
real local servers on 127.0.0.1 that never stop sending (chunked, a huge Content-Length, or a
body delimited by the connection closing), through the engine's direct path and through httpx's
own transport."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.providers.conftest import ENV
from tests.providers.test_engine import Server
from worker.config.models import WEAK_MODEL, simulator_catalogue
from worker.providers import (
    AllModelsFailedError,
    ClientSettings,
    CompletionRequest,
    HttpSettings,
    MalformedResponseError,
    ModelClient,
    RetryPolicy,
)

PIECE = 64 * 1024
SAFETY_STOP = 512 * 1024 * 1024  # the server gives up here if the client never stops reading
ANSWER_CAP = 64 * 1024  # max_answer_bytes; the body cap derived from it is 8x


class Endless:
    """Answers the first request with a 200 whose JSON body never ends; counts what it wrote
    and notes when the client stopped taking it (the write failed on a closed connection)."""

    def __init__(self, framing: str) -> None:
        self.framing = framing
        self.written = 0
        self.abandoned = asyncio.Event()
        self.server = Server(self.handle)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int):
        if await self.server.read_request(reader) is None:
            return
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        if self.framing == "chunked":
            head += b"transfer-encoding: chunked\r\n"
        elif self.framing == "length":
            head += b"content-length: %d\r\n" % (1 << 40)
        else:
            head += b"connection: close\r\n"
        writer.write(head + b"\r\n")
        piece = b'{"id":"c1","choices":[{"message":{"content":"' + b"x" * PIECE
        try:
            while self.written < SAFETY_STOP:
                data = b"%x\r\n%b\r\n" % (len(piece), piece) if self.framing == "chunked" else piece
                writer.write(data)
                await writer.drain()
                self.written += len(piece)
                piece = b"x" * PIECE
        except ConnectionError:
            self.abandoned.set()
            raise


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
@pytest.mark.parametrize("path", ["engine", "httpx"])
async def test_an_endless_answer_is_cut_at_the_cap_and_not_retried(framing: str, path: str):
    endless = Endless(framing)
    async with endless.server as server:
        settings = ClientSettings(
            http=HttpSettings(total_timeout_s=2.0),
            retry=RetryPolicy(max_retries=1),
            max_answer_bytes=ANSWER_CAP,
        )
        transport = httpx.AsyncHTTPTransport() if path == "httpx" else None
        catalogue = simulator_catalogue(server.url)
        async with ModelClient(catalogue, settings, env=ENV, http_transport=transport) as client:
            async with asyncio.timeout(30):
                with pytest.raises(AllModelsFailedError) as info:
                    await client.complete(CompletionRequest.from_prompt("q"), [WEAK_MODEL])
            error = info.value.last_error
            assert isinstance(error, MalformedResponseError), error
            assert not error.retriable
            assert "max_body_bytes" in str(error)
            assert len(server.requests) == 1  # refused once, never asked again
            # the client closed the connection: the server's endless write fails soon after
            async with asyncio.timeout(10):
                await endless.abandoned.wait()
    # what the server managed to write: the cap plus what the kernel's socket buffers held
    assert endless.written < 8 * ANSWER_CAP + 32 * 1024 * 1024
