"""The HTTP/1.1 exchange and the engine's two entry points.

:class:`HttpEngine` is an ``httpx.AsyncBaseTransport`` on plain asyncio: ``httpx.AsyncClient``
stays the API (URL merging, headers, auth, hooks, decoding all stay httpx's) and the engine
replaces only what sits under ``handle_async_request``; :meth:`HttpEngine.round_trip` exchanges
a request already encoded whole, without httpx's request and response objects (the provider
adapters' direct path, ``worker.providers.http.RequestTemplate``). Both go through one exchange
loop (:meth:`HttpEngine._exchange`).

    client = httpx.AsyncClient(transport=HttpEngine(max_connections=512))

Behaviour:

- Connections come from one pool (``worker.providers.engine.pool``); one request in flight per
  connection (no pipelining).
- Response bodies framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or the server
  closing; ``HEAD``, 1xx, 204 and 304 answers have none; ``Connection: close`` (or HTTP/1.0
  without keep-alive) ends the connection after the answer. Bodies stream to httpx.
- Timeouts from ``request.extensions["timeout"]`` as in httpcore: ``connect`` (TCP + TLS),
  ``write`` (per blocked write), ``read`` (per wait for bytes), ``pool`` (per wait for a slot).
- https through one shared :class:`ssl.SSLContext` (``httpx.create_ssl_context()`` by default).
- Failures are httpx exceptions: ``ConnectError``/``ConnectTimeout``, ``WriteError``/
  ``WriteTimeout``, ``ReadError``/``ReadTimeout``, ``RemoteProtocolError``,
  ``LocalProtocolError``, ``PoolTimeout``, ``UnsupportedProtocol``; so callers map them as they
  would httpcore's. :class:`ResponseTooLarge` when a body passes ``round_trip``'s
  ``max_body_bytes``: the engine stops reading there and drops the connection.
- Stale connections: an idle connection seen closed before use is discarded (nothing was sent).
  A *reused* connection that fails before any byte of the answer arrives is retried once on a new
  connection only for idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) with an
  in-memory body; a POST that may have reached the server is never re-sent here.

Not supported: HTTP/2, proxies, ``Upgrade``/101, pipelining.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping

import httpx

from worker.providers.engine.connection import Connection, StaleConnection
from worker.providers.engine.parse import (
    IDEMPOTENT,
    MAX_CHUNK_LINE_BYTES,
    Framing,
    Origin,
    ResponseHead,
    chunk_size,
    encode_httpx_head,
    origin_of,
)
from worker.providers.engine.pool import ConnectionPool

Timeouts = Mapping[str, float | None]


class ResponseTooLarge(httpx.TransportError):
    """The answer's body passed the caller's ``max_body_bytes``; nothing more was read."""

    def __init__(self, limit: int, request: httpx.Request | None = None) -> None:
        super().__init__(f"response body larger than max_body_bytes {limit}", request=request)
        self.limit = limit


class HttpEngine(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive transport for ``httpx.AsyncClient`` (see the module docstring)."""

    def __init__(
        self,
        *,
        max_connections: int = 100,
        max_keepalive_connections: int = 20,
        keepalive_expiry_s: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self._pool = ConnectionPool(
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry_s=keepalive_expiry_s,
            ssl_context=ssl_context,
        )

    @property
    def open_connections(self) -> int:
        return self._pool.total

    @property
    def idle_connections(self) -> int:
        return self._pool.idle_count

    def __repr__(self) -> str:
        pool = self._pool
        return (
            f"HttpEngine(max_connections={pool.max_connections}, open={pool.total}, "
            f"idle={pool.idle_count})"
        )

    # -- the one method httpx calls ----------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = origin_of(request.url, request)
        timeouts = request.extensions.get("timeout") or {}
        head, chunked, close = encode_httpx_head(request)
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:
            body = None
        stream = None
        if body is None:
            assert isinstance(request.stream, httpx.AsyncByteStream)
            stream = request.stream
        conn, parsed = await self._exchange(
            origin,
            request.method,
            head if body is None else head + body,
            timeouts,
            retry=request.method in IDEMPOTENT and body is not None,
            request=request,
            body_stream=stream,
            chunked=chunked,
        )
        if close:
            parsed.keep_alive = False
        return httpx.Response(
            status_code=parsed.status,
            headers=parsed.headers,
            stream=ResponseStream(self._pool, conn, parsed, request, timeouts.get("read")),
            extensions={"http_version": parsed.version, "reason_phrase": parsed.reason},
        )

    # -- without httpx's request and response objects ----------------------------------------

    async def round_trip(
        self,
        origin: Origin,
        method: str,
        message: bytes,
        timeouts: Timeouts,
        *,
        close: bool = False,
        deadline: float | None = None,
        max_body_bytes: int | None = None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One exchange of a request already encoded whole (``message``: head from
        :func:`encode_request_head`, the per-request headers, ``Content-Length``, the blank line
        and the body). Returns the status, the raw headers and the whole body as received
        (content-encoding not undone). Same pool, timeouts, stale-connection retry (idempotent
        methods only) and httpx exceptions as :meth:`handle_async_request`; the exceptions
        carry no request.

        ``deadline`` (event-loop time) bounds the whole exchange as an ``asyncio.timeout_at``
        around it would, raising TimeoutError, but costs no timer of its own when a warm
        connection is free: it only shortens the read waits (which arm one timer anyway).
        ``max_body_bytes``: a longer body raises :class:`ResponseTooLarge`, read no further."""
        conn, parsed = await self._exchange(
            origin, method, message, timeouts, retry=method in IDEMPOTENT, deadline=deadline
        )
        if close:
            parsed.keep_alive = False
        too_large = max_body_bytes is not None and parsed.length > max_body_bytes
        if parsed.framing == Framing.LENGTH and len(conn.buf) == parsed.length and not too_large:
            # the common case: the whole body came with the head
            body = conn.take()
            self._pool.release(conn, parsed.keep_alive and not conn.eof)
            return parsed.status, parsed.headers, body
        stream = ResponseStream(
            self._pool, conn, parsed, None, timeouts.get("read"), deadline, max_body_bytes
        )
        try:
            chunks = [chunk async for chunk in stream]
        finally:
            await stream.aclose()
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return parsed.status, parsed.headers, body

    # -- the exchange ------------------------------------------------------------------------

    async def _exchange(
        self,
        origin: Origin,
        method: str,
        message: bytes,
        timeouts: Timeouts,
        *,
        retry: bool,
        request: httpx.Request | None = None,
        body_stream: AsyncIterable[bytes] | None = None,
        chunked: bool = False,
        deadline: float | None = None,
    ) -> tuple[Connection, ResponseHead]:
        """Send ``message`` (then ``body_stream``, if any) on a pooled connection and read the
        head of the final answer. The connection comes back busy: its body is the caller's to
        read and hand back (``ResponseStream``). A reused connection that turns out stale is
        replaced once when ``retry`` allows."""
        pool = self._pool
        if pool.closed:
            raise RuntimeError("the transport is closed")
        while True:
            conn = pool.take_idle(origin)
            if conn is None:
                async with asyncio.timeout_at(deadline):
                    conn = await pool.acquire(origin, timeouts, request)
            conn.used += 1
            try:
                await self._send(conn, message, body_stream, chunked, timeouts, request, deadline)
                return conn, await self._final_head(conn, method, request, timeouts, deadline)
            except StaleConnection:
                pool.release(conn, False)
                if not retry:
                    raise conn.read_failure(
                        request, "Server disconnected without sending a response."
                    ) from None
                retry = False
            except BaseException:
                pool.release(conn, False)
                raise

    @staticmethod
    async def _send(
        conn: Connection,
        message: bytes,
        body_stream: AsyncIterable[bytes] | None,
        chunked: bool,
        timeouts: Timeouts,
        request: httpx.Request | None,
        deadline: float | None,
    ) -> None:
        transport = conn.transport
        assert transport is not None
        conn.received = 0
        conn.buf.clear()
        transport.write(message)
        write_timeout = timeouts.get("write")
        if body_stream is not None:
            async for part in body_stream:
                if not part:
                    continue
                await conn.drain(write_timeout, request)
                transport.write(b"%x\r\n%b\r\n" % (len(part), part) if chunked else part)
            if chunked:
                transport.write(b"0\r\n\r\n")
        if conn.paused:
            async with asyncio.timeout_at(deadline):
                await conn.drain(write_timeout, request)

    @staticmethod
    async def _final_head(
        conn: Connection,
        method: str,
        request: httpx.Request | None,
        timeouts: Timeouts,
        deadline: float | None,
    ) -> ResponseHead:
        """The head of the final answer (1xx interim answers skipped)."""
        while True:
            parsed = await conn.read_head(method, request, timeouts.get("read"), deadline)
            if parsed.status >= 200:
                return parsed
            if parsed.status == 101:
                raise httpx.RemoteProtocolError(
                    "protocol upgrade is not supported", request=request
                )

    async def aclose(self) -> None:
        await self._pool.aclose()


class _Once:
    """An async iterator over at most one chunk."""

    __slots__ = ("_chunk",)

    def __init__(self, chunk: bytes | None):
        self._chunk = chunk

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        chunk = self._chunk
        if chunk is None:
            raise StopAsyncIteration
        self._chunk = None
        return chunk


class ResponseStream(httpx.AsyncByteStream):
    """The answer's body, read from the connection as it is iterated; ``aclose`` hands the
    connection back to the pool (reusable only when the body was read to its end). With
    ``max_body_bytes``, a longer body raises :class:`ResponseTooLarge` once that many bytes
    have been taken, and is read no further."""

    __slots__ = (
        "_complete",
        "_conn",
        "_deadline",
        "_done",
        "_head",
        "_limit",
        "_pool",
        "_request",
        "_timeout",
    )

    def __init__(
        self,
        pool: ConnectionPool,
        conn: Connection,
        head: ResponseHead,
        request: httpx.Request | None,
        read_timeout: float | None,
        deadline: float | None = None,
        max_body_bytes: int | None = None,
    ):
        self._deadline = deadline
        self._pool = pool
        self._conn = conn
        self._head = head
        self._request = request
        self._timeout = read_timeout
        self._limit = max_body_bytes
        self._complete = head.framing == Framing.EMPTY
        self._done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._complete or self._done:
            return _Once(None)
        head, buf = self._head, self._conn.buf
        fits = self._limit is None or head.length <= self._limit
        if head.framing == Framing.LENGTH and len(buf) >= head.length and fits:
            # the common case: the whole body came with the head (no generator, no wait)
            self._complete = True
            return _Once(self._conn.take(head.length) or None)
        return self._read()

    async def _read(self) -> AsyncIterator[bytes]:
        head, limit, taken = self._head, self._limit, 0
        if limit is not None and head.framing == Framing.LENGTH and head.length > limit:
            raise ResponseTooLarge(limit, self._request)  # announced: nothing of it is read
        if head.framing == Framing.LENGTH:
            body = self._by_length(head.length)
        elif head.framing == Framing.CHUNKED:
            body = self._chunked()
        else:
            body = self._until_close()
        async for chunk in body:
            taken += len(chunk)
            if limit is not None and taken > limit:
                raise ResponseTooLarge(limit, self._request)
            yield chunk
        self._complete = True

    async def _wait(self) -> None:
        await self._conn.wait_data(self._timeout, self._request, self._deadline)

    async def _by_length(self, remaining: int) -> AsyncIterator[bytes]:
        conn = self._conn
        expected = remaining
        while remaining > 0:
            if conn.buf:
                chunk = conn.take(remaining)
                remaining -= len(chunk)
                yield chunk
                continue
            if conn.eof:
                raise conn.read_failure(
                    self._request,
                    "peer closed connection without sending complete message body: "
                    f"received {expected - remaining} bytes, expected {expected}",
                )
            await self._wait()

    async def _line(self) -> bytes:
        conn = self._conn
        start = 0
        while True:
            line = conn.take_until(b"\r\n", start)
            if line is not None:
                return line
            if len(conn.buf) > MAX_CHUNK_LINE_BYTES:
                raise httpx.RemoteProtocolError("chunk header too long", request=self._request)
            if conn.eof:
                raise conn.read_failure(
                    self._request, "peer closed connection without sending complete chunked body"
                )
            start = max(0, len(conn.buf) - 1)
            await self._wait()

    async def _chunked(self) -> AsyncIterator[bytes]:
        while True:
            size = chunk_size(await self._line(), self._request)
            if size == 0:
                while await self._line():  # trailers, up to the empty line
                    pass
                return
            async for chunk in self._by_length(size):
                yield chunk
            if await self._line():
                raise httpx.RemoteProtocolError("missing CRLF after chunk", request=self._request)

    async def _until_close(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.buf:
                yield conn.take()
                continue
            if conn.eof:
                if isinstance(conn.error, OSError):
                    raise conn.read_failure(self._request, "")
                return
            await self._wait()

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        conn = self._conn
        reusable = self._complete and self._head.keep_alive and not conn.eof and not conn.buf
        self._pool.release(conn, reusable)
