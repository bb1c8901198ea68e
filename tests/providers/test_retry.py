"""Every retry path, header parsing and the deadline, through httpx.MockTransport."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from tests.providers.conftest import FakeClock, mock_client
from worker.config.models import ANTHROPIC_MODEL, STRONG_MODEL, WEAK_MODEL
from worker.providers import (
    AllModelsFailedError,
    ClientSettings,
    CompletionRequest,
    RetryPolicy,
)
from worker.providers.errors import RateLimitError
from worker.providers.http import parse_retry_after_s, parse_should_retry
from worker.providers.retry import retry_delay_s

REQ = CompletionRequest.from_prompt("hi")

OK_OPENAI = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4-1106-preview-0001",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
}


def scripted(*responses: httpx.Response | Exception):
    """A handler answering each call with the next scripted response (the last repeats)."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        item = responses[min(len(calls) - 1, len(responses) - 1)]
        if isinstance(item, Exception):
            raise item
        return item

    handler.calls = calls  # type: ignore[attr-defined]
    return handler


def err(status: int, code: str | None = None, etype: str = "server_error", headers=None):
    return httpx.Response(
        status,
        json={"error": {"message": f"boom {status}", "type": etype, "param": None, "code": code}},
        headers=headers or {},
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "x", "retry-after": "2"}, 2.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers, expected):
    assert parse_retry_after_s(headers) == expected


def test_parse_retry_after_http_date():
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after_s({"retry-after": date}, now=lambda: now) == pytest.approx(7.0)


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False), ("1", None)])
def test_parse_should_retry(value, expected):
    assert parse_should_retry({"x-should-retry": value}) is expected


def test_backoff_matches_sdk_schedule():
    policy = RetryPolicy()
    error = RateLimitError("x", status=429)
    assert [retry_delay_s(policy, n, error, lambda: 0.0) for n in range(6)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        8.0,
    ]
    assert retry_delay_s(policy, 0, error, lambda: 1.0) == pytest.approx(0.375)  # 25% jitter


