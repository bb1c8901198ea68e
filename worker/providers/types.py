"""Provider-neutral request/result types and the one transport interface.

Messages are in OpenAI chat format (``{"role": ..., "content": str | [parts]}``); each
transport maps them to its wire format. Units are in the names (``latency_ms``, ``cost_usd``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from schemas.errors import ErrorCode

if TYPE_CHECKING:
    from worker.config.models import ModelSpec

ProviderKind = Literal["openai", "anthropic"]
FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "other"]


class Secret:
    """An API key that never shows itself in ``repr``/``str``/f-strings; ``reveal()`` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:  # never pickled into events or task payloads
        raise TypeError("Secret cannot be pickled")


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """One chat completion. ``messages`` in OpenAI chat format; ``request_id`` is sent as
    ``X-Client-Request-Id`` (OpenAI) so provider logs can be matched; never a secret."""

    messages: tuple[Mapping[str, Any], ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int | None = None
    request_id: str | None = None

    @classmethod
    def from_messages(
        cls, messages: Sequence[Mapping[str, Any]], **params: Any
    ) -> CompletionRequest:
        return cls(messages=tuple(messages), **params)

    @classmethod
    def from_prompt(cls, prompt: str, **params: Any) -> CompletionRequest:
        return cls(messages=({"role": "user", "content": prompt},), **params)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage. ``input_tokens`` includes ``cached_input_tokens`` (OpenAI's convention)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class CompletionResult:
    text: str
    finish_reason: FinishReason
    usage: Usage
    cost_usd: float
    latency_ms: float
    provider: ProviderKind
    model: str  # logical model name (catalogue key)
    response_model: str  # the model id the provider says answered
    logprobs: tuple[TokenLogprob, ...] | None = None
    provider_request_id: str | None = None
    raw_finish_reason: str | None = None
    rate_limit: RateLimitInfo | None = None  # the answer's rate-limit headers, when it had any


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What a provider said about its rate limits in one answer (None: not said); see
    worker.providers.deployments.parse_rate_limit_headers."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None


AttemptStatus = Literal["ok", "error", "skipped"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one model: what the worker copies into the response's ``attempts``."""

    model: str
    provider: ProviderKind
    status: AttemptStatus
    latency_ms: float
    http_status: int | None = None
    error_type: ErrorCode | None = None  # the error's stable code, e.g. "RateLimitError"
    retry: int = 0  # 0 for the first try of this model, 1.. for retries
    deployment: str | None = None  # the catalogue's deployment name (models that list them)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "provider": self.provider,
            "status": self.status,
            "latency_ms": round(self.latency_ms, 3),
            "http_status": self.http_status,
            "error_type": self.error_type,
            "retry": self.retry,
        }
        if self.deployment is not None:
            out["deployment"] = self.deployment
        return out


@dataclass(frozen=True, slots=True)
class RoutedCompletion:
    """The answer of a fallback chain: the successful result and every attempt made."""

    result: CompletionResult
    attempts: tuple[Attempt, ...] = field(default=())
    deployment: str | None = None  # which deployment answered (models that list them)
    deployment_reason: str | None = None  # why that one (strategy, skipped ones, failovers)

    @property
    def cost_usd(self) -> float:
        return self.result.cost_usd


class ProviderAdapter(Protocol):
    """One provider's HTTP interface: send a completion, get a result or a ProviderError."""

    provider: ProviderKind

    async def complete(
        self, spec: ModelSpec, request: CompletionRequest, *, timeout_s: float
    ) -> CompletionResult: ...

    async def aclose(self) -> None: ...
