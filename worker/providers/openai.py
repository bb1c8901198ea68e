"""OpenAI-compatible adapter: Chat Completions (OpenAI, vLLM, Ollama, OpenRouter, Together...
by ``base_url``) and the OpenAI Files + Batch API calls the batch jobs need."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from worker.config.models import ModelSpec
from worker.providers.adapter import HttpAdapter, batch_item_error
from worker.providers.errors import MalformedResponseError, ProviderError
from worker.providers.http import (
    decode_json,
)
from worker.providers.types import (
    CompletionRequest,
    CompletionResult,
    FinishReason,
    TokenLogprob,
    Usage,
)

PROVIDER: Final = "openai"


class _Logprob(msgspec.Struct):
    token: str
    logprob: float


class _ChoiceLogprobs(msgspec.Struct):
    content: list[_Logprob] | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None
    logprobs: _ChoiceLogprobs | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None


class ChatCompletionWire(msgspec.Struct):
    choices: list[_Choice]
    model: str = ""
    id: str = ""
    usage: _Usage | None = None


class FileObject(msgspec.Struct):
    id: str
    bytes: int = 0
    filename: str = ""
    purpose: str = ""


class BatchRequestCounts(msgspec.Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchObject(msgspec.Struct):
    """The OpenAI batch object (fields the batch jobs use; others are ignored)."""

    id: str
    status: str  # validating|failed|in_progress|finalizing|completed|expired|cancelling|cancelled
    input_file_id: str = ""
    endpoint: str = ""
    completion_window: str = ""
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int | None = None
    request_counts: BatchRequestCounts | None = None
    metadata: dict[str, str] | None = None
    errors: dict[str, Any] | None = None


class BatchList(msgspec.Struct):
    data: list[BatchObject]
    has_more: bool = False
    last_id: str | None = None


_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


def chat_body(spec: ModelSpec, request: CompletionRequest) -> dict[str, Any]:
    """The Chat Completions request body (checked against OpenAI's OpenAPI schema in tests)."""
    body: dict[str, Any] = {
        "model": spec.provider_model,
        "messages": [dict(m) for m in request.messages],
    }
    if request.max_tokens is not None:
        body[spec.max_tokens_param] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = list(request.stop[:4])
    if request.logprobs and spec.supports_logprobs:
        body["logprobs"] = True
        if request.top_logprobs is not None:
            body["top_logprobs"] = request.top_logprobs
    return body


def result_from_wire(
    wire: ChatCompletionWire,
    spec: ModelSpec,
    *,
    latency_ms: float,
    request_id: str | None,
    batch: bool = False,
) -> CompletionResult:
    if not wire.choices:
        raise MalformedResponseError("no choices in response", provider=PROVIDER, model=spec.name)
    choice = wire.choices[0]
    usage_wire = wire.usage or _Usage()
    details = usage_wire.prompt_tokens_details
    usage = Usage(
        input_tokens=usage_wire.prompt_tokens,
        output_tokens=usage_wire.completion_tokens,
        cached_input_tokens=(details.cached_tokens or 0) if details else 0,
    )
    logprobs = None
    if choice.logprobs is not None and choice.logprobs.content is not None:
        logprobs = tuple(TokenLogprob(t.token, t.logprob) for t in choice.logprobs.content)
    raw_finish = choice.finish_reason
    text = choice.message.content
    if text is None and choice.message.refusal is not None:
        text, raw_finish = choice.message.refusal, raw_finish or "content_filter"
    return CompletionResult(
        text=text or "",
        finish_reason=_FINISH.get(raw_finish or "", "other"),
        usage=usage,
        cost_usd=spec.cost_usd(usage, batch=batch),
        latency_ms=latency_ms,
        provider=PROVIDER,
        model=spec.name,
        response_model=wire.model or spec.provider_model,
        logprobs=logprobs,
        provider_request_id=request_id,
        raw_finish_reason=raw_finish,
    )


class OpenAIAdapter(HttpAdapter):
    """One pooled client for one OpenAI-compatible ``base_url`` (ending in ``/v1``)."""

    provider = PROVIDER
    completion_path = "/chat/completions"
    request_id_header = "x-request-id"

    def _headers(self, json: bool = True) -> dict[str, str]:
        headers = {"accept": "application/json"}
        if json:
            headers["content-type"] = "application/json"
        if self._api_key is not None:
            headers["authorization"] = f"Bearer {self._api_key.reveal()}"
        return headers

    def _completion_body(self, spec: ModelSpec, request: CompletionRequest) -> dict[str, Any]:
        return chat_body(spec, request)

    def _completion_headers(self, request: CompletionRequest) -> Mapping[str, str] | None:
        client_id = client_request_id(request.request_id)
        return {"x-client-request-id": client_id} if client_id is not None else None

    def _completion_result(
        self, content: bytes, spec: ModelSpec, *, latency_ms: float, request_id: str | None
    ) -> CompletionResult:
        wire = decode_json(
            content,
            ChatCompletionWire,
            provider=PROVIDER,
            model=spec.name,
            secrets=self._secret_values,
        )
        return result_from_wire(wire, spec, latency_ms=latency_ms, request_id=request_id)

    # -- Files and Batches -------------------------------------------------------------------

    async def upload_batch_file(
        self, content: bytes, *, filename: str = "batch.jsonl", timeout_s: float = 300.0
    ) -> FileObject:
        """``POST /files`` (multipart, ``purpose=batch``)."""
        return await self._call_json(
            FileObject,
            "POST",
            "/files",
            timeout_s=timeout_s,
            files={"file": (filename, content, "application/jsonl")},
            data={"purpose": "batch"},
        )

    async def create_batch(
        self,
        input_file_id: str,
        *,
        endpoint: str = "/v1/chat/completions",
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> BatchObject:
        body: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
        }
        if metadata:
            body["metadata"] = dict(metadata)
        return await self._call_json(
            BatchObject,
            "POST",
            "/batches",
            timeout_s=timeout_s,
            json_body=msgspec.json.encode(body),
        )

    async def retrieve_batch(self, batch_id: str, *, timeout_s: float = 60.0) -> BatchObject:
        return await self._call_json(
            BatchObject, "GET", f"/batches/{batch_id}", timeout_s=timeout_s
        )

    async def list_batches(
        self, *, limit: int = 100, after: str | None = None, timeout_s: float = 60.0
    ) -> BatchList:
        """``GET /batches``: newest first; pass the last id as `after` for the next page."""
        query = f"/batches?limit={limit}" + (f"&after={after}" if after else "")
        return await self._call_json(BatchList, "GET", query, timeout_s=timeout_s)

    async def cancel_batch(self, batch_id: str, *, timeout_s: float = 60.0) -> BatchObject:
        return await self._call_json(
            BatchObject, "POST", f"/batches/{batch_id}/cancel", timeout_s=timeout_s
        )

    async def download_file(self, file_id: str, *, timeout_s: float = 600.0) -> bytes:
        """``GET /files/{id}/content``: the batch output or error JSONL."""
        response = await self._call("GET", f"/files/{file_id}/content", timeout_s=timeout_s)
        return response.content


def batch_request_line(custom_id: str, spec: ModelSpec, request: CompletionRequest) -> bytes:
    """One line of a Batch API input file (without the newline)."""
    return msgspec.json.encode(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": chat_body(spec, request),
        }
    )


