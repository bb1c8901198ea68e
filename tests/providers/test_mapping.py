"""Request/response mapping, the catalogue and cost, and our bodies against OpenAI's schema."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.providers.conftest import mock_catalogue, mock_client, openai_schema
from worker.config.models import ANTHROPIC_MODEL, STRONG_MODEL, Catalogue, CatalogueError
from worker.providers import CompletionRequest, Usage
from worker.providers.anthropic import messages_body
from worker.providers.openai import batch_request_line, chat_body

MESSAGES = (
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
    },
    {"role": "assistant", "content": "A picture."},
    {"role": "user", "content": "Sure?"},
)
FULL = CompletionRequest.from_messages(
    MESSAGES,
    max_tokens=64,
    temperature=1.5,
    top_p=0.9,
    stop=("\n\n", "END"),
    logprobs=True,
    top_logprobs=3,
)


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = openai_schema()
    return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": schema["$defs"]})


@pytest.mark.parametrize(
    "request_",
    [FULL, CompletionRequest.from_prompt("hi"), CompletionRequest.from_prompt("x", stop=("a",))],
)
def test_openai_body_matches_published_schema(request_):
    spec = mock_catalogue()[STRONG_MODEL]
    body = chat_body(spec, request_)
    _validator("CreateChatCompletionRequest").validate(body)
    known = set(openai_schema()["$defs"]["CreateChatCompletionRequest"]["properties"])
    assert set(body) <= known


def test_openai_batch_line_body_matches_schema():
    line = json.loads(batch_request_line("req-1", mock_catalogue()[STRONG_MODEL], FULL))
    assert line["url"] == "/v1/chat/completions" and line["method"] == "POST"
    _validator("CreateChatCompletionRequest").validate(line["body"])


def test_anthropic_body_mapping():
    body = messages_body(mock_catalogue()[ANTHROPIC_MODEL], FULL)
    assert body["system"] == "Be brief."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    assert body["stop_sequences"] == ["\n\n", "END"]
    assert body["temperature"] == 1.0  # clamped to Anthropic's range
    assert body["max_tokens"] == 64
    assert "logprobs" not in body
    default = messages_body(mock_catalogue()[ANTHROPIC_MODEL], CompletionRequest.from_prompt("x"))
    assert default["max_tokens"] == 1024


async def test_anthropic_usage_cache_and_finish_mapping():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                "stop_reason": "max_tokens",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 100,
                    "output_tokens": 7,
                    "cache_creation_input_tokens": 20,
                    "cache_read_input_tokens": 2000,
                },
            },
            headers={"request-id": "req_abc"},
        )

    async with mock_client(handler) as client:
        routed = await client.complete(FULL, [ANTHROPIC_MODEL])
    r = routed.result
    assert (r.text, r.finish_reason, r.raw_finish_reason) == ("Hi there", "length", "max_tokens")
    assert r.usage == Usage(input_tokens=2120, output_tokens=7, cached_input_tokens=2000)
    assert r.cost_usd == pytest.approx((120 * 0.25 + 2000 * 0.03 + 7 * 1.25) / 1e6)
    assert r.provider_request_id == "req_abc" and r.response_model == "claude-x"
    h = seen[0].headers
    assert h["anthropic-version"] == "2023-06-01" and seen[0].url.path == "/v1/messages"


async def test_openai_logprobs_cached_tokens_and_headers():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-x",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "content_filter",
                        "message": {"role": "assistant", "content": None, "refusal": "no"},
                        "logprobs": {
                            "content": [
                                {
                                    "token": "no",
                                    "logprob": -0.1,
                                    "bytes": [110, 111],
                                    "top_logprobs": [],
                                }
                            ],
                            "refusal": None,
                        },
                    }
                ],
                "usage": {
                    "prompt_tokens": 3000,
                    "completion_tokens": 1,
                    "total_tokens": 3001,
                    "prompt_tokens_details": {"cached_tokens": 2048},
                },
            },
        )

    req = CompletionRequest.from_prompt("x", logprobs=True, request_id="r-1")
    async with mock_client(handler) as client:
        r = (await client.complete(req, [STRONG_MODEL])).result
    assert (r.text, r.finish_reason) == ("no", "content_filter")
    assert r.logprobs is not None and r.logprobs[0].logprob == -0.1
    assert r.usage.cached_input_tokens == 2048
    assert r.cost_usd == pytest.approx((952 * 10 + 2048 * 5 + 1 * 30) / 1e6)
    assert seen[0].headers["x-client-request-id"] == "r-1"
    assert seen[0].url.path == "/v1/chat/completions"


def test_catalogue_from_dict_and_batch_cost():
    cat = Catalogue.from_dict(
        {
            "models": {
                "m": {
                    "provider": "openai",
                    "base_url": "http://x/v1/",
                    "api_key_env": "K",
                    "provider_model": "m-1",
                    "input_usd_per_mtok": 2.0,
                    "output_usd_per_mtok": 8.0,
                    "context_window_tokens": 1000,
                }
            }
        }
    )
    spec = cat["m"]
    assert spec.base_url == "http://x/v1" and spec.max_concurrent_calls == 256
    usage = Usage(input_tokens=1_000_000, output_tokens=500_000)
    assert spec.cost_usd(usage) == pytest.approx(6.0)
    assert spec.cost_usd(usage, batch=True) == pytest.approx(3.0)
    with pytest.raises(CatalogueError, match="'m'"):
        Catalogue.from_dict({"m": {"provider": "bogus"}})
    with pytest.raises(CatalogueError, match="unknown"):
        Catalogue.from_dict({"m": {**{"provider": "openai"}, "surprise": 1}})
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]
