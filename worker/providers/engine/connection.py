"""One TCP (or TLS) connection as an asyncio protocol: a receive buffer the engine reads from,
waits for bytes and for write room with the engine's timeouts, and read back-pressure (the
socket is paused while more than ``READ_HIGH_WATER`` bytes wait unread, so a server sending
faster than the answer is taken never grows the buffer without bound)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import httpx

from worker.providers.engine.parse import MAX_HEAD_BYTES, Origin, ResponseHead, parse_head

READ_HIGH_WATER: Final = 256 * 1024
READ_LOW_WATER: Final = 64 * 1024


class StaleConnection(Exception):
    """A reused connection failed before any byte of the answer: safe to retry (idempotent)."""


def _resolve(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class Connection(asyncio.Protocol):
    """The pool's unit: ``used`` counts the requests started on it, ``received`` the bytes of
    the current answer seen so far; ``idle`` / ``idle_since`` are the pool's bookkeeping."""

    __slots__ = (
        "buf",
        "closed",
        "eof",
        "error",
        "idle",
        "idle_since",
        "loop",
        "on_idle_lost",
        "origin",
        "paused",
        "reading_paused",
        "received",
        "transport",
        "used",
        "waiter",
        "writable",
    )

    def __init__(
        self,
        origin: Origin,
        loop: asyncio.AbstractEventLoop,
        on_idle_lost: Callable[[Connection], None],
    ):
        self.origin = origin
        self.loop = loop
        self.on_idle_lost = on_idle_lost  # the pool forgets an idle connection the server closed
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.writable: asyncio.Future[None] | None = None
        self.eof = False
        self.closed = False
        self.paused = False  # writing: the transport's buffer is full
        self.reading_paused = False
        self.error: BaseException | None = None
        self.idle = False
        self.idle_since = 0.0
        self.received = 0
        self.used = 0

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.received += len(data)
        if len(self.buf) > READ_HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        return None  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self.eof = True
        if exc is not None:
            self.error = exc
        self._wake()
        self._wake_writer()
        if self.idle:
            self.on_idle_lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_writer()

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        _resolve(waiter)

    def _wake_writer(self) -> None:
        writable, self.writable = self.writable, None
        _resolve(writable)

    # -- the receive buffer ------------------------------------------------------------------

    def take(self, n: int | None = None) -> bytes:
        """Up to ``n`` buffered bytes (all of them when None), removed from the buffer."""
        buf = self.buf
        if n is None or len(buf) <= n:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        if self.reading_paused and len(buf) <= READ_LOW_WATER and not self.closed:
            self.reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        return data

    def take_until(self, separator: bytes, start: int) -> bytes | None:
        """The buffered bytes before ``separator`` (both removed), or None if it is not there
        yet (``start``: where to look from)."""
        end = self.buf.find(separator, start)
        if end < 0:
            return None
        data = self.take(end + len(separator))
        return data[:end]

    @property
    def dead(self) -> bool:
        """Closed, half-closed or holding unasked-for bytes: never send on it."""
        return self.closed or self.eof or bool(self.buf)

    # -- waits -------------------------------------------------------------------------------

    def _waiter(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.loop.create_future()
        self.waiter = fut
        return fut

    async def _until(self, fut: asyncio.Future[None], timeout_s: float | None) -> None:
        if timeout_s is None:
            await fut
            return
        handle = self.loop.call_later(timeout_s, _expire, fut)
        try:
            await fut
        finally:
            handle.cancel()

    async def wait_data(
        self,
        timeout_s: float | None,
        request: httpx.Request | None,
        deadline: float | None = None,
    ) -> None:
        """Wait for more bytes, EOF or loss: httpx.ReadTimeout after ``timeout_s`` of silence;
        a bare TimeoutError when the exchange's ``deadline`` (loop time) comes first."""
        if deadline is not None:
            left = deadline - self.loop.time()
            if left <= 0:
                raise TimeoutError
            if timeout_s is None or left < timeout_s:
                await self._until(self._waiter(), left)
                return
        try:
            await self._until(self._waiter(), timeout_s)
        except TimeoutError:
            raise httpx.ReadTimeout("timed out waiting for the server", request=request) from None

    async def drain(self, timeout_s: float | None, request: httpx.Request | None) -> None:
        """Wait until the transport takes more bytes: httpx.WriteTimeout after ``timeout_s``."""
        try:
            while self.paused and not self.closed:
                fut = self.loop.create_future()
                self.writable = fut
                await self._until(fut, timeout_s)
        except TimeoutError:
            raise httpx.WriteTimeout("timed out sending the request", request=request) from None

    async def read_head(
        self,
        method: str,
        request: httpx.Request | None,
        timeout_s: float | None,
        deadline: float | None = None,
    ) -> ResponseHead:
        """The next response head; StaleConnection when a reused connection ends before any
        byte of it."""
        start = 0
        while True:
            raw = self.take_until(b"\r\n\r\n", start)
            if raw is not None:
                return parse_head(raw, method, request)
            if len(self.buf) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("response head too large", request=request)
            if self.eof:
                if self.used > 1 and self.received == 0:
                    raise StaleConnection()
                raise self.read_failure(request, "Server disconnected without sending a response.")
            start = max(0, len(self.buf) - 3)
            await self.wait_data(timeout_s, request, deadline)

    def read_failure(self, request: httpx.Request | None, what: str) -> httpx.TransportError:
        if isinstance(self.error, OSError):
            return httpx.ReadError(f"{type(self.error).__name__}: {self.error}", request=request)
        return httpx.RemoteProtocolError(what, request=request)

    # -- ending ------------------------------------------------------------------------------

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
