"""The engine's connection pool: idle connections kept per origin and reused last-in first-out;
at most ``max_connections`` open over all origins (callers then wait in FIFO order, up to the
pool timeout: :class:`httpx.PoolTimeout`); at most ``max_keepalive_connections`` idle; an idle
connection older than ``keepalive_expiry_s`` or closed by the server is dropped, never used.
When the limit is reached and another origin holds an idle connection, that one is closed to
make room. Connecting failures are ``httpx.ConnectError`` / ``httpx.ConnectTimeout``."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Mapping

import httpx

from worker.providers.engine.connection import Connection
from worker.providers.engine.parse import Origin


class ConnectionPool:
    def __init__(
        self,
        *,
        max_connections: int,
        max_keepalive_connections: int,
        keepalive_expiry_s: float,
        ssl_context: ssl.SSLContext | None,
    ):
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.max_connections = max_connections
        self._max_idle = max(0, max_keepalive_connections)
        self._expiry = keepalive_expiry_s
        self._ssl = ssl_context
        self.total = 0  # open or connecting connections, plus slots handed to waiters
        self._idle: dict[Origin, dict[Connection, None]] = {}  # insertion order = age
        self.idle_count = 0
        self._waiters: deque[tuple[Origin, asyncio.Future[Connection | None]]] = deque()
        self.closed = False
        self._busy: set[Connection] = set()

    def take_idle(self, origin: Origin) -> Connection | None:
        """A warm connection to ``origin``, taken at once, or None."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn, _ = idle.popitem()  # the most recently used
            conn.idle = False
            self.idle_count -= 1
            if conn.dead or now - conn.idle_since > self._expiry:
                self._discard(conn)
                continue
            self._expire_idle(now)
            self._busy.add(conn)
            return conn
        return None

    async def acquire(
        self,
        origin: Origin,
        timeouts: Mapping[str, float | None],
        request: httpx.Request | None,
    ) -> Connection:
        """A connection to ``origin``: warm, handed over by a caller done with one, or new."""
        while True:
            warm = self.take_idle(origin)
            if warm is not None:
                return warm
            if self.total < self.max_connections or self._free_other_idle(origin):
                self.total += 1
                break
            handed = await self._wait_for_slot(origin, timeouts.get("pool"), request)
            if handed is None:
                break  # a free slot, already counted for us
            if handed.dead:  # closed by the server on its way over: nothing was sent
                self._discard(handed)
                continue
            self._busy.add(handed)
            return handed
        # a slot is ours (counted in total): open a connection for it
        try:
            conn = await self._connect(origin, timeouts.get("connect"), request)
        except BaseException:
            self.total -= 1
            self._slot_freed()
            raise
        self._busy.add(conn)
        return conn

    async def _wait_for_slot(
        self, origin: Origin, timeout_s: float | None, request: httpx.Request | None
    ) -> Connection | None:
        """Wait for a connection of ``origin`` handed over, or for a free slot (None)."""
        fut: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        entry = (origin, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout_s):
                return await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                got = fut.result()  # handed over just as we gave up: give it back
                if got is None:
                    self.total -= 1
                    self._slot_freed()
                else:
                    self._busy.add(got)
                    self.release(got, True)
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
        self, origin: Origin, timeout_s: float | None, request: httpx.Request | None
    ) -> Connection:
        loop = asyncio.get_running_loop()
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
                    lambda: Connection(origin, loop, self._forget_idle),
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

    def release(self, conn: Connection, reusable: bool) -> None:
        """Take a connection back after an exchange (reusable: keep it warm)."""
        self._busy.discard(conn)
        if not reusable or self.closed or conn.dead:
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
        if self.idle_count >= self._max_idle:
            self._discard(conn)
            return
        conn.idle = True
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(conn.origin, {})[conn] = None
        self.idle_count += 1

    def _discard(self, conn: Connection) -> None:
        conn.abort() if conn.error is not None else conn.close()
        self.total -= 1
        self._slot_freed()

    def _slot_freed(self) -> None:
        waiters = self._waiters
        while waiters:
            _, fut = waiters.popleft()
            if not fut.done():
                self.total += 1
                fut.set_result(None)
                return

    def _forget_idle(self, conn: Connection) -> None:
        """The server closed an idle connection."""
        idle = self._idle.get(conn.origin)
        if idle is not None and conn in idle:
            del idle[conn]
            conn.idle = False
            self.idle_count -= 1
            self.total -= 1
            self._slot_freed()

    def _expire_idle(self, now: float) -> None:
        for idle in self._idle.values():
            while idle:
                oldest = next(iter(idle))
                if now - oldest.idle_since <= self._expiry:
                    break
                del idle[oldest]
                oldest.idle = False
                self.idle_count -= 1
                self._discard(oldest)

    def _free_other_idle(self, origin: Origin) -> bool:
        """At the limit: close the oldest idle connection of another origin to make room."""
        if not self.idle_count:
            return False
        for other, idle in self._idle.items():
            if other != origin and idle:
                oldest = next(iter(idle))
                del idle[oldest]
                oldest.idle = False
                self.idle_count -= 1
                oldest.close()
                self.total -= 1  # the caller takes the slot
                return True
        return False

    async def aclose(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.idle = False
                conn.close()
                self.total -= 1
            idle.clear()
        self.idle_count = 0
        for conn in list(self._busy):
            conn.abort()
        self._busy.clear()
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.cancel()
