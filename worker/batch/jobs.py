"""Batch jobs: accumulate, submit, record durably, poll, publish, tombstone.

One job = one provider batch for one model. Its life, and what a crash at each step leaves:

1. accumulate: routed requests wait in memory per model until `flush_requests`, `flush_bytes`
   (both capped by the provider's limits) or `flush_age_s`. Their offsets stay unfinished, so a
   crash here only means the records are consumed again.
2. record "accumulated": one record per source partition (worker.batch.store), acknowledged
   before anything reaches the provider.
3. upload (OpenAI input file) and create the provider batch, tagged with the job id (OpenAI
   metadata; Anthropic: matched by size and time, see `AnthropicBatchBackend.find`).
4. record "submitted" with the provider batch id; only then are the source offsets finished
   (and committed). A member that reads an "accumulated" record back (a crash between 2 and 4)
   asks the provider whether the batch exists: it adopts it, or drops the record and lets the
   requests be consumed again. No request is submitted twice.
5. poll with backoff until the batch ends; download the results (any order), match them by
   `custom_id`, read the original requests back from the source topic, and hand each to
   `respond` (the loop publishes the response and its dedupe marker; failed, expired or missing
   items are retried interactively or answered with an error). Then tombstone the records. A
   crash while publishing repeats the publishing; answered request ids are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import msgspec

import schemas
from schemas.trace import request_key
from worker.batch.backends import BatchBackend, Progress
from worker.batch.crash import crash_point
from worker.batch.store import JobStore, chunks, read_source, record_key
from worker.config import BatchSettings
from worker.providers.errors import ProviderError
from worker.providers.types import CompletionRequest, CompletionResult

log = logging.getLogger(__name__)

_T = TypeVar("_T")

Outcome = CompletionResult | ProviderError | None  # None: the item is missing from the results


@dataclass(frozen=True, slots=True)
class Finished:
    """One item of an ended job, handed to `respond`."""

    item: schemas.BatchItem
    request: schemas.RouteRequest | None  # None: the source record is no longer retained
    outcome: Outcome
    model: str
    job_id: str
    cancelled: bool  # the job was cancelled (by a control event or at the provider)


Respond = Callable[[Finished], Awaitable[None]]

PRE_SUBMIT = ("accumulated", "uploaded")


@dataclass(eq=False, slots=True)
class _Waiting:
    partition: int
    offset: int
    request_id: str
    tenant: str | None
    custom_id: str
    line: bytes
    done: asyncio.Future[bool]
    decision: schemas.DecisionInfo | None = None
    traceparent: str | None = None


@dataclass(slots=True)
class _Bucket:
    items: list[_Waiting] = field(default_factory=list)
    size: int = 0
    first_at: float = 0.0


@dataclass(eq=False)
class _Job:
    job_id: str
    model: str
    provider_batch_id: str
    parts: dict[bytes, schemas.BatchJob] = field(default_factory=dict)
    cancelled: bool = False
    publishing: bool = False  # results downloaded; answers going out
    task: asyncio.Task[None] | None = None


class BatchManager:
    def __init__(
        self,
        settings: BatchSettings,
        source_topic: str,
        store: JobStore,
        backend_for: Callable[[str], BatchBackend | None],
        respond: Respond,
        client_kwargs: dict[str, object],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.source_topic = source_topic
        self.store = store
        self.backend_for = backend_for
        self.respond = respond
        self.client_kwargs = dict(client_kwargs)
        self.clock = clock
        self.wall_clock = wall_clock
        self._buckets: dict[str, _Bucket] = {}
        self._jobs: dict[str, _Job] = {}
        self._batched: dict[int, dict[str, str]] = defaultdict(dict)  # partition: rid -> job
        self._flushes: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max(1, settings.max_open_jobs))
        self._ticker: asyncio.Task[None] | None = None
        self.stats = {
            "submitted_jobs": 0,
            "submitted_requests": 0,
            "adopted_jobs": 0,
            "dropped_jobs": 0,
            "published": 0,
            "failed_items": 0,
        }

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick())

    async def close(self, drain_timeout_s: float) -> None:
        """Flush what waits (the loop is draining), wait for the submissions, stop polling."""
        for model in list(self._buckets):
            self._flush(model)
        if self._flushes:
            await asyncio.wait(set(self._flushes), timeout=drain_timeout_s)
        publishing = {j.task for j in self._jobs.values() if j.publishing and j.task}
        if publishing:  # finish publishing what was downloaded (and tombstone it)
            await asyncio.wait(publishing, timeout=drain_timeout_s)
        tasks = [t for t in (self._ticker, *(j.task for j in self._jobs.values())) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def open_jobs(self) -> int:
        return len(self._jobs)

    def waiting(self) -> int:
        return sum(len(b.items) for b in self._buckets.values())

    # ------------------------------------------------------------ accumulate and submit

    def can_batch(self, model: str) -> bool:
        return self.backend_for(model) is not None

    def is_batched(self, partition: int, request_id: str, tenant: str | None = None) -> bool:
        """Whether a recorded, submitted job already holds this request (a redelivery)."""
        return request_key(tenant, request_id) in self._batched.get(partition, ())

    async def submit(
        self,
        partition: int,
        offset: int,
        request_id: str,
        model: str,
        call: CompletionRequest,
        *,
        decision: schemas.DecisionInfo | None = None,
        traceparent: str | None = None,
        tenant: str | None = None,
    ) -> bool:
        """Queue one routed request; True once a submitted job that holds it is recorded (its
        offset may then be committed), False when it cannot go through a batch (answer it
        interactively). `decision` and `traceparent` (the submission span's) are kept with the
        item: the answer carries the decision and its span links to the submission."""
        backend = self.backend_for(model)
        if backend is None:
            return False
        custom_id = f"p{partition}-o{offset}"
        line = backend.encode(custom_id, call)
        max_requests = min(self.settings.flush_requests, backend.max_requests)
        max_bytes = min(self.settings.flush_bytes, backend.max_bytes)
        if len(line) + 1 > max_bytes:
            return False
        bucket = self._buckets.get(model)
        if bucket is not None and bucket.size + len(line) + 1 > max_bytes:
            self._flush(model)
            bucket = None
        if bucket is None:
            bucket = self._buckets[model] = _Bucket(first_at=self.clock())
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        bucket.items.append(
            _Waiting(
                partition, offset, request_id, tenant, custom_id, line, done, decision, traceparent
            )
        )
        bucket.size += len(line) + 1
        if len(bucket.items) >= max_requests:
            self._flush(model)
        return await done

    async def _tick(self) -> None:
        period = min(1.0, self.settings.flush_age_s / 4)
        while True:
            await asyncio.sleep(period)
            now = self.clock()
            for model, bucket in list(self._buckets.items()):
                if bucket.items and now - bucket.first_at >= self.settings.flush_age_s:
                    self._flush(model)

    def flush_all(self) -> None:
        for model in list(self._buckets):
            self._flush(model)

    def _flush(self, model: str) -> None:
        bucket = self._buckets.pop(model, None)
        if bucket is None or not bucket.items:
            return
        task = asyncio.create_task(self._submit_job(model, bucket.items))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _submit_job(self, model: str, waiting: list[_Waiting]) -> None:
        waiting = [w for w in waiting if not w.done.done()]  # revoked meanwhile
        if not waiting:
            return
        backend = self.backend_for(model)
        assert backend is not None
        async with self._slots:
            job_id = uuid.uuid4().hex[:20]
            now = self.wall_clock()
            parts = self._parts(job_id, backend, model, waiting, now)
            try:
                await self.store.put((k, p, s) for k, (p, s) in parts.items())
                crash_point("accumulated")
                lines = [w.line for w in waiting]
                submitted_id = await self._create(backend, job_id, lines, len(waiting), now)
            except Exception as exc:
                log.exception("batch job %s for %s could not be submitted", job_id, model)
                with contextlib.suppress(Exception):
                    await self.store.put((k, p, None) for k, (p, _) in parts.items())
                for w in waiting:
                    if not w.done.done():
                        w.done.set_result(False)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            job = _Job(job_id, model, submitted_id)
            recorded = {
                k: (
                    p,
                    msgspec.structs.replace(
                        s,
                        status="submitted",
                        provider_batch_id=submitted_id,
                        updated_at=self.wall_clock(),
                    ),
                )
                for k, (p, s) in parts.items()
            }
            await self.store.put((k, p, s) for k, (p, s) in recorded.items())
            self._own(job, {k: s for k, (_, s) in recorded.items()})
            self.stats["submitted_jobs"] += 1
            self.stats["submitted_requests"] += len(waiting)
            log.info(
                "batch job %s: %d requests for %s submitted as %s",
                job_id,
                len(waiting),
                model,
                submitted_id,
            )
            for w in waiting:
                if not w.done.done():
                    w.done.set_result(True)

    def _parts(
        self,
        job_id: str,
        backend: BatchBackend,
        model: str,
        waiting: list[_Waiting],
        now: datetime,
    ) -> dict[bytes, tuple[int, schemas.BatchJob]]:
        by_partition: dict[int, list[schemas.BatchItem]] = defaultdict(list)
        for w in waiting:
            by_partition[w.partition].append(
                schemas.BatchItem(
                    custom_id=w.custom_id,
                    request_id=w.request_id,
                    tenant=w.tenant,
                    topic=self.source_topic,
                    partition=w.partition,
                    offset=w.offset,
                    decision=w.decision,
                    traceparent=w.traceparent,
                )
            )
        out: dict[bytes, tuple[int, schemas.BatchJob]] = {}
        for partition, items in by_partition.items():
            for n, chunk in enumerate(chunks(items)):
                out[record_key(self.source_topic, partition, job_id, n)] = (
                    partition,
                    schemas.BatchJob(
                        schema_version=1,
                        job_id=job_id,
                        provider=backend.provider,
                        model=model,
                        status="accumulated",
                        items=chunk,
                        created_at=now,
                        updated_at=now,
                        requests_total=len(waiting),
                    ),
                )
        return out

    async def _create(
        self, backend: BatchBackend, job_id: str, lines: list[bytes], count: int, since: datetime
    ) -> str:
        file_id = await _retrying(lambda: backend.upload(job_id, lines))
        crash_point("uploaded")
        try:
            submitted = await _retrying(lambda: backend.create(job_id, lines, file_id))
        except ProviderError:
            # the create call may have reached the provider before failing: look before giving up
            found = await backend.find(job_id, count, since)
            if found is None:
                raise
            return found
        crash_point("created")
        return submitted.provider_batch_id

    # ------------------------------------------------------------ ownership

    def _own(self, job: _Job, parts: dict[bytes, schemas.BatchJob]) -> None:
        known = self._jobs.setdefault(job.job_id, job)
        known.parts.update(parts)
        for state in parts.values():
            if state.status == "cancelling":
                known.cancelled = True
            for item in state.items:
                self._batched[item.partition][request_key(item.tenant, item.request_id)] = (
                    job.job_id
                )
        if known.task is None or known.task.done():
            known.task = asyncio.create_task(self._follow(known))

    async def load(self, partition: int) -> None:
        """Take over the jobs of a newly assigned source partition."""
        records = await self.store.load(self.source_topic, [partition])
        by_job: dict[str, dict[bytes, schemas.BatchJob]] = defaultdict(dict)
        for key, state in records.items():
            by_job[state.job_id][key] = state
        for job_id, parts in by_job.items():
            first = next(iter(parts.values()))
            if first.status in PRE_SUBMIT or first.provider_batch_id is None:
                await self._resolve_unsubmitted(job_id, parts)
                continue
            self._own(_Job(job_id, first.model, first.provider_batch_id), parts)

    async def _resolve_unsubmitted(self, job_id: str, parts: dict[bytes, schemas.BatchJob]) -> None:
        """A job recorded before submission by a member that died: adopt it if the provider
        has it, else drop the record (its requests are consumed again)."""
        first = next(iter(parts.values()))
        backend = self.backend_for(first.model)
        found = None
        if backend is not None:
            found = await _retrying(
                lambda: backend.find(job_id, first.requests_total or 0, first.created_at)
            )
        source = {k: s.items[0].partition for k, s in parts.items()}
        if found is None:
            await self.store.put((k, source[k], None) for k in parts)
            self.stats["dropped_jobs"] += 1
            log.info("batch job %s was never submitted; its requests will be batched again", job_id)
            return
        now = self.wall_clock()
        adopted = {
            k: msgspec.structs.replace(
                s, status="submitted", provider_batch_id=found, updated_at=now
            )
            for k, s in parts.items()
        }
        await self.store.put((k, source[k], s) for k, s in adopted.items())
        self.stats["adopted_jobs"] += 1
        log.info("batch job %s was submitted as %s before a crash; adopted", job_id, found)
        self._own(_Job(job_id, first.model, found), adopted)

    def revoke(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        for model, bucket in list(self._buckets.items()):
            keep = [w for w in bucket.items if w.partition not in gone]
            for w in bucket.items:
                if w.partition in gone and not w.done.done():
                    w.done.cancel()
            bucket.items = keep
            bucket.size = sum(len(w.line) + 1 for w in keep)
            if not keep:
                del self._buckets[model]
        for p in gone:
            self._batched.pop(p, None)
        for job_id, job in list(self._jobs.items()):
            job.parts = {k: s for k, s in job.parts.items() if s.items[0].partition not in gone}
            if not job.parts:
                if job.task is not None:
                    job.task.cancel()
                del self._jobs[job_id]

    async def on_control(self, command: schemas.Control) -> None:
        """`cancel_batch`: cancel the named job when this member holds it."""
        if command.action != "cancel_batch" or not command.job_id:
            return
        if await self.cancel(command.job_id):
            log.info("batch job %s cancelled (command %s)", command.job_id, command.command_id)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job this member owns (by our job id or the provider's batch id)."""
        job = self._jobs.get(job_id) or next(
            (j for j in self._jobs.values() if j.provider_batch_id == job_id), None
        )
        if job is None:
            return False
        job.cancelled = True
        backend = self.backend_for(job.model)
        if backend is not None:
            await _retrying(lambda: backend.cancel(job.provider_batch_id))
        now = self.wall_clock()
        marked = {
            k: msgspec.structs.replace(s, status="cancelling", updated_at=now)
            for k, s in job.parts.items()
        }
        await self.store.put((k, s.items[0].partition, s) for k, s in marked.items())
        job.parts.update(marked)
        return True

    # ------------------------------------------------------------ poll and publish

    async def _follow(self, job: _Job) -> None:
        backend = self.backend_for(job.model)
        if backend is None:
            log.error("batch job %s: model %s is no longer batchable here", job.job_id, job.model)
            return
        delay = self.settings.poll_initial_s
        first = True
        while True:
            try:
                progress = await backend.progress(job.provider_batch_id)
            except ProviderError as exc:
                if exc.retriable:
                    log.warning("polling batch %s: %s", job.provider_batch_id, exc)
                    await asyncio.sleep(delay)
                    continue
                log.error("batch %s is gone at the provider: %s", job.provider_batch_id, exc)
                progress = Progress("ended", "missing")
            if first:
                crash_point("polling")
                first = False
            if progress.phase == "ended":
                break
            await asyncio.sleep(delay)
            delay = min(delay * self.settings.poll_multiplier, self.settings.poll_max_s)
        results: list[tuple[str, CompletionResult | ProviderError]] = []
        if progress.status != "missing":
            results = await _retrying(lambda: backend.results(job.provider_batch_id, progress))
        crash_point("downloaded")
        if progress.status in ("cancelled", "cancelling", "canceling"):
            job.cancelled = True
        by_id = dict(results)
        job.publishing = True
        total = sum(len(s.items) for s in job.parts.values())
        published = 0
        while job.parts:  # parts can arrive while publishing (another partition's load)
            key, state = next(iter(job.parts.items()))
            total = max(total, published + sum(len(s.items) for s in job.parts.values()))
            try:
                published = await self._publish_part(job, state, by_id, published, total)
                await self.store.put([(key, state.items[0].partition, None)])
            except Exception:  # Kafka trouble: publishing again is safe (answered ids skip)
                log.exception("batch job %s: publishing failed; retrying", job.job_id)
                await asyncio.sleep(self.settings.poll_initial_s)
                continue
            job.parts.pop(key, None)
            for item in state.items:
                self._batched[item.partition].pop(request_key(item.tenant, item.request_id), None)
        self._jobs.pop(job.job_id, None)
        log.info("batch job %s (%s) done: %d responses", job.job_id, progress.status, published)

    async def _publish_part(
        self,
        job: _Job,
        state: schemas.BatchJob,
        by_id: dict[str, CompletionResult | ProviderError],
        published: int,
        total: int,
    ) -> int:
        partition = state.items[0].partition
        values = await read_source(
            self.client_kwargs, state.items[0].topic, partition, (i.offset for i in state.items)
        )
        step = max(1, min(256, total // 4))
        for lo in range(0, len(state.items), step):
            finished = []
            for item in state.items[lo : lo + step]:
                request = _decode(values.get(item.offset))
                outcome = by_id.get(item.custom_id)
                if not isinstance(outcome, CompletionResult):
                    self.stats["failed_items"] += 1
                finished.append(
                    Finished(item, request, outcome, job.model, job.job_id, job.cancelled)
                )
            await asyncio.gather(*(self.respond(f) for f in finished))
            before, published = published, published + len(finished)
            self.stats["published"] += len(finished)
            if before < total / 2 <= published:
                crash_point("half_published")
        return published


def _decode(value: bytes | None) -> schemas.RouteRequest | None:
    if value is None:
        return None
    try:
        return schemas.decode(value, schemas.RouteRequest)
    except schemas.InvalidEvent:
        return None


async def _retrying(call: Callable[[], Awaitable[_T]], attempts: int = 4) -> _T:
    """Retry a provider call on retriable errors (the transports do not retry batch calls)."""
    delay = 1.0
    for attempt in range(attempts):
        try:
            return await call()
        except ProviderError as exc:
            if not exc.retriable or attempt == attempts - 1:
                raise
            await asyncio.sleep(getattr(exc, "retry_after_s", None) or delay)
            delay *= 2
    raise AssertionError("unreachable")
