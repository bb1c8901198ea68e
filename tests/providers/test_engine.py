"""HttpEngine over real sockets: the simulator, and small local servers that misbehave on
purpose (close after the answer, chunked and close-delimited bodies, silence, resets, refusals).
Servers count the connections they accept, so keep-alive reuse is checked where it happens."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.providers.conftest import ENV
from worker.config.models import WEAK_MODEL, simulator_catalogue
from worker.providers import (
    AllModelsFailedError,
    ClientSettings,
    CompletionRequest,
    HttpSettings,
    ModelClient,
    ProviderConnectionError,
    ProviderTimeoutError,
    RetryPolicy,
)
from worker.providers.engine.http11 import HttpEngine
from worker.providers.http import default_transport, make_client
from worker.sim import Fault, SimConfig, Simulator

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """A raw asyncio TCP server on 127.0.0.1; ``handler(reader, writer, index)`` per connection
    (``index`` counts accepted connections from 0)."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None):
        self._handler = handler
        self._ssl = ssl_context
        self.connections = 0
        self.closed = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds (checked whenever a request or close is seen)."""
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handler(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self.closed += 1
            self._changed.set()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head + Content-Length or chunked body), recorded; None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lower = head.lower()
        body = b""
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            for line in lower.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    body = await reader.readexactly(int(line.split(b":")[1]))
        self.requests.append(head + body)
        self._changed.set()
        return head + body


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (len(body), extra, body)


def keep_alive(server_ref: list[Server], response: bytes = ok()) -> Handler:
    """Answer every request on the connection with ``response``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await server_ref[0].read_request(reader) is not None:
            writer.write(response)
            await writer.drain()

    return handler


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def serve(handler_factory: Callable[[list[Server]], Handler]) -> Server:
    ref: list[Server] = []
    server = Server(handler_factory(ref))
    ref.append(server)
    return server


def client(base_url: str, **kwargs) -> tuple[httpx.AsyncClient, HttpEngine]:
    timeout = kwargs.pop("timeout", httpx.Timeout(5.0))
    transport = HttpEngine(**kwargs)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout), transport


# -- keep-alive and framing ------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection():
    async with await serve(keep_alive) as server:
        http, transport = client(server.url)
        async with http:
            for i in range(20):
                response = await http.post("/echo", content=b"x" * i)
                assert response.status_code == 200
                assert response.content == b"hello"
            assert transport.idle_connections == 1
        assert server.connections == 1
        assert len(server.requests) == 20
        assert server.requests[5].endswith(b"\r\n\r\nxxxxx")


async def test_connection_close_header_opens_a_new_connection_each_time():
    async def handler(reader, writer, _):
        await server.read_request(reader)
        writer.write(ok(b"bye", b"connection: close\r\n"))
        await writer.drain()

    async with Server(handler) as server:
        http, transport = client(server.url)
        async with http:
            for _ in range(3):
                assert (await http.get("/")).content == b"bye"
            assert transport.idle_connections == 0
        assert server.connections == 3


async def test_request_connection_close_is_honoured():
    async with await serve(keep_alive) as server:
        http, transport = client(server.url)
        async with http:
            for _ in range(2):
                response = await http.get("/", headers={"connection": "close"})
                assert response.content == b"hello"
            assert transport.idle_connections == 0
        assert server.connections == 2


async def test_server_closing_an_idle_connection_is_noticed_before_reuse():
    closed = asyncio.Event()

    async def handler(reader, writer, _):
        await server.read_request(reader)
        writer.write(ok())  # keep-alive promised, then closed anyway
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    async with Server(handler) as server:
        http, transport = client(server.url)
        async with http:
            assert (await http.post("/", content=b"a")).status_code == 200
            await closed.wait()
            while transport.idle_connections:  # noqa: ASYNC110 - the EOF reaches the pool
                await asyncio.sleep(0)  # through the event loop: let it run
            # a POST is safe here: the dead connection was dropped before anything was sent
            assert (await http.post("/", content=b"b")).status_code == 200
        assert server.connections == 2


