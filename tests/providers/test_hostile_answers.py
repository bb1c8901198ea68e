"""A hostile or broken provider answer is refused once, never paid for again by retries:
impossible usage (negative, not an integer, beyond the model's context) and answers larger than
the configured cap end as MalformedResponseError without a retry."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from tests.providers.conftest import mock_client
from worker.config.models import STRONG_MODEL
from worker.providers import AllModelsFailedError, ClientSettings, CompletionRequest, RetryPolicy
from worker.providers.errors import MalformedResponseError

REQ = CompletionRequest.from_prompt("hi")
OK: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4-1106-preview-0001",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
}


def _with(usage: dict[str, Any] | None = None, content: str | None = None) -> dict[str, Any]:
    body = copy.deepcopy(OK)
    if usage is not None:
        body["usage"] = usage
    if content is not None:
        body["choices"][0]["message"]["content"] = content
    return body


@pytest.mark.parametrize(
    "body",
    [
        _with({"prompt_tokens": -5, "completion_tokens": 2}),
        _with({"prompt_tokens": 10, "completion_tokens": -1}),
        _with({"prompt_tokens": 10, "completion_tokens": 2.5}),
        _with({"prompt_tokens": 10, "completion_tokens": 10**30}),
        _with({"prompt_tokens": 10, "completion_tokens": 1e30}),
        _with({"prompt_tokens": 100_000, "completion_tokens": 100_000}),  # > 128k context
        _with(content="x" * 5_000),  # beyond max_answer_bytes below
    ],
    ids=[
        "negative-input",
        "negative-output",
        "fraction",
        "1e30-int",
        "1e30-float",
        "beyond-context",
        "oversized-answer",
    ],
)
async def test_an_impossible_answer_is_refused_without_a_retry(body: dict[str, Any]) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json=body)

    settings = ClientSettings(retry=RetryPolicy(max_retries=3), max_answer_bytes=4_096)
    client = mock_client(handler, settings=settings)
    with pytest.raises(AllModelsFailedError) as info:
        await client.complete(REQ, [STRONG_MODEL])
    assert isinstance(info.value.last_error, MalformedResponseError)
    assert not info.value.last_error.retriable
    assert len(calls) == 1  # paid for once: no retry of the same model
    await client.aclose()


async def test_a_plausible_answer_passes() -> None:
    client = mock_client(
        lambda request: httpx.Response(200, json=OK),
        settings=ClientSettings(max_answer_bytes=4_096),
    )
    done = await client.complete(REQ, [STRONG_MODEL])
    assert done.result.text == "hello" and done.result.usage.output_tokens == 2
    await client.aclose()
