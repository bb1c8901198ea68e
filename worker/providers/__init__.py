"""Model providers: OpenAI-compatible and Anthropic transports, the model catalogue, SDK-style
retries, circuit breakers, concurrency and rate limits per deployment (a model may have several,
worker.providers.deployments), and the fallback-chain client.

Nothing here does I/O at import time; clients are built explicitly from a :class:`Catalogue`.
"""

from worker.providers.anthropic import AnthropicTransport, MessageBatch
from worker.providers.breaker import BreakerSettings, CircuitBreaker
from worker.providers.client import ClientSettings, RouterClient
from worker.providers.errors import (
    AllModelsFailedError,
    AuthenticationError,
    BadRequestError,
    CircuitOpenError,
    ConflictError,
    DeadlineExceededError,
    InsufficientQuotaError,
    InternalServerError,
    MalformedResponseError,
    MissingApiKeyError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeoutError,
    RateLimitError,
    RateLimitWaitError,
    RequestTimeoutError,
    UnsupportedRequestError,
)
from worker.providers.http import HttpSettings
from worker.providers.openai import BatchObject, FileObject, OpenAITransport
from worker.providers.retry import Deadline, RetryPolicy
from worker.providers.types import (
    Attempt,
    CompletionRequest,
    CompletionResult,
    RoutedCompletion,
    Secret,
    TokenLogprob,
    Transport,
    Usage,
)

__all__ = [
    "AllModelsFailedError",
    "AnthropicTransport",
    "Attempt",
    "AuthenticationError",
    "BadRequestError",
    "BatchObject",
    "BreakerSettings",
    "CircuitBreaker",
    "CircuitOpenError",
    "ClientSettings",
    "CompletionRequest",
    "CompletionResult",
    "ConflictError",
    "Deadline",
    "DeadlineExceededError",
    "FileObject",
    "HttpSettings",
    "InsufficientQuotaError",
    "InternalServerError",
    "MalformedResponseError",
    "MessageBatch",
    "MissingApiKeyError",
    "NotFoundError",
    "OpenAITransport",
    "OverloadedError",
    "PermissionDeniedError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderStatusError",
    "ProviderTimeoutError",
    "RateLimitError",
    "RateLimitWaitError",
    "RequestTimeoutError",
    "RetryPolicy",
    "RoutedCompletion",
    "RouterClient",
    "Secret",
    "TokenLogprob",
    "Transport",
    "UnsupportedRequestError",
    "Usage",
]