async def test_chunked_response_with_extensions_and_trailers_then_reuse():
    body = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: yes\r\n\r\n"
    )

    async def handler(reader, writer, _):
        while await server.read_request(reader) is not None:
            for i in range(0, len(body), 7):  # dribble it out in small pieces
                writer.write(body[i : i + 7])
                await writer.drain()

    async with Server(handler) as server:
        http, _ = client(server.url)
        async with http:
            for _ in range(3):
                assert (await http.get("/")).content == b"hello world"
        assert server.connections == 1


async def test_close_delimited_body_is_read_to_eof_and_not_reused():
    async def handler(reader, writer, _):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        writer.write(b"part two")
        await writer.drain()

    async with Server(handler) as server:
        http, transport = client(server.url)
        async with http:
            for _ in range(2):
                assert (await http.get("/")).text == "part one, part two"
            assert transport.idle_connections == 0
        assert server.connections == 2


async def test_large_body_in_many_pieces_and_a_head_split_byte_by_byte():
    payload = bytes(range(256)) * 4096  # 1 MiB
    response = ok(payload)

    async def handler(reader, writer, _):
        while await server.read_request(reader) is not None:
            for byte in response[:40]:
                writer.write(bytes([byte]))
                await writer.drain()
            writer.write(response[40:])
            await writer.drain()

    async with Server(handler) as server:
        http, _ = client(server.url)
        async with http:
            for _ in range(2):
                assert (await http.get("/")).content == payload
        assert server.connections == 1


async def test_a_body_not_taken_is_not_read_off_the_socket():
    # read back-pressure: while the caller holds the stream without reading, the server can
    # only fill the kernel's socket buffers and the engine's bounded one, not the client's memory
    size = 96 * 1024 * 1024
    written = 0

    async def handler(reader, writer, _):
        nonlocal written
        if await server.read_request(reader) is None:
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        piece = b"y" * (256 * 1024)
        while written < size:
            writer.write(piece)
            await writer.drain()
            written += len(piece)

    async with Server(handler) as server:
        http, _ = client(server.url, timeout=httpx.Timeout(30.0))
        async with http, http.stream("GET", "/") as response:
            seen = -1
            while seen != written:  # until the server is stalled by flow control
                seen = written
                await asyncio.sleep(0.3)
            assert written < 48 * 1024 * 1024  # far from the whole body
            total = 0
            async for chunk in response.aiter_raw():
                total += len(chunk)
            assert total == size  # paused and resumed, nothing lost


@pytest.mark.parametrize(
    ("method", "status", "extra"),
    [("HEAD", 200, b"content-length: 1234\r\n"), ("GET", 204, b""), ("GET", 304, b"")],
)
async def test_answers_without_a_body_keep_the_connection(method, status, extra):
    async def handler(reader, writer, _):
        while await server.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 %d X\r\n%b\r\n" % (status, extra))
            await writer.drain()

    async with Server(handler) as server:
        http, _ = client(server.url)
        async with http:
            for _ in range(2):
                response = await http.request(method, "/")
                assert response.status_code == status
                assert response.content == b""
        assert server.connections == 1


async def test_informational_answer_is_skipped():
    async def handler(reader, writer, _):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + ok(b"final"))
        await writer.drain()
        await reader.read()

    async with Server(handler) as server:
        http, _ = client(server.url)
        async with http:
            response = await http.get("/")
            assert (response.status_code, response.content) == (200, b"final")


async def test_streamed_request_body_goes_chunked():
    async def parts():
        yield b"abc"
        yield b""
        yield b"defgh"

    async with await serve(keep_alive) as server:
        http, _ = client(server.url)
        async with http:
            assert (await http.post("/", content=parts())).status_code == 200
            assert (await http.post("/", content=b"plain")).status_code == 200
        head, _, _ = server.requests[0].partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        assert server.requests[0].endswith(b"abcdefgh")
        assert server.requests[1].endswith(b"plain")
        assert server.connections == 1


async def test_response_headers_and_http_version_reach_httpx():
    async with await serve(
        lambda ref: keep_alive(ref, ok(b"{}", b"x-request-id: req_1\r\nset-cookie: a=b\r\n"))
    ) as server:
        http = make_client(server.url, HttpSettings())
        async with http:
            response = await http.get("/")
            assert response.headers["x-request-id"] == "req_1"
            assert response.http_version == "HTTP/1.1"
            assert response.reason_phrase == "OK"
            assert http.cookies.get("a") == "b"  # cookies still extracted when set


