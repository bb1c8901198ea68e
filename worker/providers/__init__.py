"""Model providers: OpenAI-compatible and Anthropic adapters, the model catalogue, SDK-style
retries, circuit breakers, concurrency and rate limits per deployment (a model may have several,
worker.providers.deployments), and the fallback-chain client.

Nothing here does I/O at import time; clients are built explicitly from a :class:`Catalogue`.
"""

from worker.providers.anthropic import AnthropicAdapter, MessageBatch
from worker.providers.breaker import BreakerSettings, CircuitBreaker
from worker.providers.client import ClientSettings, ModelClient
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
from worker.providers.openai import BatchObject, FileObject, OpenAIAdapter
from worker.providers.retry import Deadline, RetryPolicy
from worker.providers.types import (
    Attempt,
    CompletionRequest,
    CompletionResult,
    ProviderAdapter,
    RoutedCompletion,
    Secret,
    TokenLogprob,
    Usage,
)

__all__ = [
    "AllModelsFailedError",
    "AnthropicAdapter",
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
    "ModelClient",
    "NotFoundError",
    "OpenAIAdapter",
    "OverloadedError",
    "PermissionDeniedError",
    "ProviderAdapter",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderStatusError",
    "ProviderTimeoutError",
    "RateLimitError",
    "RateLimitWaitError",
    "RequestTimeoutError",
    "RetryPolicy",
    "RoutedCompletion",
    "Secret",
    "TokenLogprob",
    "UnsupportedRequestError",
    "Usage",
]
