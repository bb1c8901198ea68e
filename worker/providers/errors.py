"""Provider errors: one root, mapped at the boundary, decided on by class.

`ProviderError` is a `worker.errors.WorkerError`: each class has a stable ``code`` (equal to its
class name, the value `error.type` carried before codes existed; listed in schemas/errors.py).
A non-2xx answer's own error code and type, as the provider wrote them, are ``provider_code`` and
``error_type``. The tree (``retriable``: the same model may be tried again after a backoff):

    ProviderError                        retriable=False
    ├── ProviderConnectionError          retriable=True   connect refused, reset, protocol error
    │   └── ProviderTimeoutError         retriable=True   connect/read/write/pool/total timeout
    ├── MalformedResponseError           retriable=True   2xx body that is not the documented shape
    ├── ProviderStatusError              retriable=False  any non-2xx answer (status, code, id)
    │   ├── BadRequestError              400 / 413 / 422
    │   ├── AuthenticationError          401
    │   ├── PermissionDeniedError        403
    │   ├── NotFoundError                404
    │   ├── RequestTimeoutError          408  retriable=True
    │   ├── ConflictError                409  retriable=True
    │   ├── RateLimitError               429  retriable=True
    │   │   └── InsufficientQuotaError   429 insufficient_quota / billing  retriable=False
    │   └── InternalServerError          5xx  retriable=True
    │       └── OverloadedError          529 / overloaded_error / 503 overloaded  retriable=True
    ├── DeadlineExceededError            the per-request deadline ran out (no time left to try)
    ├── CircuitOpenError                 the model is cooling down after repeated failures
    ├── RateLimitWaitError               retriable=True  every deployment of the model is at its
    │                                    rate limit for longer than the request can wait
    ├── MissingApiKeyError               the catalogue names an env var that is not set
    ├── UnsupportedRequestError          the request cannot be expressed for this provider
    └── AllModelsFailedError             every model of a fallback chain failed (has ``attempts``)

``trips_breaker`` says whether the failure counts against the model's health (a bad request or a
missing key says nothing about the model's health). A server may override ``retriable`` for one
answer with ``x-should-retry: true|false``; that is kept in ``should_retry_header``.

Messages never contain an API key: `worker.secrets.redact` (the one rule set) scrubs every
fragment of 12+ characters of a configured secret, in any case, every masked key echo
(``sk-abc***wxyz``) and every credential-shaped string before an error is built, and before
anything is cut short.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from schemas.errors import ErrorCode
from worker.errors import WorkerError
from worker.secrets import redact

if TYPE_CHECKING:
    from worker.providers.types import Attempt


class ProviderError(WorkerError):
    """Root of every error the provider layer raises (a `worker.errors.WorkerError`)."""

    code: ClassVar[ErrorCode] = "ProviderError"
    retriable = False
    trips_breaker: bool = False

    def __init__(self, message: str, *, provider: str | None = None, model: str | None = None):
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.model = model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, provider={self.provider!r})"


class ProviderConnectionError(ProviderError):
    code: ClassVar[ErrorCode] = "ProviderConnectionError"
    retriable = True
    trips_breaker = True


class ProviderTimeoutError(ProviderConnectionError):
    code = "ProviderTimeoutError"


class MalformedResponseError(ProviderError):
    code = "MalformedResponseError"
    retriable = True
    trips_breaker = True


class ProviderStatusError(ProviderError):
    """A non-2xx answer. ``status``, the provider's own error code and type (``provider_code``,
    ``error_type``) and request id."""

    code: ClassVar[ErrorCode] = "ProviderStatusError"
    trips_breaker = False

    def __init__(
        self,
        message: str,
        *,
        status: int,
        provider: str | None = None,
        model: str | None = None,
        provider_code: str | None = None,
        error_type: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        should_retry_header: bool | None = None,
    ):
        super().__init__(message, provider=provider, model=model)
        self.status = status
        self.provider_code = provider_code
        self.error_type = error_type
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.should_retry_header = should_retry_header

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, code={self.provider_code!r}, "
            f"message={self.message!r}, provider={self.provider!r})"
        )


class BadRequestError(ProviderStatusError):
    code = "BadRequestError"


class AuthenticationError(ProviderStatusError):
    code = "AuthenticationError"


class PermissionDeniedError(ProviderStatusError):
    code = "PermissionDeniedError"


class NotFoundError(ProviderStatusError):
    code = "NotFoundError"


class RequestTimeoutError(ProviderStatusError):
    code = "RequestTimeoutError"
    retriable = True
    trips_breaker = True


class ConflictError(ProviderStatusError):
    code = "ConflictError"
    retriable = True


class RateLimitError(ProviderStatusError):
    code: ClassVar[ErrorCode] = "RateLimitError"
    retriable = True
    trips_breaker = True


class InsufficientQuotaError(RateLimitError):
    code = "InsufficientQuotaError"
    retriable = False


class InternalServerError(ProviderStatusError):
    code: ClassVar[ErrorCode] = "InternalServerError"
    retriable = True
    trips_breaker = True


class OverloadedError(InternalServerError):
    code = "OverloadedError"


class DeadlineExceededError(ProviderError):
    code = "DeadlineExceededError"


class CircuitOpenError(ProviderError):
    code = "CircuitOpenError"


class MissingApiKeyError(ProviderError):
    code = "MissingApiKeyError"


class RateLimitWaitError(ProviderError):
    code = "RateLimitWaitError"
    retriable = True


class UnsupportedRequestError(ProviderError):
    code = "UnsupportedRequestError"


class AllModelsFailedError(ProviderError):
    """Every model of the chain failed; ``attempts`` lists each try, ``last_error`` the last."""

    code = "AllModelsFailedError"

    def __init__(
        self,
        message: str,
        *,
        attempts: Sequence[Attempt],
        last_error: ProviderError,
        errors: Sequence[ProviderError] = (),
    ):
        super().__init__(message, provider=last_error.provider, model=last_error.model)
        self.attempts = tuple(attempts)
        self.last_error = last_error
        self.errors = tuple(errors) or (last_error,)  # each model's final error, in chain order

    def describe(self) -> str:
        """Each model's failure in chain order (the chosen model's first), for the response."""
        if len(self.errors) == 1:
            return str(self.errors[0])
        return "; ".join(f"{e.model}: {e}" for e in self.errors)


_OVERLOADED_CODES = frozenset({"overloaded_error", "overloaded"})
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"})


def _status_class(
    status: int, code: str | None, error_type: str | None
) -> type[ProviderStatusError]:
    markers = {code, error_type}
    if status == 429:
        return InsufficientQuotaError if markers & _QUOTA_CODES else RateLimitError
    if status == 529 or (status >= 500 and markers & _OVERLOADED_CODES):
        return OverloadedError
    if status >= 500:
        return InternalServerError
    by_status: dict[int, type[ProviderStatusError]] = {
        400: BadRequestError,
        401: AuthenticationError,
        403: PermissionDeniedError,
        404: NotFoundError,
        408: RequestTimeoutError,
        409: ConflictError,
        413: BadRequestError,
        422: BadRequestError,
    }
    return by_status.get(status, BadRequestError if 400 <= status < 500 else ProviderStatusError)


def _error_fields(body: Any) -> tuple[str | None, str | None, str | None]:
    """(message, code, type) from an OpenAI ``{"error": {...}}`` or Anthropic
    ``{"type": "error", "error": {"type", "message"}}`` body."""
    if not isinstance(body, dict):
        return None, None, None
    err = body.get("error")
    if isinstance(err, dict):
        message = err.get("message")
        code = err.get("code")
        etype = err.get("type")
        return (
            str(message) if message is not None else None,
            str(code) if code is not None else None,
            str(etype) if etype is not None else None,
        )
    if isinstance(err, str):
        return err, None, None
    return None, None, None


def status_error(
    *,
    status: int,
    body: Any,
    provider: str,
    model: str | None,
    request_id: str | None,
    retry_after_s: float | None,
    should_retry_header: bool | None,
    secrets: Iterable[str] = (),
) -> ProviderStatusError:
    """Build the right :class:`ProviderStatusError` subclass from a decoded error body."""
    message, code, etype = _error_fields(body)
    if message is None:
        message = f"HTTP {status}"
    cls = _status_class(status, code, etype)
    return cls(
        redact(message, secrets)[:500],
        status=status,
        provider=provider,
        model=model,
        provider_code=code,
        error_type=etype,
        request_id=request_id,
        retry_after_s=retry_after_s,
        should_retry_header=should_retry_header,
    )