# -- failures -> httpx exceptions --------------------------------------------------------------


async def test_silent_server_gives_read_timeout_and_the_connection_is_dropped():
    async def handler(reader, writer, _):
        await server.read_request(reader)
        await reader.read()  # never answers

    async with Server(handler) as server:
        http, transport = client(server.url, timeout=httpx.Timeout(5.0, read=0.05))
        async with http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/")
            assert transport.open_connections == 0


async def test_connect_refused_gives_connect_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    http, transport = client(f"http://127.0.0.1:{port}")
    async with http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/")
        assert transport.open_connections == 0


async def test_reset_mid_body_gives_read_error():
    async def handler(reader, writer, _):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly ten b")
        await writer.drain()
        reset(writer)

    async with Server(handler) as server:
        http, transport = client(server.url)
        async with http:
            with pytest.raises(httpx.ReadError):
                await http.get("/")
            assert transport.open_connections == 0


async def test_clean_close_mid_body_gives_remote_protocol_error():
    async def handler(reader, writer, _):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly ten b")
        await writer.drain()

    async with Server(handler) as server:
        http, _ = client(server.url)
        async with http:
            with pytest.raises(httpx.RemoteProtocolError, match="received 10 bytes"):
                await http.get("/")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_malformed_answers_give_remote_protocol_error(answer):
    async def handler(reader, writer, _):
        await server.read_request(reader)
        writer.write(answer)
        await writer.drain()

    async with Server(handler) as server:
        http, _ = client(server.url)
        async with http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get("/")


async def test_server_closing_without_an_answer_gives_remote_protocol_error():
    async def handler(reader, writer, _):
        await server.read_request(reader)

    async with Server(handler) as server:
        http, _ = client(server.url)
        async with http:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await http.get("/")


async def test_unsupported_scheme():
    http, _ = client("ftp://127.0.0.1:21")
    async with http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("/")


# -- a reused connection that dies before answering ------------------------------------------


def dies_on_second_request(ref: list[Server]) -> Handler:
    """Connection 0 answers its first request, then reads the next and closes silently;
    later connections answer everything."""

    async def handler(reader, writer, index):
        server = ref[0]
        while await server.read_request(reader) is not None:
            if index == 0 and len(server.requests) > 1:
                return
            writer.write(ok())
            await writer.drain()

    return handler


async def test_idempotent_request_on_a_stale_connection_is_retried_once():
    async with await serve(dies_on_second_request) as server:
        http, _ = client(server.url)
        async with http:
            assert (await http.get("/one")).status_code == 200
            assert (await http.get("/two")).status_code == 200
        assert server.connections == 2
        assert [r.split(b" ")[1] for r in server.requests] == [b"/one", b"/two", b"/two"]


async def test_post_on_a_stale_connection_is_never_resent():
    async with await serve(dies_on_second_request) as server:
        http, _ = client(server.url)
        async with http:
            assert (await http.post("/one", content=b"1")).status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                await http.post("/two", content=b"2")
        assert [r.split(b" ")[1] for r in server.requests] == [b"/one", b"/two"]


# -- pool limits -------------------------------------------------------------------------------


def held_until(release: asyncio.Event, ref: list[Server]) -> Handler:
    async def handler(reader, writer, _):
        while await ref[0].read_request(reader) is not None:
            await release.wait()
            writer.write(ok())
            await writer.drain()

    return handler


async def test_pool_limit_gives_pool_timeout_and_the_slot_survives():
    release = asyncio.Event()
    async with await serve(lambda ref: held_until(release, ref)) as server:
        http, transport = client(
            server.url, max_connections=1, timeout=httpx.Timeout(5.0, pool=0.05)
        )
        async with http:
            first = asyncio.create_task(http.get("/first"))
            await server.until(lambda: len(server.requests) == 1)
            with pytest.raises(httpx.PoolTimeout):
                await http.get("/second")
            release.set()
            assert (await first).status_code == 200
            assert (await http.get("/third")).status_code == 200
            assert transport.open_connections == 1
        assert server.connections == 1