class _BatchResponse(msgspec.Struct):
    status_code: int
    body: msgspec.Raw
    request_id: str | None = None


class _BatchError(msgspec.Struct):
    code: str | None = None
    message: str | None = None


class _BatchLine(msgspec.Struct):
    custom_id: str
    response: _BatchResponse | None = None
    error: _BatchError | None = None


def parse_batch_output_line(
    line: bytes, spec: ModelSpec
) -> tuple[str, CompletionResult | ProviderError]:
    """One line of a batch output or error file -> (custom_id, result or error). The cost uses
    the batch discount. Raises MalformedResponseError when the line itself is not valid."""
    wire = decode_json(line, _BatchLine, provider=PROVIDER, model=spec.name)
    resp = wire.response
    if resp is not None and 200 <= resp.status_code < 300:
        body = decode_json(bytes(resp.body), ChatCompletionWire, provider=PROVIDER, model=spec.name)
        return wire.custom_id, result_from_wire(
            body, spec, latency_ms=0.0, request_id=resp.request_id, batch=True
        )
    if resp is not None:
        try:
            err_body: Any = msgspec.json.decode(bytes(resp.body))
        except msgspec.DecodeError:
            err_body = None
        return wire.custom_id, batch_item_error(
            resp.status_code, err_body, PROVIDER, spec.name, resp.request_id
        )
    code = wire.error.code if wire.error else None
    message = (wire.error.message if wire.error else None) or "batch request failed"
    return wire.custom_id, batch_item_error(
        500 if code != "batch_expired" else 408,
        {"error": {"message": message, "code": code}},
        PROVIDER,
        spec.name,
    )


def client_request_id(request_id: str | None) -> str | None:
    """The request id as an HTTP header value: printable ASCII as is, anything else (and `%`)
    percent-encoded as UTF-8; None (no header) when empty or longer than OpenAI's 512."""
    if not request_id:
        return None
    if request_id.isascii() and request_id.isprintable() and "%" not in request_id:
        value = request_id
    else:
        value = urllib.parse.quote(request_id, safe=_HEADER_SAFE)
    return value if len(value) <= 512 else None


_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")
