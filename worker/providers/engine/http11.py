"""A lean HTTP/1.1 transport for ``httpx.AsyncClient``, on plain asyncio.

Why: profiling ``bench/provider_bench.py`` showed most of the client's CPU in httpcore's pool
(``_assign_requests_to_connections`` re-scans, and ``has_expired`` polls the socket of, every
connection on every request event) and in the anyio/h11 layers under it: ~3 ms of CPU per call.
This transport keeps ``httpx.AsyncClient`` as the API (URL merging, headers, auth, hooks,
decoding all stay httpx's) and replaces only what sits under ``handle_async_request``.

    client = httpx.AsyncClient(transport=HttpEngine(max_connections=512))

Behaviour:

- One pool per transport, idle connections kept per origin (scheme, host, port) and reused
  last-in first-out; at most ``max_connections`` open over all origins (callers then wait in
  FIFO order up to the pool timeout: :class:`httpx.PoolTimeout`); at most
  ``max_keepalive_connections`` idle; an idle connection older than ``keepalive_expiry_s`` or
  closed by the server is dropped, never used.
- One request in flight per connection (no pipelining).
- Response bodies framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or the server
  closing; ``HEAD``, 1xx, 204 and 304 answers have none; ``Connection: close`` (or HTTP/1.0
  without keep-alive) ends the connection after the answer. Bodies stream to httpx.
- Timeouts from ``request.extensions["timeout"]`` as in httpcore: ``connect`` (TCP + TLS),
  ``write`` (per blocked write), ``read`` (per wait for bytes), ``pool`` (per wait for a slot).
- https through one shared :class:`ssl.SSLContext` (``httpx.create_ssl_context()`` by default).
- Failures are httpx exceptions: ``ConnectError``/``ConnectTimeout``, ``WriteError``/
  ``WriteTimeout``, ``ReadError``/``ReadTimeout``, ``RemoteProtocolError``,
  ``LocalProtocolError``, ``PoolTimeout``, ``UnsupportedProtocol``; so callers map them as they
  would httpcore's.
- Stale connections: an idle connection seen closed before use is discarded (nothing was sent).
  A *reused* connection that fails before any byte of the answer arrives is retried once on a new
  connection only for idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) with an
  in-memory body; a POST that may have reached the server is never re-sent here.

Not supported: HTTP/2, proxies, ``Upgrade``/101, pipelining.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Final

import httpx

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_CHUNK_LINE_BYTES: Final = 4 * 1024
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}

Origin = tuple[bytes, bytes, int]

_LENGTH, _CHUNKED, _UNTIL_CLOSE, _EMPTY = 0, 1, 2, 3


class _Stale(Exception):
    """A reused connection failed before any byte of the answer: safe to retry (idempotent)."""


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; the transport's coroutines read its buffer."""

    __slots__ = (
        "_drain",
        "_loop",
        "_pool",
        "buf",
        "closed",
        "eof",
        "error",
        "idle",
        "idle_since",
        "origin",
        "paused",
        "received",
        "transport",
        "used",
        "waiter",
    )

    def __init__(self, origin: Origin, pool: HttpEngine, loop: asyncio.AbstractEventLoop):
        self.origin = origin
        self._pool = pool
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self.eof = False
        self.closed = False
        self.paused = False
        self.error: BaseException | None = None
        self.idle = False
        self.idle_since = 0.0
        self.received = 0  # bytes of the current answer seen so far
        self.used = 0  # requests started on this connection

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.received += len(data)
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
        self._wake_drain()
        if self.idle:
            self._pool._forget_idle(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_drain()

    # -- helpers for the transport -----------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake_drain(self) -> None:
        drain = self._drain
        if drain is not None:
            self._drain = None
            if not drain.done():
                drain.set_result(None)

    async def wait_data(self, timeout_s: float | None) -> None:
        """Wait until more bytes, EOF or loss; TimeoutError after ``timeout`` s of silence."""
        fut = self._loop.create_future()
        self.waiter = fut
        if timeout_s is None:
            await fut
            return
        handle = self._loop.call_later(timeout_s, _expire, fut)
        try:
            await fut
        finally:
            handle.cancel()

    async def drain(self, timeout_s: float | None) -> None:
        while self.paused and not self.closed:
            fut = self._loop.create_future()
            self._drain = fut
            if timeout_s is None:
                await fut
                continue
            handle = self._loop.call_later(timeout_s, _expire, fut)
            try:
                await fut
            finally:
                handle.cancel()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _read_failure(
    conn: _Connection, request: httpx.Request | None, what: str
) -> httpx.TransportError:
    if isinstance(conn.error, OSError):
        return httpx.ReadError(f"{type(conn.error).__name__}: {conn.error}", request=request)
    return httpx.RemoteProtocolError(what, request=request)


async def _wait(
    conn: _Connection,
    timeout_s: float | None,
    request: httpx.Request | None,
    deadline: float | None = None,
) -> None:
    """Wait for bytes: httpx.ReadTimeout after ``timeout_s`` of silence; a bare TimeoutError
    when the exchange's ``deadline`` (loop time, :meth:`HttpEngine.round_trip`) comes first."""
    if deadline is not None:
        left = deadline - conn._loop.time()
        if left <= 0:
            raise TimeoutError
        if timeout_s is None or left < timeout_s:
            await conn.wait_data(left)
            return
    try:
        await conn.wait_data(timeout_s)
    except TimeoutError:
        raise httpx.ReadTimeout("timed out waiting for the server", request=request) from None


class _Head:
    __slots__ = ("headers", "keep_alive", "length", "mode", "reason", "status", "version")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.version = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.mode = _UNTIL_CLOSE
        self.length = 0
        self.keep_alive = False


def _parse_head(raw: bytes, method: str, request: httpx.Request | None) -> _Head:
    lines = raw.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}", request=request)
    head = _Head()
    head.status = int(code)
    head.reason = reason
    head.version = version
    headers = head.headers
    length: int | None = None
    chunked = False
    transfer_encoding = False
    connection = b""
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):  # obsolete line folding
            if not headers:
                raise httpx.RemoteProtocolError("folded first header line", request=request)
            name, value = headers.pop()
            headers.append((name, value + b" " + line.strip(b" \t")))
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1:] in (b" ", b"\t"):
            raise httpx.RemoteProtocolError(f"malformed header line {line[:80]!r}", request=request)
        value = value.strip(b" \t")
        headers.append((name, value))
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-length":
            for item in value.split(b","):
                item = item.strip()
                if not item.isdigit() or (length is not None and int(item) != length):
                    raise httpx.RemoteProtocolError("bad Content-Length", request=request)
                length = int(item)
        elif lname == b"transfer-encoding":
            transfer_encoding = True
            chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif lname == b"connection":
            connection += b"," + value.lower()
    tokens = {t.strip() for t in connection.split(b",")}
    head.keep_alive = b"close" not in tokens if version == b"HTTP/1.1" else b"keep-alive" in tokens
    status = head.status
    if method == "HEAD" or status < 200 or status in (204, 304):
        head.mode = _EMPTY
    elif transfer_encoding:
        head.mode = _CHUNKED if chunked else _UNTIL_CLOSE
    elif length is not None:
        head.mode = _LENGTH
        head.length = length
    else:
        head.mode = _UNTIL_CLOSE
    if head.mode == _UNTIL_CLOSE:
        head.keep_alive = False
    return head


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