async def test_waiters_get_the_connection_handed_over_in_order():
    release = asyncio.Event()
    async with await serve(lambda ref: held_until(release, ref)) as server:
        http, _ = client(server.url, max_connections=2)
        async with http:
            calls = [asyncio.create_task(http.get(f"/{i}")) for i in range(6)]
            await server.until(lambda: len(server.requests) == 2)
            release.set()
            assert [r.status_code for r in await asyncio.gather(*calls)] == [200] * 6
        assert server.connections == 2
        assert len(server.requests) == 6


async def test_cancelled_call_drops_its_connection_and_frees_the_slot():
    release = asyncio.Event()
    async with await serve(lambda ref: held_until(release, ref)) as server:
        http, transport = client(server.url, max_connections=1)
        async with http:
            call = asyncio.create_task(http.get("/slow"))
            await server.until(lambda: len(server.requests) == 1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert transport.open_connections == 0
            release.set()
            assert (await http.get("/next")).status_code == 200
        assert server.connections == 2


async def test_aclose_closes_idle_connections():
    async with await serve(keep_alive) as server:
        http, transport = client(server.url)
        async with http:
            await http.get("/")
        await server.until(lambda: server.closed == 1)
        assert transport.open_connections == 0


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    path = tmp_path_factory.mktemp("tls")
    cert, key = path / "cert.pem", path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_through_the_shared_ssl_context(tls_files):
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    ref: list[Server] = []
    server = Server(keep_alive(ref), ssl_context=server_ctx)
    ref.append(server)
    async with server:
        http, _ = client(server.url, ssl_context=client_ctx)
        async with http:
            for _ in range(3):
                assert (await http.get("/")).content == b"hello"
        assert server.connections == 1
        untrusted, _ = client(server.url, ssl_context=ssl.create_default_context())
        async with untrusted:
            with pytest.raises(httpx.ConnectError):
                await untrusted.get("/")


# -- through the provider layer, against the simulator ---------------------------------------


def test_the_engine_is_the_default_transport():
    assert isinstance(default_transport(HttpSettings()), HttpEngine)


async def test_router_client_against_the_simulator_reuses_connections():
    async with Simulator(SimConfig()) as sim:
        settings = ClientSettings(http=HttpSettings(total_timeout_s=5.0))
        async with ModelClient(simulator_catalogue(sim.base_url), settings, env=ENV) as rc:
            for i in range(10):
                routed = await rc.complete(CompletionRequest.from_prompt(f"q{i}"), [WEAK_MODEL])
                assert routed.result.text
                assert routed.result.usage.input_tokens > 0
            assert sim._server.open_connections == 1
            results = await asyncio.gather(
                *(
                    rc.complete(CompletionRequest.from_prompt(f"p{i}"), [WEAK_MODEL])
                    for i in range(50)
                )
            )
            assert len(results) == 50
        assert sim.stats.requests == 60


async def test_simulator_faults_map_to_provider_errors():
    # each fault counts the calls it is asked about: the timeout's first is the second call
    config = SimConfig(faults=(Fault.parse("reset@1"), Fault.parse("timeout@1")))
    async with Simulator(config) as sim:
        settings = ClientSettings(
            http=HttpSettings(total_timeout_s=0.3),
            retry=RetryPolicy(max_retries=0),
        )
        async with ModelClient(simulator_catalogue(sim.base_url), settings, env=ENV) as rc:
            with pytest.raises(AllModelsFailedError) as reset_err:
                await rc.complete(CompletionRequest.from_prompt("a"), [WEAK_MODEL])
            assert isinstance(reset_err.value.last_error, ProviderConnectionError)
            assert not isinstance(reset_err.value.last_error, ProviderTimeoutError)
            with pytest.raises(AllModelsFailedError) as timeout_err:
                await rc.complete(CompletionRequest.from_prompt("b"), [WEAK_MODEL])
            assert isinstance(timeout_err.value.last_error, ProviderTimeoutError)
            routed = await rc.complete(CompletionRequest.from_prompt("c"), [WEAK_MODEL])
            assert routed.result.text
