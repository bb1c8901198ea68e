"""A small asyncio HTTP/1.1 server (keep-alive, Content-Length bodies) for the simulator.

No server library is installed in this project and httpx is only a client, so this is a
protocol-level server: one ``asyncio.Protocol`` per connection, requests on a connection
handled one at a time (HTTP/1.1 clients such as httpx do not pipeline), each in its own task so
thousands of slow requests wait on timers, not threads. A handler returning ``None`` resets the
connection (RST), which is how the simulator injects connection resets.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

MAX_HEADER_BYTES = 64 * 1024


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse | None]]


def _reason(status: int) -> str:
    if status == 529:
        return "Site Overloaded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def encode_response(resp: HttpResponse, keep_alive: bool) -> bytes:
    head = [
        f"HTTP/1.1 {resp.status} {_reason(resp.status)}",
        f"content-type: {resp.content_type}",
        f"content-length: {len(resp.body)}",
        "connection: keep-alive" if keep_alive else "connection: close",
    ]
    head.extend(f"{k}: {v}" for k, v in resp.headers)
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler, connections: set[_Connection]):
        self._handler = handler
        self._connections = connections
        self._buf = bytearray()
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._next()

    def _next(self) -> None:
        transport = self._transport
        if transport is None:
            return
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEADER_BYTES:
                self._fail(431)
            return
        try:
            lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
        except ValueError:
            self._fail(400)
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._fail(411)
            return
        total = end + 4 + length
        if len(self._buf) < total:
            return
        body = bytes(self._buf[end + 4 : total])
        del self._buf[:total]
        path, _, query = target.partition("?")
        request = HttpRequest(method.upper(), path, query, headers, body)
        keep_alive = headers.get("connection", "").lower() != "close"
        self._busy = True
        self._task = asyncio.get_running_loop().create_task(self._handle(request, keep_alive))

    async def _handle(self, request: HttpRequest, keep_alive: bool) -> None:
        try:
            response = await self._handler(request)
        except Exception:
            response = HttpResponse(
                500, b'{"error":{"message":"simulator bug","type":"server_error"}}'
            )
        transport = self._transport
        if transport is None:
            return
        if response is None:
            self.reset()
            return
        transport.write(encode_response(response, keep_alive))
        self._busy = False
        if not keep_alive:
            transport.close()
            return
        if self._buf:
            self._next()

    def _fail(self, status: int) -> None:
        if self._transport is not None:
            self._transport.write(encode_response(HttpResponse(status), keep_alive=False))
            self._transport.close()

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
        transport = self._transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


class HttpServer:
    def __init__(self, handler: Handler, *, host: str = "127.0.0.1", port: int = 0):
        self._handler = handler
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self._handler, self._connections),
            self._host,
            self._port,
            backlog=4096,
            reuse_address=True,
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._connections):
            conn.reset()
        await self._server.wait_closed()
        self._server = None
