"""Request validation and response/error bodies in the providers' real wire shapes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from worker.sim.answers import Answer

_OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class WireError(Exception):
    """A request the real API would reject with ``status`` and this body."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()
    ):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers


def openai_error(
    status: int, message: str, etype: str, code: str | None = None, param: str | None = None
) -> WireError:
    return WireError(
        status, {"error": {"message": message, "type": etype, "param": param, "code": code}}
    )


def anthropic_error(status: int, etype: str, message: str, request_id: str = "") -> WireError:
    body: dict[str, Any] = {"type": "error", "error": {"type": etype, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return WireError(status, body)


def validate_openai_chat(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise openai_error(
            400, "We could not parse the JSON body of your request.", "invalid_request_error"
        )
    if not isinstance(body.get("model"), str):
        raise openai_error(
            400, "you must provide a model parameter", "invalid_request_error", None, "model"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise openai_error(
            400,
            "Invalid 'messages': empty array.",
            "invalid_request_error",
            "empty_array",
            "messages",
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _OPENAI_ROLES:
            raise openai_error(
                400,
                f"Invalid value for 'messages[{i}].role'.",
                "invalid_request_error",
                "invalid_value",
                f"messages[{i}].role",
            )
    for name in ("max_tokens", "max_completion_tokens", "top_logprobs"):
        if name in body and body[name] is not None and not isinstance(body[name], int):
            raise openai_error(
                400, f"Invalid type for '{name}'.", "invalid_request_error", "invalid_type", name
            )
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        raise openai_error(
            400,
            "'top_logprobs' requires 'logprobs' to be true.",
            "invalid_request_error",
            None,
            "top_logprobs",
        )
    return body


def openai_completion(
    model: str, answer: Answer, prompt_tokens: int, cached_tokens: int, *, with_logprobs: bool
) -> dict[str, Any]:
    logprobs = None
    if with_logprobs and answer.tokens is not None:
        logprobs = {
            "content": [
                {
                    "token": t.token,
                    "logprob": t.logprob,
                    "bytes": list(t.token.encode()),
                    "top_logprobs": [
                        {"token": tok, "logprob": lp, "bytes": list(tok.encode())}
                        for tok, lp in t.top
                    ],
                }
                for t in answer.tokens
            ],
            "refusal": None,
        }
    finish = "length" if answer.finish == "length" else "stop"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_sim",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": None},
                "logprobs": logprobs,
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": answer.output_tokens,
            "total_tokens": prompt_tokens + answer.output_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }


def validate_anthropic_messages(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise anthropic_error(400, "invalid_request_error", "Request body must be a JSON object")
    if not isinstance(body.get("model"), str):
        raise anthropic_error(400, "invalid_request_error", "model: Field required")
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        raise anthropic_error(400, "invalid_request_error", "max_tokens: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise anthropic_error(
            400, "invalid_request_error", "messages: at least one message is required"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise anthropic_error(
                400,
                "invalid_request_error",
                f"messages.{i}.role: Input should be 'user' or 'assistant'",
            )
    temperature = body.get("temperature")
    if temperature is not None and not 0.0 <= float(temperature) <= 1.0:
        raise anthropic_error(400, "invalid_request_error", "temperature: range: 0..1")
    return body


def anthropic_message(
    model: str, answer: Answer, input_tokens: int, cached_tokens: int
) -> dict[str, Any]:
    stop_reason = {"length": "max_tokens", "stop_sequence": "stop_sequence"}.get(
        answer.finish, "end_turn"
    )
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": answer.text}],
        "stop_reason": stop_reason,
        "stop_sequence": answer.stop_sequence,
        "usage": {
            "input_tokens": input_tokens - cached_tokens,
            "output_tokens": answer.output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached_tokens,
        },
    }


def masked_key(key: str) -> str:
    """How OpenAI echoes a wrong key in its 401 message: ``sk-abc***wxyz``."""
    return f"{key[:6]}***{key[-4:]}" if len(key) > 10 else "***"


def header(headers: Mapping[str, str], name: str) -> str | None:
    return headers.get(name)