class _ResponseStream(httpx.AsyncByteStream):
    """The answer's body, read from the connection as httpx iterates; ``aclose`` hands the
    connection back to the pool (reusable only when the body was read to its end)."""

    __slots__ = (
        "_complete", "_conn", "_deadline", "_done", "_head", "_pool", "_request", "_timeout",
    )  # fmt: skip

    def __init__(
        self,
        pool: HttpEngine,
        conn: _Connection,
        head: _Head,
        request: httpx.Request | None,
        read_timeout: float | None,
        deadline: float | None = None,
    ):
        self._deadline = deadline
        self._pool = pool
        self._conn = conn
        self._head = head
        self._request = request
        self._timeout = read_timeout
        self._complete = head.mode == _EMPTY
        self._done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._complete or self._done:
            return _Once(None)
        head, buf = self._head, self._conn.buf
        if head.mode == _LENGTH and len(buf) >= head.length:
            # the common case: the whole body came with the head (no generator, no wait)
            n = head.length
            if len(buf) == n:
                body = bytes(buf)
                buf.clear()
            else:
                body = bytes(buf[:n])
                del buf[:n]
            self._complete = True
            return _Once(body or None)
        return self._read()

    async def _read(self) -> AsyncIterator[bytes]:
        mode = self._head.mode
        if mode == _LENGTH:
            async for chunk in self._by_length(self._head.length):
                yield chunk
        elif mode == _CHUNKED:
            async for chunk in self._chunked():
                yield chunk
        else:
            async for chunk in self._until_close():
                yield chunk
        self._complete = True

    async def _by_length(self, remaining: int) -> AsyncIterator[bytes]:
        conn, request = self._conn, self._request
        expected = remaining
        while remaining > 0:
            buf = conn.buf
            if buf:
                if len(buf) <= remaining:
                    chunk = bytes(buf)
                    buf.clear()
                else:
                    chunk = bytes(buf[:remaining])
                    del buf[:remaining]
                remaining -= len(chunk)
                yield chunk
                continue
            if conn.eof:
                raise _read_failure(
                    conn,
                    request,
                    "peer closed connection without sending complete message body: "
                    f"received {expected - remaining} bytes, expected {expected}",
                )
            await _wait(conn, self._timeout, request, self._deadline)

    async def _line(self) -> bytes:
        conn, request = self._conn, self._request
        start = 0
        while True:
            buf = conn.buf
            end = buf.find(b"\r\n", start)
            if end >= 0:
                line = bytes(buf[:end])
                del buf[: end + 2]
                return line
            if len(buf) > MAX_CHUNK_LINE_BYTES:
                raise httpx.RemoteProtocolError("chunk header too long", request=request)
            if conn.eof:
                raise _read_failure(
                    conn, request, "peer closed connection without sending complete chunked body"
                )
            start = max(0, len(buf) - 1)
            await _wait(conn, self._timeout, request, self._deadline)

    async def _chunked(self) -> AsyncIterator[bytes]:
        request = self._request
        while True:
            size_text = (await self._line()).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise httpx.RemoteProtocolError(
                    f"bad chunk size {size_text[:20]!r}", request=request
                ) from None
            if size < 0:
                raise httpx.RemoteProtocolError("negative chunk size", request=request)
            if size == 0:
                while await self._line():  # trailers, up to the empty line
                    pass
                return
            async for chunk in self._by_length(size):
                yield chunk
            if await self._line():
                raise httpx.RemoteProtocolError("missing CRLF after chunk", request=request)

    async def _until_close(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            buf = conn.buf
            if buf:
                chunk = bytes(buf)
                buf.clear()
                yield chunk
                continue
            if conn.eof:
                if isinstance(conn.error, OSError):
                    raise _read_failure(conn, self._request, "")
                return
            await _wait(conn, self._timeout, self._request, self._deadline)

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        conn = self._conn
        reusable = self._complete and self._head.keep_alive and not conn.eof and not conn.buf
        self._pool._release(conn, reusable)


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
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self._max = max_connections
        self._max_idle = max(0, max_keepalive_connections)
        self._expiry = keepalive_expiry_s
        self._ssl = ssl_context
        self._total = 0  # open or connecting connections, plus slots handed to waiters
        self._idle: dict[Origin, dict[_Connection, None]] = {}  # insertion order = age
        self._idle_count = 0
        self._waiters: deque[tuple[Origin, asyncio.Future[_Connection | None]]] = deque()
        self._closed = False
        self._busy: set[_Connection] = set()

    # -- introspection -----------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        return self._total

    @property
    def idle_connections(self) -> int:
        return self._idle_count

    def __repr__(self) -> str:
        return (
            f"HttpEngine(max_connections={self._max}, open={self._total}, idle={self._idle_count})"
        )

    # -- the one method httpx calls ----------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        origin = origin_of(request.url, request)
        timeouts = request.extensions.get("timeout") or {}
        head, chunked, close = _encode_head(request)
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:
            body = None
        retry_allowed = request.method in IDEMPOTENT and body is not None
        while True:
            conn = await self._acquire(origin, timeouts, request)
            conn.used += 1
            try:
                return await self._exchange(conn, request, head, body, chunked, close, timeouts)
            except _Stale:
                self._release(conn, False)
                if not retry_allowed:
                    raise _read_failure(
                        conn, request, "Server disconnected without sending a response."
                    ) from None
                retry_allowed = False
                continue
            except BaseException:
                self._release(conn, False)
                raise

    async def _exchange(
        self,
        conn: _Connection,
        request: httpx.Request,
        head: bytes,
        body: bytes | None,
        chunked: bool,
        close: bool,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        transport = conn.transport
        assert transport is not None
        conn.received = 0
        conn.buf.clear()
        write_timeout = timeouts.get("write")
        if body is not None:
            transport.write(head + body)
        else:
            transport.write(head)
            stream = request.stream
            assert isinstance(stream, httpx.AsyncByteStream)
            async for part in stream:
                if not part:
                    continue
                await self._drain(conn, write_timeout, request)
                if chunked:
                    transport.write(b"%x\r\n%b\r\n" % (len(part), part))
                else:
                    transport.write(part)
            if chunked:
                transport.write(b"0\r\n\r\n")
        await self._drain(conn, write_timeout, request)

        read_timeout = timeouts.get("read")
        parsed = await self._final_head(conn, request.method, request, read_timeout)
        if close:
            parsed.keep_alive = False
        return httpx.Response(
            status_code=parsed.status,
            headers=parsed.headers,
            stream=_ResponseStream(self, conn, parsed, request, read_timeout),
            extensions={"http_version": parsed.version, "reason_phrase": parsed.reason},
        )

    async def _final_head(
        self,
        conn: _Connection,
        method: str,
        request: httpx.Request | None,
        read_timeout: float | None,
        deadline: float | None = None,
    ) -> _Head:
        """The head of the final answer (1xx interim answers skipped)."""
        while True:
            parsed = await self._read_head(conn, method, request, read_timeout, deadline)
            if parsed.status >= 200:
                return parsed
            if parsed.status == 101:
                raise httpx.RemoteProtocolError(
                    "protocol upgrade is not supported", request=request
                )

    # -- without httpx's request and response objects ----------------------------------------

    async def round_trip(
        self,
        origin: Origin,
        method: str,
        message: bytes,
        timeouts: Mapping[str, float | None],
        *,
        close: bool = False,
        deadline: float | None = None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One exchange of a request already encoded whole (``message``: head from
        :func:`encode_request_head`, the per-request headers, ``Content-Length``, the blank line
        and the body). Returns the status, the raw headers and the whole body as received
        (content-encoding not undone). Same pool, timeouts, stale-connection retry (idempotent
        methods only) and httpx exceptions as :meth:`handle_async_request`, without building an
        ``httpx.Request`` and ``httpx.Response`` per call; the exceptions carry no request.

        ``deadline`` (event-loop time) bounds the whole exchange as an ``asyncio.timeout_at``
        around it would, raising TimeoutError, but costs no timer of its own when a warm
        connection is free: it only shortens the read waits (which arm one timer anyway)."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        retry_allowed = method in IDEMPOTENT
        write_timeout = timeouts.get("write")
        read_timeout = timeouts.get("read")
        while True:
            conn = self._idle_connection(origin)
            if conn is None:
                async with asyncio.timeout_at(deadline):
                    conn = await self._acquire(origin, timeouts, None)
            conn.used += 1
            try:
                transport = conn.transport
                assert transport is not None
                conn.received = 0
                conn.buf.clear()
                transport.write(message)
                if conn.paused:
                    async with asyncio.timeout_at(deadline):
                        await self._drain(conn, write_timeout, None)
                parsed = await self._final_head(conn, method, None, read_timeout, deadline)
            except _Stale:
                self._release(conn, False)
                if not retry_allowed:
                    raise _read_failure(
                        conn, None, "Server disconnected without sending a response."
                    ) from None
                retry_allowed = False
                continue
            except BaseException:
                self._release(conn, False)
                raise
            break
        if close:
            parsed.keep_alive = False
        buf = conn.buf
        if parsed.mode == _LENGTH and len(buf) == parsed.length:
            # the common case: the whole body came with the head
            body = bytes(buf)
            buf.clear()
            self._release(conn, parsed.keep_alive and not conn.eof)
            return parsed.status, parsed.headers, body
        stream = _ResponseStream(self, conn, parsed, None, read_timeout, deadline)
        try:
            chunks = [chunk async for chunk in stream]
        finally:
            await stream.aclose()
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return parsed.status, parsed.headers, body

    async def _drain(
        self, conn: _Connection, timeout_s: float | None, request: httpx.Request | None
    ) -> None:
        if not conn.paused:
            return
        try:
            await conn.drain(timeout_s)
        except TimeoutError:
            raise httpx.WriteTimeout("timed out sending the request", request=request) from None

    async def _read_head(
        self,
        conn: _Connection,
        method: str,
        request: httpx.Request | None,
        timeout_s: float | None,
        deadline: float | None = None,
    ) -> _Head:
        start = 0
        while True:
            buf = conn.buf
            end = buf.find(b"\r\n\r\n", start)
            if end >= 0:
                raw = bytes(buf[:end])
                del buf[: end + 4]
                return _parse_head(raw, method, request)
            if len(buf) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("response head too large", request=request)
            if conn.eof:
                if conn.used > 1 and conn.received == 0:
                    raise _Stale()
                raise _read_failure(
                    conn, request, "Server disconnected without sending a response."
                )
            start = max(0, len(buf) - 3)
            await _wait(conn, timeout_s, request, deadline)

    # -- pool --------------------------------------------------------------------------------

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        """A warm connection to ``origin``, taken from the pool at once, or None."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn, _ = idle.popitem()  # the most recently used
            conn.idle = False
            self._idle_count -= 1
            if _dead(conn) or now - conn.idle_since > self._expiry:
                self._discard(conn)
                continue
            self._expire_idle(now)
            self._busy.add(conn)
            return conn
        return None

    async def _acquire(
        self,
        origin: Origin,
        timeouts: Mapping[str, float | None],
        request: httpx.Request | None,
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        while True:
            warm = self._idle_connection(origin)
            if warm is not None:
                return warm
            if self._total < self._max or self._free_other_idle(origin):
                self._total += 1
                break
            handed = await self._wait_for_slot(origin, timeouts.get("pool"), request)
            if handed is None:
                break  # a free slot, already counted for us
            if _dead(handed):  # closed by the server on its way over: nothing was sent
                self._discard(handed)
                continue
            self._busy.add(handed)
            return handed
        # a slot is ours (counted in _total): open a connection for it
        try:
            conn = await self._connect(origin, timeouts.get("connect"), request, loop)
        except BaseException:
            self._total -= 1
            self._slot_freed()
            raise
        self._busy.add(conn)
        return conn

    async def _wait_for_slot(
        self, origin: Origin, timeout_s: float | None, request: httpx.Request | None
    ) -> _Connection | None:
        """Wait for a connection of ``origin`` handed over, or for a free slot (None)."""
        fut: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        entry = (origin, fut)
        self._waiters.append(entry)
        try:
            if timeout_s is None:
                return await fut
            async with asyncio.timeout(timeout_s):
                return await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                got = fut.result()  # handed over just as we gave up: give it back
                if got is None:
                    self._total -= 1
                    self._slot_freed()
                else:
                    self._busy.add(got)
                    self._release(got, True)
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout(
                    "no connection became free within the pool timeout", request=request
                ) from None
            raise

    async def _connect(
        self,
        origin: Origin,
        timeout_s: float | None,
        request: httpx.Request | None,
        loop: asyncio.AbstractEventLoop,
    ) -> _Connection:
        scheme, raw_host, port = origin
        host = raw_host.decode("ascii")
        tls: ssl.SSLContext | None = None
        server_hostname: str | None = None
        if scheme == b"https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            tls = self._ssl
            sni = request.extensions.get("sni_hostname") if request is not None else None
            server_hostname = sni.decode("ascii") if isinstance(sni, bytes) else (sni or host)
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin, self, loop),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=server_hostname,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"timed out connecting to {host}:{port}", request=request
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}", request=request) from None
        return conn

    def _release(self, conn: _Connection, reusable: bool) -> None:
        """Take a connection back after an exchange (reusable: keep it warm)."""
        self._busy.discard(conn)
        if not reusable or self._closed or _dead(conn):
            self._discard(conn)
            return
        waiters = self._waiters
        while waiters:
            origin, fut = waiters.popleft()
            if fut.done():
                continue
            if origin == conn.origin:
                self._busy.add(conn)
                fut.set_result(conn)
            else:  # the slot goes to a caller of another origin
                conn.close()
                fut.set_result(None)
            return
        if self._idle_count >= self._max_idle:
            self._discard(conn)
            return
        conn.idle = True
        conn.idle_since = conn._loop.time()
        self._idle.setdefault(conn.origin, {})[conn] = None
        self._idle_count += 1

    def _discard(self, conn: _Connection) -> None:
        conn.abort() if conn.error is not None else conn.close()
        self._total -= 1
        self._slot_freed()

    def _slot_freed(self) -> None:
        waiters = self._waiters
        while waiters:
            _, fut = waiters.popleft()
            if not fut.done():
                self._total += 1
                fut.set_result(None)
                return

    def _forget_idle(self, conn: _Connection) -> None:
        """The server closed an idle connection."""
        idle = self._idle.get(conn.origin)
        if idle is not None and conn in idle:
            del idle[conn]
            conn.idle = False
            self._idle_count -= 1
            self._total -= 1
            self._slot_freed()

    def _expire_idle(self, now: float) -> None:
        for idle in self._idle.values():
            while idle:
                oldest = next(iter(idle))
                if now - oldest.idle_since <= self._expiry:
                    break
                del idle[oldest]
                oldest.idle = False
                self._idle_count -= 1
                self._discard(oldest)

    def _free_other_idle(self, origin: Origin) -> bool:
        """At the limit: close the oldest idle connection of another origin to make room."""
        if not self._idle_count:
            return False
        for other, idle in self._idle.items():
            if other != origin and idle:
                oldest = next(iter(idle))
                del idle[oldest]
                oldest.idle = False
                self._idle_count -= 1
                oldest.close()
                self._total -= 1  # the caller takes the slot
                return True
        return False

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.idle = False
                conn.close()
                self._total -= 1
            idle.clear()
        self._idle_count = 0
        for conn in list(self._busy):
            conn.abort()
        self._busy.clear()
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.cancel()


def _dead(conn: _Connection) -> bool:
    """Closed, half-closed or holding unasked-for bytes: never send on it."""
    return conn.closed or conn.eof or bool(conn.buf)


def origin_of(url: httpx.URL, request: httpx.Request | None = None) -> Origin:
    """(scheme, host, port) of an absolute http(s) URL, as the pool keys connections."""
    scheme = url.raw_scheme
    default_port = DEFAULT_PORTS.get(scheme)
    if default_port is None:
        raise httpx.UnsupportedProtocol(
            f"unsupported URL scheme {scheme.decode('ascii', 'replace')!r}", request=request
        )
    if not url.raw_host:
        raise httpx.UnsupportedProtocol("request URL has no host", request=request)
    return (scheme, url.raw_host, url.port or default_port)


def header_line(name: bytes, value: bytes) -> bytes:
    """``name: value\\r\\n``; LocalProtocolError for a CR or LF in either (as httpx sends)."""
    if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
        raise httpx.LocalProtocolError("illegal header value")
    return name + b": " + value + b"\r\n"


def encode_request_head(
    method: str, url: httpx.URL, headers: Sequence[tuple[bytes, bytes]]
) -> tuple[bytes, bool]:
    """The request line, ``Host`` and ``headers`` as ``httpx.Request`` + this transport would
    write them, without the blank line (callers append per-request headers, ``Content-Length``
    and the body; see :meth:`HttpEngine.round_trip`); and whether they ask the server to
    close the connection."""
    parts = [method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
    close = False
    if not any(name.lower() == b"host" for name, _ in headers):
        parts.append(header_line(b"Host", url.netloc))
    for name, value in headers:
        parts.append(header_line(name, value))
        lname = name.lower()
        if lname == b"connection":
            close = b"close" in value.lower()
        elif lname in (b"content-length", b"transfer-encoding"):
            raise ValueError(f"{name.decode()} is set per request")
    return b"".join(parts), close


def _encode_head(request: httpx.Request) -> tuple[bytes, bool, bool]:
    """The request line and headers; whether the body goes chunked; whether the request asks
    the server to close the connection."""
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    chunked = close = False
    for name, value in request.headers.raw:
        if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
            raise httpx.LocalProtocolError("illegal header value", request=request)
        parts += (name, b": ", value, b"\r\n")
        if len(name) in (10, 17):
            lname = name.lower()
            if lname == b"connection":
                close = b"close" in value.lower()
            elif lname == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
    parts.append(b"\r\n")
    return b"".join(parts), chunked, close


__all__ = ["HttpEngine", "Origin", "encode_request_head", "header_line", "origin_of"]
