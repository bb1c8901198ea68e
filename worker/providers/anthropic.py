"""Anthropic adapter: Messages (``POST /v1/messages``) and Message Batches.

Mapping from the OpenAI chat format: ``system`` messages become the top-level ``system`` field;
text parts stay text blocks; ``image_url`` parts become image blocks (base64 data URLs or URLs);
``stop`` -> ``stop_sequences``; temperature is clamped to Anthropic's [0, 1]. Anthropic has no
log-probs. Usage: ``input_tokens`` here counts uncached + cache-read + cache-write tokens, and
``cached_input_tokens`` is ``cache_read_input_tokens`` (cache writes are priced as input).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from worker.config.models import ModelSpec
from worker.providers.adapter import HttpAdapter, batch_item_error
from worker.providers.errors import ProviderError, UnsupportedRequestError
from worker.providers.http import (
    decode_json,
)
from worker.providers.types import CompletionRequest, CompletionResult, FinishReason, Usage

PROVIDER: Final = "anthropic"
API_VERSION = "2023-06-01"


class _Block(msgspec.Struct):
    type: str
    text: str | None = None


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = 0
    cache_read_input_tokens: int | None = 0


class MessageWire(msgspec.Struct):
    content: list[_Block]
    model: str = ""
    id: str = ""
    stop_reason: str | None = None
    usage: _Usage | None = None


class MessageBatchCounts(msgspec.Struct):
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


class MessageBatch(msgspec.Struct):
    id: str
    processing_status: str  # in_progress | canceling | ended
    request_counts: MessageBatchCounts | None = None
    results_url: str | None = None
    created_at: str | None = None
    ended_at: str | None = None
    expires_at: str | None = None
    cancel_initiated_at: str | None = None


class MessageBatchList(msgspec.Struct):
    data: list[MessageBatch]
    has_more: bool = False
    last_id: str | None = None


_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text"
        )
    return ""


def _block(part: Mapping[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "image_url":
        url = str((part.get("image_url") or {}).get("url", ""))
        if url.startswith("data:") and ";base64," in url:
            media_type, data = url[5:].split(";base64,", 1)
            return {
                "type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data},
            }
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise UnsupportedRequestError(
        f"content part type {kind!r} has no Anthropic mapping", provider=PROVIDER
    )


def messages_body(spec: ModelSpec, request: CompletionRequest) -> dict[str, Any]:
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for m in request.messages:
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            system.append(_text_of(content))
            continue
        if role not in ("user", "assistant"):
            raise UnsupportedRequestError(
                f"role {role!r} has no Anthropic mapping", provider=PROVIDER
            )
        if isinstance(content, str):
            mapped: Any = content
        elif isinstance(content, Sequence):
            mapped = [_block(p) for p in content]
        else:
            raise UnsupportedRequestError(
                "message content must be text or parts", provider=PROVIDER
            )
        messages.append({"role": role, "content": mapped})
    body: dict[str, Any] = {
        "model": spec.provider_model,
        "max_tokens": request.max_tokens
        if request.max_tokens is not None
        else spec.default_max_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if request.temperature is not None:
        body["temperature"] = min(max(request.temperature, 0.0), 1.0)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    return body


def result_from_wire(
    wire: MessageWire,
    spec: ModelSpec,
    *,
    latency_ms: float,
    request_id: str | None,
    batch: bool = False,
) -> CompletionResult:
    u = wire.usage or _Usage()
    cache_read = u.cache_read_input_tokens or 0
    cache_write = u.cache_creation_input_tokens or 0
    usage = Usage(
        input_tokens=u.input_tokens + cache_read + cache_write,
        output_tokens=u.output_tokens,
        cached_input_tokens=cache_read,
    )
    return CompletionResult(
        text="".join(b.text or "" for b in wire.content if b.type == "text"),
        finish_reason=_FINISH.get(wire.stop_reason or "", "other"),
        usage=usage,
        cost_usd=spec.cost_usd(usage, batch=batch),
        latency_ms=latency_ms,
        provider=PROVIDER,
        model=spec.name,
        response_model=wire.model or spec.provider_model,
        logprobs=None,
        provider_request_id=request_id,
        raw_finish_reason=wire.stop_reason,
    )


class AnthropicAdapter(HttpAdapter):
    """One pooled client for one Anthropic ``base_url`` (host root, as the official SDK)."""

    provider = PROVIDER
    completion_path = "/v1/messages"
    request_id_header = "request-id"

    def _headers(self, json: bool = True) -> dict[str, str]:
        headers = {
            "accept": "application/json",
            "content-type": "application/json",
            "anthropic-version": API_VERSION,
        }
        if self._api_key is not None:
            headers["x-api-key"] = self._api_key.reveal()
        return headers

    def _completion_body(self, spec: ModelSpec, request: CompletionRequest) -> dict[str, Any]:
        return messages_body(spec, request)

    def _completion_result(
        self, content: bytes, spec: ModelSpec, *, latency_ms: float, request_id: str | None
    ) -> CompletionResult:
        wire = decode_json(
            content, MessageWire, provider=PROVIDER, model=spec.name, secrets=self._secret_values
        )
        return result_from_wire(wire, spec, latency_ms=latency_ms, request_id=request_id)

    # -- Message Batches ---------------------------------------------------------------------

    async def create_message_batch(
        self,
        requests: Sequence[tuple[str, ModelSpec, CompletionRequest]],
        *,
        timeout_s: float = 300.0,
    ) -> MessageBatch:
        """``POST /v1/messages/batches`` with ``{"requests": [{"custom_id", "params"}]}``."""
        body = {
            "requests": [
                {"custom_id": cid, "params": messages_body(spec, req)}
                for cid, spec, req in requests
            ]
        }
        return await self._call_json(
            MessageBatch,
            "POST",
            "/v1/messages/batches",
            timeout_s=timeout_s,
            json_body=msgspec.json.encode(body),
        )

    async def create_message_batch_from_items(
        self, items: Sequence[bytes], *, timeout_s: float = 300.0
    ) -> MessageBatch:
        """``POST /v1/messages/batches`` from items already encoded by `batch_request_item`."""
        payload = b'{"requests":[' + b",".join(items) + b"]}"
        return await self._call_json(
            MessageBatch, "POST", "/v1/messages/batches", timeout_s=timeout_s, json_body=payload
        )

    async def retrieve_message_batch(
        self, batch_id: str, *, timeout_s: float = 60.0
    ) -> MessageBatch:
        return await self._call_json(
            MessageBatch, "GET", f"/v1/messages/batches/{batch_id}", timeout_s=timeout_s
        )

    async def list_message_batches(
        self, *, limit: int = 100, after_id: str | None = None, timeout_s: float = 60.0
    ) -> MessageBatchList:
        """``GET /v1/messages/batches``: newest first; `after_id` pages on."""
        path = f"/v1/messages/batches?limit={limit}" + (f"&after_id={after_id}" if after_id else "")
        return await self._call_json(MessageBatchList, "GET", path, timeout_s=timeout_s)

    async def cancel_message_batch(self, batch_id: str, *, timeout_s: float = 60.0) -> MessageBatch:
        return await self._call_json(
            MessageBatch, "POST", f"/v1/messages/batches/{batch_id}/cancel", timeout_s=timeout_s
        )

    async def message_batch_results(self, batch_id: str, *, timeout_s: float = 600.0) -> bytes:
        """The results JSONL (``GET /v1/messages/batches/{id}/results``), lines in any order."""
        response = await self._call(
            "GET", f"/v1/messages/batches/{batch_id}/results", timeout_s=timeout_s
        )
        return response.content


def batch_request_item(custom_id: str, spec: ModelSpec, request: CompletionRequest) -> bytes:
    """One entry of a Message Batches ``requests`` array."""
    return msgspec.json.encode({"custom_id": custom_id, "params": messages_body(spec, request)})


class _ResultError(msgspec.Struct):
    error: dict[str, Any] | None = None


class _Result(msgspec.Struct):
    type: str  # succeeded | errored | canceled | expired
    message: MessageWire | None = None
    error: _ResultError | None = None


class _ResultLine(msgspec.Struct):
    custom_id: str
    result: _Result


def parse_batch_result_line(
    line: bytes, spec: ModelSpec
) -> tuple[str, CompletionResult | ProviderError]:
    """One results line -> (custom_id, result with the batch discount, or the item's error)."""
    wire = decode_json(line, _ResultLine, provider=PROVIDER, model=spec.name)
    res = wire.result
    if res.type == "succeeded" and res.message is not None:
        return wire.custom_id, result_from_wire(
            res.message, spec, latency_ms=0.0, request_id=None, batch=True
        )
    if res.type == "errored":
        inner = res.error.error if res.error else None
        etype = (inner or {}).get("type")
        status = {
            "invalid_request_error": 400,
            "overloaded_error": 529,
            "rate_limit_error": 429,
        }.get(str(etype), 500)
        return wire.custom_id, batch_item_error(
            status, {"error": inner or {"message": "errored"}}, PROVIDER, spec.name
        )
    # canceled / expired: the request never ran; a retry through the interactive path is safe.
    return wire.custom_id, batch_item_error(
        408,
        {"error": {"type": res.type, "message": f"batch request {res.type}"}},
        PROVIDER,
        spec.name,
    )
