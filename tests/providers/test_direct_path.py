"""The provider transports' direct path (`RequestTemplate.send` over `HttpEngine.round_trip`,
without httpx's request/response objects) against real local servers: it must send what httpx
sends and read answers as httpx reads them, falling back to httpx where httpx does more."""

from __future__ import annotations

import asyncio
import gzip
import json

import httpx
import pytest

from tests.providers.test_engine import Server, dies_on_second_request, keep_alive, ok, serve
from worker.config.models import WEAK_MODEL, simulator_catalogue
from worker.providers import (
    CompletionRequest,
    HttpSettings,
    ProviderConnectionError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from worker.providers.http import RawResponse, send_request
from worker.providers.openai import OpenAIAdapter, chat_body
from worker.providers.types import Secret

CHAT = json.dumps(
    {
        "id": "c1",
        "model": "m",
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
).encode()


def openai(server: Server, **http: float) -> OpenAIAdapter:
    return OpenAIAdapter(
        base_url=f"{server.url}/v1", api_key=Secret("sk-test"), http=HttpSettings(**http)
    )


def spec(server: Server):
    return simulator_catalogue(server.url)[WEAK_MODEL]


def header_map(raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    line, *fields = head.split(b"\r\n")
    return line, {k.lower(): v.strip() for k, _, v in (f.partition(b":") for f in fields)}, body


async def test_direct_path_sends_what_httpx_sends_and_reads_the_answer():
    async with await serve(
        lambda ref: keep_alive(ref, ok(CHAT, b"x-request-id: req_7\r\n"))
    ) as server:
        transport = openai(server)
        assert transport._completion._fast is not None  # HttpEngine under the client: direct
        request = CompletionRequest.from_prompt("q", request_id="r-1", max_tokens=5)
        result = await transport.complete(spec(server), request, timeout_s=5.0)
        assert (result.text, result.provider_request_id) == ("hi", "req_7")
        assert result.usage.input_tokens == 3
        # the same request through httpx's own layers, on the same client and connection
        payload = json.dumps(chat_body(spec(server), request)).encode()
        template = transport._completion
        built = template.build(payload, {"x-client-request-id": "r-1"})
        via_httpx = await send_request(
            transport._client, built, provider="openai", model=None, secrets=(), timeout_s=5.0
        )
        assert via_httpx.status_code == 200
        direct = await template.send(
            payload,
            {"x-client-request-id": "r-1"},
            provider="openai",
            model=None,
            secrets=(),
            timeout_s=5.0,
        )
        assert isinstance(direct, RawResponse)
        assert direct.headers.get("X-Request-Id") == "req_7"
        await transport.aclose()
    assert server.connections == 1
    first, second, third = (header_map(r) for r in server.requests)
    assert second == third  # direct and httpx: same request line, headers and body
    assert first[0] == second[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert first[1][b"authorization"] == b"Bearer sk-test"
    assert first[1][b"x-client-request-id"] == b"r-1"
    assert first[1][b"content-length"] == str(len(first[2])).encode()


async def test_encoded_and_cookie_setting_answers_go_through_httpx():
    body = gzip.compress(CHAT)
    answer = ok(body, b"content-encoding: gzip\r\nset-cookie: sid=1\r\n")
    async with await serve(lambda ref: keep_alive(ref, answer)) as server:
        transport = openai(server)
        request = CompletionRequest.from_prompt("q")
        result = await transport.complete(spec(server), request, timeout_s=5.0)
        assert result.text == "hi"  # decoded as httpx decodes
        assert transport._client.cookies.get("sid") == "1"  # stored in the client's jar
        again = await transport.complete(spec(server), request, timeout_s=5.0)
        assert again.text == "hi"
        await transport.aclose()
    assert b"cookie: sid=1" in server.requests[1].lower()  # sent back, as httpx would


async def test_chunked_answer_and_error_status_on_the_direct_path():
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (
        len(CHAT),
        CHAT,
    )
    limited = (
        b'{"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}'
    )
    answers = [chunked, ok(limited).replace(b"200 OK", b"429 Too Many Requests", 1)]

    def handler(ref):
        async def serve_answers(reader, writer, _):
            while await ref[0].read_request(reader) is not None:
                writer.write(answers[len(ref[0].requests) - 1])
                await writer.drain()

        return serve_answers

    async with await serve(handler) as server:
        transport = openai(server)
        request = CompletionRequest.from_prompt("q")
        assert (await transport.complete(spec(server), request, timeout_s=5.0)).text == "hi"
        with pytest.raises(ProviderStatusError) as err:
            await transport.complete(spec(server), request, timeout_s=5.0)
        assert err.value.status == 429
        assert err.value.provider_code == "rate_limit_exceeded"
        await transport.aclose()
    assert server.connections == 1


async def test_direct_post_on_a_stale_connection_is_never_resent():
    async with await serve(dies_on_second_request) as server:
        transport = openai(server)
        template = transport._completion
        first = await template.send(b"1", provider="openai", model=None, secrets=(), timeout_s=5.0)
        assert first.status_code == 200
        with pytest.raises(ProviderConnectionError):
            await template.send(b"2", provider="openai", model=None, secrets=(), timeout_s=5.0)
        await transport.aclose()
    assert [r.split(b" ")[1] for r in server.requests] == [b"/v1/chat/completions"] * 2


async def test_direct_path_timeouts_map_to_provider_timeout():
    async def silent(reader, writer, _):
        await server.read_request(reader)
        await reader.read()

    async with Server(silent) as server:
        transport = openai(server)
        with pytest.raises(ProviderTimeoutError):
            await transport._completion.send(
                b"{}", provider="openai", model=None, secrets=(), timeout_s=0.05
            )
        await transport.aclose()
        with pytest.raises(RuntimeError):  # a closed client refuses, as httpx does
            await transport._completion.send(
                b"{}", provider="openai", model=None, secrets=(), timeout_s=1.0
            )


def test_mock_transports_keep_httpx_path():
    transport = OpenAIAdapter(
        base_url="http://provider.test/v1",
        api_key=None,
        transport=httpx.MockTransport(lambda r: httpx.Response(200)),
    )
    assert transport._completion._fast is None
    asyncio.run(transport.aclose())


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "https_proxy", "ALL_PROXY"])
def test_a_proxy_in_the_environment_keeps_httpx_path(monkeypatch, variable):
    # httpx mounts a proxy transport for it: the engine would bypass the proxy
    monkeypatch.setenv(variable, "http://127.0.0.1:9")
    transport = OpenAIAdapter(base_url="http://provider.test/v1", api_key=None)
    assert transport._completion._fast is None
    asyncio.run(transport.aclose())
