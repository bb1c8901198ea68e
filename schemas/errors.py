"""The stable error codes of the wire, one per worker error class (`worker.errors`).

`RouteResponse.error.type`, `Attempt.error_type` and `DeadLetter.error_type` carry one of these;
`common.schema.json#/$defs/error_code` lists the same codes, each with what it means. A code is a
contract: a class may be renamed, its code stays. The codes that were on the wire before codes
existed (class names, and the pipeline's own strings) kept their values.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = ["ERROR_CODES", "ErrorCode"]

ErrorCode = Literal[
    # the worker's root: an unexpected failure while handling the request
    "InternalError",
    # the request, before or around any model call
    "RequestRejected",
    "DeadlineExceeded",
    "SourceRecordLost",
    "BatchCancelled",
    "MissingBatchResult",
    # records that go to a dead-letter topic
    "UnreadableRecord",
    "OversizedEvent",
    "InvalidEvent",
    "Unpublishable",
    # model providers (worker.providers.errors)
    "ProviderError",
    "ProviderConnectionError",
    "ProviderTimeoutError",
    "MalformedResponseError",
    "ProviderStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "RequestTimeoutError",
    "ConflictError",
    "RateLimitError",
    "InsufficientQuotaError",
    "InternalServerError",
    "OverloadedError",
    "DeadlineExceededError",
    "CircuitOpenError",
    "RateLimitWaitError",
    "MissingApiKeyError",
    "UnsupportedRequestError",
    "AllModelsFailedError",
    # feedback scores sent to Langfuse (worker.telemetry.scores)
    "ScoreError",
    "ScoreUnavailable",
    "ScoreRejected",
]

ERROR_CODES: Final[tuple[ErrorCode, ...]] = get_args(ErrorCode)
