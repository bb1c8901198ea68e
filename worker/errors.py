"""One root for every error the worker reports: a stable `code` and `retriable` on each class.

The wire carries the code (`RouteResponse.error.type`, `Attempt.error_type`,
`DeadLetter.error_type`, the span's `error.type`), never a class name: codes are listed in
`schemas/errors.py` and `common.schema.json#/$defs/error_code`, and every class must name its
own (a subclass that does not is refused when it is defined; mypy checks the code is listed).
The codes that were on the wire before kept their values (they were class names).

    WorkerError                 InternalError       retriable   an unexpected failure
    ├── RequestRejected         RequestRejected     no   tenant / policy / budget / eligibility
    ├── RequestDeadlineExceeded DeadlineExceeded    no   the deadline passed before routing
    ├── SourceRecordLost        SourceRecordLost    yes  a batch request's record is gone
    ├── BatchCancelled          BatchCancelled      yes  its batch job was cancelled
    ├── MissingBatchResult      MissingBatchResult  yes  absent from the provider's results
    ├── UnreadableRecord        UnreadableRecord    no   dead letter: bytes not readable
    ├── OversizedRecord         OversizedEvent      no   dead letter: over max_request_bytes
    ├── InvalidRecord           InvalidEvent        no   dead letter: not a valid event
    ├── UnpublishableRecord     Unpublishable       yes  dead letter: result not publishable
    ├── ProviderError ...       (worker.providers.errors: the tree in its docstring)
    └── ScoreError ...          (worker.telemetry.scores: feedback scores sent to Langfuse)

The loop and the pipeline decide retry, fall back or dead-letter from the class, never from
message strings. Configuration errors (`worker.config.ConfigError`) are not here: they stop the
process at start-up and never reach the wire.
"""

from __future__ import annotations

from typing import Any, ClassVar

from schemas.errors import ErrorCode

__all__ = [
    "BatchCancelled",
    "InvalidRecord",
    "MissingBatchResult",
    "OversizedRecord",
    "RequestDeadlineExceeded",
    "RequestRejected",
    "SourceRecordLost",
    "UnpublishableRecord",
    "UnreadableRecord",
    "WorkerError",
]


class WorkerError(Exception):
    """The root. `code`: the stable string on the wire; `retriable`: whether the same request
    may succeed if sent again (after a backoff)."""

    code: ClassVar[ErrorCode] = "InternalError"
    retriable: bool = True  # an instance may say otherwise (a provider's `x-should-retry`)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in vars(cls):
            raise TypeError(f"{cls.__name__} must name its own stable `code` (schemas/errors.py)")


class RequestRejected(WorkerError):
    """The request cannot be routed as asked (unknown tenant or policy, nothing eligible, a
    budget or an override the tenant may not use)."""

    code = "RequestRejected"
    retriable = False


class RequestDeadlineExceeded(WorkerError):
    """The request's deadline passed before it was routed."""

    code = "DeadlineExceeded"
    retriable = False


class SourceRecordLost(WorkerError):
    """A batch request's source record is no longer retained: it cannot be answered."""

    code = "SourceRecordLost"
    retriable = True


class BatchCancelled(WorkerError):
    code = "BatchCancelled"
    retriable = True


class MissingBatchResult(WorkerError):
    code = "MissingBatchResult"
    retriable = True


# Records the worker cannot answer go to the dead-letter topic with their code. Replaying the
# same bytes fails the same way (not retriable), unless the class says otherwise.


class UnreadableRecord(WorkerError):
    """The record's bytes could not be read (a corrupt or undecompressable batch)."""

    code = "UnreadableRecord"
    retriable = False


class OversizedRecord(WorkerError):
    code = "OversizedEvent"
    retriable = False


class InvalidRecord(WorkerError):
    """Not a valid event of its topic's schema, or its reply topic is refused."""

    code = "InvalidEvent"
    retriable = False


class UnpublishableRecord(WorkerError):
    """The record's result could not be published (too large, a reply topic refusing it)."""

    code = "Unpublishable"
    retriable = True
