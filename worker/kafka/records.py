"""The contract between the Kafka shell and the pipeline: what the member hands over for one
record, and what the pipeline hands back.

    RecordInfo   where a request came from (topic, partition, offset, key, headers, timestamp)
    Handled      the pipeline's answer: the response, the decision event, where to send them
    Deferred     a batch-mode request, routed: the member gives it to the batch jobs
    Pipeline     what the member calls (`prepare` once per fetch, `handle` once per record)

Both sides import this module; the pipeline never imports the member (`worker.kafka.member`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import schemas
from worker.providers.types import CompletionRequest

if TYPE_CHECKING:
    from worker.batch.jobs import Finished

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class RecordInfo:
    """Where a request came from; what tracing and the dead-letter record need."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: Headers
    timestamp_ms: int | None


@dataclass(frozen=True)
class Handled:
    """What the pipeline made of one request: the response, and the decision to publish."""

    response: schemas.RouteResponse
    decision: schemas.RoutingDecision | None = None
    reply_topic: str | None = None
    headers: Headers = field(default_factory=list)
    routing_ms: float | None = None  # time the routing decision took
    strong_cost_usd: float | None = None  # the same usage priced at the strong model


@dataclass(frozen=True)
class Deferred:
    """A batch-mode request, routed: the member hands it to the batch jobs (`worker.batch`)."""

    model: str
    call: CompletionRequest
    decision: schemas.RoutingDecision | None = None


class Pipeline(Protocol):
    def prepare(self, requests: Sequence[schemas.RouteRequest]) -> Sequence[object]:
        """Work done once for the valid requests of a fetched batch (e.g. one batched routing
        `predict`); item i is handed to `handle` of requests[i]. Must not raise."""
        ...

    async def handle(
        self,
        request: schemas.RouteRequest,
        record: RecordInfo,
        prepared: object = None,
        *,
        interactive: bool = False,
    ) -> Handled | Deferred: ...

    def batch_response(self, finished: Finished) -> Handled: ...

    def redacted(self, finished: Finished) -> Finished:
        """The ended batch item with its provider strings redacted (before any use)."""
        ...

    def internal_error(
        self, request: schemas.RouteRequest, record: RecordInfo, exc: BaseException
    ) -> Handled: ...
