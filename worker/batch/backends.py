"""One small interface over the two providers' batch APIs (OpenAI Files + Batches, Anthropic
Message Batches), so the job logic in `worker.batch.jobs` never branches on the provider.

A backend submits one job's requests (all for one model), finds a job it may already have
submitted (after a crash between the provider's create call and the job-state write), reports
progress, cancels, and parses results into `(custom_id, CompletionResult | ProviderError)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from worker.config.models import Catalogue, ModelSpec
from worker.providers.anthropic import (
    AnthropicAdapter,
    batch_request_item,
    parse_batch_result_line,
)
from worker.providers.client import ModelClient
from worker.providers.errors import MalformedResponseError, ProviderError
from worker.providers.openai import OpenAIAdapter, batch_request_line, parse_batch_output_line
from worker.providers.types import CompletionRequest, CompletionResult

JOB_METADATA_KEY = "llmroute_job_id"

# provider limits (per OpenAI input file / per Anthropic batch)
OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200 * 1024 * 1024
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 1024 * 1024

Phase = Literal["running", "ended"]
ItemResult = tuple[str, CompletionResult | ProviderError]


@dataclass(frozen=True, slots=True)
class Submitted:
    provider_batch_id: str
    input_file_id: str | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    phase: Phase
    status: str  # the provider's own status word
    output_file_id: str | None = None
    error_file_id: str | None = None


class BatchBackend(Protocol):
    provider: Literal["openai", "anthropic"]
    max_requests: int
    max_bytes: int

    def encode(self, custom_id: str, request: CompletionRequest) -> bytes:
        """One request as the provider expects it in a batch (its size counts to `max_bytes`)."""
        ...

    async def upload(self, job_id: str, lines: Sequence[bytes]) -> str | None:
        """Stage the input (OpenAI: upload the JSONL file); returns the file id, if any."""
        ...

    async def create(
        self, job_id: str, lines: Sequence[bytes], input_file_id: str | None
    ) -> Submitted: ...

    async def find(self, job_id: str, count: int, since: datetime) -> str | None:
        """The provider batch of `job_id` if it was created (at or after `since`, `count`
        requests), else None."""
        ...

    async def progress(self, provider_batch_id: str) -> Progress: ...

    async def results(self, provider_batch_id: str, progress: Progress) -> list[ItemResult]:
        """Every result line that parses; malformed lines are skipped (their items count as
        missing and are retried or answered with an error by the caller)."""
        ...

    async def cancel(self, provider_batch_id: str) -> None: ...


class OpenAIBatchBackend:
    provider: Literal["openai", "anthropic"] = "openai"
    max_requests = OPENAI_MAX_REQUESTS
    max_bytes = OPENAI_MAX_BYTES

    def __init__(self, transport: OpenAIAdapter, spec: ModelSpec) -> None:
        self.transport = transport
        self.spec = spec

    def encode(self, custom_id: str, request: CompletionRequest) -> bytes:
        return batch_request_line(custom_id, self.spec, request)

    async def upload(self, job_id: str, lines: Sequence[bytes]) -> str | None:
        content = b"\n".join(lines) + b"\n"
        uploaded = await self.transport.upload_batch_file(
            content, filename=f"llmroute-{job_id}.jsonl"
        )
        return uploaded.id

    async def create(
        self, job_id: str, lines: Sequence[bytes], input_file_id: str | None
    ) -> Submitted:
        assert input_file_id is not None
        batch = await self.transport.create_batch(
            input_file_id, metadata={JOB_METADATA_KEY: job_id}
        )
        return Submitted(batch.id, input_file_id)

    async def find(self, job_id: str, count: int, since: datetime) -> str | None:
        after: str | None = None
        horizon = since.timestamp() - 300  # clock skew between us and the provider
        for _ in range(20):  # newest first; stop once past the job's creation time
            page = await self.transport.list_batches(limit=100, after=after)
            for batch in page.data:
                if (batch.metadata or {}).get(JOB_METADATA_KEY) == job_id:
                    return batch.id
            if not page.data or not page.has_more:
                return None
            oldest = page.data[-1].created_at
            if oldest is not None and oldest < horizon:
                return None
            after = page.data[-1].id
        return None

    async def progress(self, provider_batch_id: str) -> Progress:
        batch = await self.transport.retrieve_batch(provider_batch_id)
        ended = batch.status in ("completed", "failed", "expired", "cancelled")
        return Progress(
            "ended" if ended else "running",
            batch.status,
            batch.output_file_id,
            batch.error_file_id,
        )

    async def results(self, provider_batch_id: str, progress: Progress) -> list[ItemResult]:
        out: list[ItemResult] = []
        for file_id in (progress.output_file_id, progress.error_file_id):
            if file_id:
                content = await self.transport.download_file(file_id)
                out.extend(_parse_lines(content, self.spec, parse_batch_output_line))
        return out

    async def cancel(self, provider_batch_id: str) -> None:
        await self.transport.cancel_batch(provider_batch_id)


class AnthropicBatchBackend:
    provider: Literal["openai", "anthropic"] = "anthropic"
    max_requests = ANTHROPIC_MAX_REQUESTS
    max_bytes = ANTHROPIC_MAX_BYTES

    def __init__(self, transport: AnthropicAdapter, spec: ModelSpec) -> None:
        self.transport = transport
        self.spec = spec

    def encode(self, custom_id: str, request: CompletionRequest) -> bytes:
        return batch_request_item(custom_id, self.spec, request)

    async def upload(self, job_id: str, lines: Sequence[bytes]) -> str | None:
        return None  # Anthropic takes the requests inline

    async def create(
        self, job_id: str, lines: Sequence[bytes], input_file_id: str | None
    ) -> Submitted:
        batch = await self.transport.create_message_batch_from_items(lines)
        return Submitted(batch.id)

    async def find(self, job_id: str, count: int, since: datetime) -> str | None:
        """Message Batches carry no metadata: a batch created at or after `since` (less a
        minute of clock skew) with exactly `count` requests is taken to be ours. Workers of one
        group write job state before and after the create call, so this only matters for a
        crash inside that call; two same-sized jobs created by one key within that minute would
        be ambiguous, and then neither is adopted (the job is submitted again)."""
        horizon = since.timestamp() - 60
        after: str | None = None
        matches: list[str] = []
        for _ in range(20):
            page = await self.transport.list_message_batches(limit=100, after_id=after)
            for batch in page.data:
                created = _parse_iso(batch.created_at)
                if created is not None and created < horizon:
                    return matches[0] if len(matches) == 1 else None
                counts = batch.request_counts
                total = (
                    counts.processing
                    + counts.succeeded
                    + counts.errored
                    + counts.canceled
                    + counts.expired
                    if counts is not None
                    else -1
                )
                if total == count:
                    matches.append(batch.id)
            if not page.data or not page.has_more:
                break
            after = page.data[-1].id
        return matches[0] if len(matches) == 1 else None

    async def progress(self, provider_batch_id: str) -> Progress:
        batch = await self.transport.retrieve_message_batch(provider_batch_id)
        phase: Phase = "ended" if batch.processing_status == "ended" else "running"
        return Progress(phase, batch.processing_status)

    async def results(self, provider_batch_id: str, progress: Progress) -> list[ItemResult]:
        content = await self.transport.message_batch_results(provider_batch_id)
        return list(_parse_lines(content, self.spec, parse_batch_result_line))

    async def cancel(self, provider_batch_id: str) -> None:
        await self.transport.cancel_message_batch(provider_batch_id)


def _parse_lines(
    content: bytes, spec: ModelSpec, parse: Callable[[bytes, ModelSpec], ItemResult]
) -> Iterator[ItemResult]:
    for line in content.splitlines():
        if not line.strip():
            continue
        try:
            yield parse(line, spec)
        except MalformedResponseError:
            continue  # the item is then missing from the results: the caller handles it


def _parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def backend_factory(
    client: ModelClient, catalogue: Catalogue
) -> Callable[[str], BatchBackend | None]:
    """model -> its batch backend (None: the catalogue does not mark it `batch`, or no key)."""
    made: dict[str, BatchBackend | None] = {}

    def backend_for(model: str) -> BatchBackend | None:
        if model in made:
            return made[model]
        spec = catalogue.models.get(model)
        backend: BatchBackend | None = None
        if spec is not None and spec.supports_batch:
            try:
                transport = client.adapter_for(model)
            except ProviderError:
                transport = None
            if isinstance(transport, OpenAIAdapter):
                backend = OpenAIBatchBackend(transport, spec)
            elif isinstance(transport, AnthropicAdapter):
                backend = AnthropicBatchBackend(transport, spec)
        made[model] = backend
        return backend

    return backend_for
