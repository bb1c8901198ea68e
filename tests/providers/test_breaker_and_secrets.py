"""Circuit breaker timing with an injected clock; no API key ever leaks."""

from __future__ import annotations

import logging
import traceback

import httpx
import pytest

from tests.providers.conftest import ANTHROPIC_KEY, ENV, OPENAI_KEY, FakeClock, mock_client
from worker.config.models import ANTHROPIC_MODEL, STRONG_MODEL, WEAK_MODEL
from worker.providers import (
    AllModelsFailedError,
    BreakerSettings,
    CircuitBreaker,
    ClientSettings,
    CompletionRequest,
    RetryPolicy,
)
from worker.secrets import redact

REQ = CompletionRequest.from_prompt("hi")


def test_breaker_opens_cools_down_and_probes():
    clock = FakeClock()
    b = CircuitBreaker(BreakerSettings(failure_threshold=3, cooldown_s=30.0), clock)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state == "closed"
    assert b.allow()
    b.record_failure()
    assert b.state == "open" and not b.allow()
    clock.now += 29.9
    assert not b.allow()
    clock.now += 0.1
    assert b.state == "half_open"
    assert b.allow()  # the one probe
    assert not b.allow()  # no second probe while the first is out
    b.record_failure()  # probe failed: another full cooldown
    assert b.state == "open"
    clock.now += 30.0
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow()


def test_breaker_success_resets_the_count_and_release_frees_a_probe():
    clock = FakeClock()
    b = CircuitBreaker(BreakerSettings(failure_threshold=2, cooldown_s=1.0), clock)
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    clock.now += 1.0
    assert b.allow()
    b.release()  # cancelled probe: no verdict, slot freed
    assert b.state == "half_open" and b.allow()


async def test_client_skips_open_model_and_probes_after_cooldown():
    clock = FakeClock()
    calls: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        calls.append(body)
        if STRONG_MODEL.encode() in body:
            return httpx.Response(500, json={"error": {"message": "down", "type": "server_error"}})
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                "model": WEAK_MODEL,
            },
        )

    settings = ClientSettings(
        retry=RetryPolicy(max_retries=0),
        breaker=BreakerSettings(failure_threshold=2, cooldown_s=60),
    )
    async with mock_client(handler, clock=clock, settings=settings) as client:
        for _ in range(2):
            await client.complete(REQ, [STRONG_MODEL, WEAK_MODEL])
        assert client.breaker(STRONG_MODEL).state == "open"
        routed = await client.complete(REQ, [STRONG_MODEL, WEAK_MODEL])
        assert [(a.model, a.status, a.error_type) for a in routed.attempts] == [
            (STRONG_MODEL, "skipped", "CircuitOpenError"),
            (WEAK_MODEL, "ok", None),
        ]
        assert len(calls) == 5  # the open model was not called
        clock.now += 60.0
        routed = await client.complete(REQ, [STRONG_MODEL, WEAK_MODEL])
        assert routed.attempts[0].status == "error"  # the half-open probe went out and failed
        assert client.breaker(STRONG_MODEL).state == "open"


def test_redact_scrubs_keys_and_masked_echoes():
    text = f"bad key {OPENAI_KEY} and Incorrect API key provided: sk-proj-***6789."
    out = redact(text, [OPENAI_KEY])
    assert OPENAI_KEY not in out and "6789" not in out and "[REDACTED]" in out


async def test_no_key_in_errors_reprs_logs_or_tracebacks(caplog):
    def handler(request: httpx.Request) -> httpx.Response:
        key = request.headers.get("authorization", "")[7:] or request.headers.get("x-api-key", "")
        return httpx.Response(
            401,
            json={
                "error": {
                    "message": f"Incorrect API key provided: {key}. Masked: {key[:8]}***{key[-4:]}",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        )

    caplog.set_level(logging.DEBUG)
    client = mock_client(handler)
    try:
        with pytest.raises(AllModelsFailedError) as info:
            await client.complete(REQ, [STRONG_MODEL, ANTHROPIC_MODEL])
    finally:
        await client.aclose()
    exc = info.value
    surfaces = [
        str(exc),
        repr(exc),
        str(exc.last_error),
        repr(exc.last_error),
        "".join(traceback.format_exception(exc)),
        "".join(traceback.format_exception(exc.last_error)),
        repr([a.to_dict() for a in exc.attempts]),
        repr(client),
        repr(client.adapter_for(STRONG_MODEL)),
        repr(client.adapter_for(ANTHROPIC_MODEL)),
        repr(client.catalogue),
        repr(client.settings),
        repr(vars(exc.last_error)),
        caplog.text,
    ]
    for text in surfaces:
        for key in (OPENAI_KEY, ANTHROPIC_KEY):
            assert key not in text
            assert key[-4:] not in text
    assert [a.error_type for a in exc.attempts] == ["AuthenticationError"] * 2


async def test_missing_key_is_reported_by_name_only():
    env = {k: v for k, v in ENV.items() if k != "SIM_ANTHROPIC_API_KEY"}
    client = mock_client(lambda r: httpx.Response(500), env=env)
    assert client.missing_keys == ("SIM_ANTHROPIC_API_KEY",)
    with pytest.raises(AllModelsFailedError) as info:
        await client.complete(REQ, [ANTHROPIC_MODEL])
    await client.aclose()
    assert info.value.attempts[0].error_type == "MissingApiKeyError"
    assert "SIM_ANTHROPIC_API_KEY" in str(info.value.last_error)


async def test_all_failed_names_each_model_s_missing_key():
    # issue 16: with no key for the chosen model nor its fallback, the response said only the
    # fallback's variable: the chosen model's key looked fine
    env = {k: v for k, v in ENV.items() if k not in ("SIM_OPENAI_API_KEY", "SIM_ANTHROPIC_API_KEY")}
    client = mock_client(lambda r: httpx.Response(500), env=env)
    with pytest.raises(AllModelsFailedError) as info:
        await client.complete(REQ, [STRONG_MODEL, ANTHROPIC_MODEL])
    await client.aclose()
    text = info.value.describe()
    assert text.index(STRONG_MODEL) < text.index("SIM_OPENAI_API_KEY")
    assert text.index("SIM_OPENAI_API_KEY") < text.index(ANTHROPIC_MODEL)
    assert "SIM_ANTHROPIC_API_KEY" in text