@pytest.mark.parametrize(
    "first",
    [
        err(408),
        err(409),
        err(429, "rate_limit_exceeded", "requests"),
        err(500),
        err(502),
        err(503, "overloaded"),
        httpx.ConnectError("refused"),
        httpx.ReadError("connection reset by peer"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("peer closed"),
    ],
    ids=lambda r: str(r.status_code) if isinstance(r, httpx.Response) else type(r).__name__,
)
async def test_retriable_failures_are_retried(first):
    clock = FakeClock()
    handler = scripted(first, httpx.Response(200, json=OK_OPENAI))
    async with mock_client(handler, clock=clock) as client:
        routed = await client.complete(REQ, [STRONG_MODEL])
    assert routed.result.text == "hello"
    assert [a.status for a in routed.attempts] == ["error", "ok"]
    assert [a.retry for a in routed.attempts] == [0, 1]
    assert clock.sleeps == [0.5]  # backoff with jitter fixed at 0


async def test_anthropic_529_is_retried():
    ok = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": ANTHROPIC_MODEL,
        "content": [{"type": "text", "text": "hey"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 1},
    }
    overloaded = httpx.Response(
        529, json={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    async with mock_client(scripted(overloaded, httpx.Response(200, json=ok))) as client:
        routed = await client.complete(REQ, [ANTHROPIC_MODEL])
    assert [(a.http_status, a.error_type) for a in routed.attempts] == [
        (529, "OverloadedError"),
        (200, None),
    ]


@pytest.mark.parametrize(
    ("response", "error_type"),
    [
        (err(400, "invalid_value", "invalid_request_error"), "BadRequestError"),
        (err(401, "invalid_api_key", "invalid_request_error"), "AuthenticationError"),
        (err(403), "PermissionDeniedError"),
        (err(404, "model_not_found"), "NotFoundError"),
        (err(422), "BadRequestError"),
        (err(429, "insufficient_quota", "insufficient_quota"), "InsufficientQuotaError"),
        (
            err(429, "insufficient_quota", "insufficient_quota", {"x-should-retry": "true"}),
            "InsufficientQuotaError",
        ),
        (err(500, headers={"x-should-retry": "false"}), "InternalServerError"),
        (httpx.Response(200, content=b'{"choices": [tru'), "MalformedResponseError"),
    ],
)
async def test_non_retriable_failures_are_not_retried(response, error_type):
    clock = FakeClock()
    handler = scripted(response)
    settings = ClientSettings(retry=RetryPolicy(max_retries=0 if "Malformed" in error_type else 2))
    async with mock_client(handler, clock=clock, settings=settings) as client:
        with pytest.raises(AllModelsFailedError) as info:
            await client.complete(REQ, [STRONG_MODEL])
    assert [a.error_type for a in info.value.attempts] == [error_type]
    assert len(handler.calls) == 1
    assert clock.sleeps == []


async def test_x_should_retry_true_overrides_a_4xx():
    handler = scripted(
        err(400, headers={"x-should-retry": "true"}), httpx.Response(200, json=OK_OPENAI)
    )
    async with mock_client(handler) as client:
        routed = await client.complete(REQ, [STRONG_MODEL])
    assert len(handler.calls) == 2 and routed.result.text == "hello"


async def test_retry_after_ms_is_honoured():
    clock = FakeClock()
    limited = err(
        429, "rate_limit_exceeded", "requests", {"retry-after-ms": "1234", "retry-after": "2"}
    )
    async with mock_client(
        scripted(limited, httpx.Response(200, json=OK_OPENAI)), clock=clock
    ) as c:
        await c.complete(REQ, [STRONG_MODEL])
    assert clock.sleeps == [1.234]


async def test_retry_after_beyond_cap_moves_to_next_model():
    clock = FakeClock()

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        if STRONG_MODEL.encode() in body:
            return err(429, "rate_limit_exceeded", "requests", {"retry-after": "600"})
        return httpx.Response(200, json={**OK_OPENAI, "model": WEAK_MODEL})

    async with mock_client(handler, clock=clock) as client:
        routed = await client.complete(REQ, [STRONG_MODEL, WEAK_MODEL])
    assert clock.sleeps == []
    assert [(a.model, a.error_type) for a in routed.attempts] == [
        (STRONG_MODEL, "RateLimitError"),
        (WEAK_MODEL, None),
    ]
    assert routed.result.model == WEAK_MODEL


async def test_retries_are_bounded_then_chain_fails():
    clock = FakeClock()
    handler = scripted(err(500))
    async with mock_client(handler, clock=clock) as client:
        with pytest.raises(AllModelsFailedError) as info:
            await client.complete(REQ, [STRONG_MODEL, WEAK_MODEL])
    assert len(handler.calls) == 6  # 1 + 2 retries per model
    assert clock.sleeps == [0.5, 1.0, 0.5, 1.0]
    assert type(info.value.last_error).__name__ == "InternalServerError"
    assert [a.to_dict()["retry"] for a in info.value.attempts] == [0, 1, 2, 0, 1, 2]


async def test_no_wait_past_the_deadline():
    clock = FakeClock()
    handler = scripted(err(429, "rate_limit_exceeded", "requests", {"retry-after": "5"}))
    async with mock_client(handler, clock=clock) as client:
        with pytest.raises(AllModelsFailedError) as info:
            await client.complete(REQ, [STRONG_MODEL], deadline_s=3.0)
    assert clock.sleeps == [] and len(handler.calls) == 1
    assert info.value.attempts[-1].error_type == "RateLimitError"


async def test_expired_deadline_stops_the_chain():
    clock = FakeClock()

    def handler(request: httpx.Request) -> httpx.Response:
        clock.now += 10.0  # the call itself used up the deadline
        return err(500)

    async with mock_client(handler, clock=clock) as client:
        with pytest.raises(AllModelsFailedError) as info:
            await client.complete(REQ, [STRONG_MODEL, WEAK_MODEL], deadline_s=5.0)
    assert [a.model for a in info.value.attempts] == [STRONG_MODEL, WEAK_MODEL]
    assert info.value.attempts[-1].error_type == "DeadlineExceededError"
    assert type(info.value.last_error).__name__ == "DeadlineExceededError"
