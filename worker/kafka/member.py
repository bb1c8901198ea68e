"""The consumer-group loop: fetch, hand each record to the pipeline, publish, commit what is done.

At least once, nothing lost:
- an offset is finished only when its response (or dead-letter record) is acknowledged by the
  broker; each partition commits its longest finished prefix (`worker.kafka.offsets`);
- an invalid or oversized record goes to the dead-letter topic with its original bytes;
- a request id that already has a published response is skipped (`worker.kafka.dedupe`);
- above `max_in_flight` unfinished records the loop pauses fetching and keeps polling;
- a revoked partition is drained (bounded) and committed before it moves;
- `stop()` (SIGTERM) stops fetching, drains within `drain_timeout_s`, commits and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    CorruptRecordException,
    IllegalStateError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    UnsupportedCodecError,
)

import schemas
from schemas.trace import request_key
from worker.batch.backends import BatchBackend
from worker.batch.jobs import BatchManager, Finished
from worker.batch.store import JobStore
from worker.config import BatchSettings
from worker.config.kafka import KafkaSettings, LoopSettings, TopicSettings
from worker.config.telemetry import TelemetryConfig
from worker.errors import UnpublishableRecord
from worker.kafka.control import ControlFollower
from worker.kafka.dedupe import AnsweredIds, load_answered
from worker.kafka.intake import Decoded, decode, record_info
from worker.kafka.journal import Journal, load_journal
from worker.kafka.observer import LoopObserver, NullObserver, quietly
from worker.kafka.offsets import OffsetTracker
from worker.kafka.publisher import Publisher, Publishing
from worker.kafka.raw import RawFetcher, read_batches
from worker.kafka.records import Deferred, Handled, Pipeline, RecordInfo
from worker.kafka.service import Controlled, Service
from worker.kafka.topics import partition_counts
from worker.kafka.transactions import TransactionAborted
from worker.logs import Every
from worker.providers.types import CompletionResult
from worker.telemetry import RequestSpan, Tracing

log = logging.getLogger(__name__)

# what `getmany` raises on a record it cannot read (besides non-Kafka errors of its reader)
_UNREADABLE = (CorruptRecordException, UnsupportedCodecError)
# publish failures that are the record's own fault (retrying cannot help it for long); any other
# Kafka error is the broker's trouble and is retried until the member stops
_RECORD_FAULTS = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    TimeoutError,  # a reply topic that never gets metadata (absent, auto-create off)
)


def _record_fault(exc: BaseException) -> bool:
    if isinstance(exc, TransactionAborted):  # another record's fault, or the broker's
        return False
    return isinstance(exc, _RECORD_FAULTS) or not isinstance(exc, KafkaError)


class _NoSpan:
    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class Worker:
    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicSettings,
        settings: LoopSettings,
        pipeline: Pipeline,
        observer: LoopObserver | None = None,
        tracing: Tracing | None = None,
        clock: Callable[[], float] = time.monotonic,
        batch: BatchSettings | None = None,
        batch_backend: Callable[[str], BatchBackend | None] | None = None,
        on_share: Callable[[float], None] | None = None,
        services: Sequence[Service] = (),
        publisher: Publisher | None = None,
    ) -> None:
        self.kafka = kafka
        # told this member's share of the request partitions (owned / total) on every assignment
        # (the provider client divides the deployments' rate limits by it)
        self.on_share = on_share
        self.batch_settings = batch
        self.batch_backend = batch_backend
        self.batches: BatchManager | None = None
        self.topics = topics
        self.settings = settings
        self.pipeline = pipeline
        self.observer: LoopObserver = observer or NullObserver()
        self.tracing = tracing or Tracing(TelemetryConfig())
        self.clock = clock
        self.tracker = OffsetTracker()
        # per source partition: the answered request ids, loaded once per assignment (records can
        # arrive before the assignment callback has finished, so loading is shared and awaited)
        self._answered: dict[int, asyncio.Task[AnsweredIds]] = {}
        # per source partition: answers journalled by a member that died before publishing
        # them (`worker.kafka.journal`), loaded with the answered ids
        self._journals: dict[int, Journal] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        # revoked partitions whose requests were still in flight, until the assignment says
        # whether they came back (True: go on publishing; False: they moved, drop the work)
        self._held: dict[TopicPartition, asyncio.Future[bool]] = {}
        self._stopping = asyncio.Event()
        self._paused = False
        self._done_partitions = 0
        self._journal_partitions = 0
        self._journal_missing_said = False
        self._jobs_partitions = 0
        self._control_partitions = 0
        # started once the clients have started, stopped after the drain and the last commit
        self.services = tuple(services)
        # operator commands from the control topic (`schemas.Control`) go to these
        self._controlled: list[Controlled] = [s for s in self.services if isinstance(s, Controlled)]
        self.control = ControlFollower(kafka.common_kwargs(), topics.control, self._controlled)
        self._source_partitions = 0
        self.ready = asyncio.Event()
        self._readiness: asyncio.Task[None] | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._raw = RawFetcher(kafka.common_kwargs)
        # the response, decision, dedupe marker, dead letter and shadow records
        self.publisher = publisher or Publisher(kafka, topics, settings, self.observer)
        self.stats = self.publisher.stats  # "published", "dead_letters", and the member's own:
        self.stats.update(records=0, duplicates=0, batched=0, abandoned=0, journal_replays=0)
        self._in_flight_ids: dict[tuple[str, str], asyncio.Future[None]] = {}
        self.broker_reachable = True
        self.in_flight_bytes = 0  # record bytes (value + key) of the records in flight
        # requests in the pipeline (routing, model calls), and answers not yet published: what
        # a crash of this member would make the next owner do again
        self.calling = 0
        self.answers_held = 0
        limit = settings.max_model_calls
        self._call_slots = asyncio.Semaphore(limit) if limit is not None else None
        self._mean_record_bytes = 1024
        self._trouble_count = 0
        self._trouble_logged = Every(10.0)
        # since when the member has been out of its group: subscribed or revoked, and not
        # assigned since (None: in the group)
        self._out_of_group_since: float | None = None

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        pump: asyncio.Task[None] | None = None  # the transactions' commit task, when on
        try:
            await self.publisher.start()
            common = self.kafka.common_kwargs()
            self.consumer = AIOKafkaConsumer(
                group_id=self.kafka.group_id,
                group_instance_id=self.kafka.instance_id(),
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=self.kafka.session_timeout_ms,
                heartbeat_interval_ms=self.kafka.heartbeat_interval_ms,
                max_poll_interval_ms=self.kafka.max_poll_interval_ms,
                max_poll_records=self.kafka.max_poll_records,
                # one fetch brings at most the in-flight byte bound: in flight stays under twice it
                fetch_max_bytes=min(self.kafka.fetch_max_bytes, self.settings.max_in_flight_bytes),
                **common,
            )
            # from here on the consumer is stopped whatever happens, its start included (a start
            # cancelled on a slow broker must not leave an unclosed client behind)
            try:
                await self.consumer.start()
                await self._partition_counts()
                if self.kafka.transactions:
                    await self._start_transactions()
                for service in self.services:
                    await service.start()
                self._start_batches()
                control = asyncio.create_task(self._follow_control())
                watch = asyncio.create_task(self._watch_broker())
                txn = self.publisher.txn
                pump = asyncio.create_task(txn.run() if txn is not None else _forever())
                self._out_of_group_since = self.clock()
                self.consumer.subscribe([self.topics.requests], listener=_Rebalance(self))
                joined = asyncio.create_task(self._watch_group())
                try:
                    await self._poll_until_stopped()
                finally:
                    control.cancel()
                    watch.cancel()
                    joined.cancel()
                    await asyncio.wait([control, watch, joined], timeout=10)
                if self.batches is not None:
                    self.batches.flush_all()  # what waits for a batch is submitted, not dropped
                self._release_held(set())  # stopped mid-rebalance: nothing held comes back
                await self._drain(self.settings.drain_timeout_s)  # (transactions still commit)
                pump.cancel()
                await asyncio.wait([pump], timeout=10)
                await self._commit()
                for service in reversed(self.services):
                    try:
                        await service.stop()
                    except Exception:
                        log.exception("stopping %s failed", type(service).__name__)
            finally:
                if self.batches is not None:
                    await self.batches.close(self.settings.drain_timeout_s)
                await self._cancel_leftovers()
                if pump is not None and not pump.done():  # the poll loop raised: stop committing
                    pump.cancel()
                    await asyncio.wait([pump], timeout=10)
                if self.publisher.txn is not None:
                    await close_quietly("the transactional producer", self.publisher.txn.close)
                await close_quietly("the raw fetch client", self._raw.close)
                await close_quietly("the consumer", self.consumer.stop)
        finally:
            await close_quietly("the producer", self.publisher.stop)

    async def _start_transactions(self) -> None:
        """Responses, markers and finished offsets in one transaction per interval. The
        transactional id is the static member id when there is one (a restarted member fences
        and aborts what its predecessor left open)."""
        instance = self.kafka.instance_id() or f"{self.settings.worker_id}-{uuid.uuid4().hex[:8]}"
        await self.publisher.start_transactions(
            f"{self.kafka.group_id}.{instance}",
            offsets=self.tracker.to_commit,
            committed=self.tracker.committed,
            on_fatal=lambda _: self.stop(),
        )

    async def _watch_group(self, every_s: float = 1.0) -> None:
        """A member out of its group for `join_warn_s` (its join or a rebalance never completes:
        no group coordinator, or another member holding the rebalance) says so, then once a
        minute, and says when it is back: otherwise it would sit silent, with no assignment,
        no lag and no error."""
        warned = Every(60.0)
        while True:
            await asyncio.sleep(every_s)
            since = self._out_of_group_since
            now = self.clock()
            if since is None:
                if warned.fired:
                    log.info("in consumer group %r again", self.kafka.group_id)
                    warned.reset()
                continue
            if now - since >= self.settings.join_warn_s and warned.due(now):
                log.warning(
                    "not in consumer group %r for %.0fs: no join or rebalance has completed, so "
                    "this member has no partitions. Is the group coordinator available (the "
                    "__consumer_offsets topic needs offsets.topic.replication.factor brokers)? "
                    "Does another member of the group hold the rebalance (a revoke callback "
                    "or poll loop stuck, up to its max.poll.interval.ms)?",
                    self.kafka.group_id,
                    now - since,
                )

    async def _watch_broker(self, every_s: float = 2.0) -> None:
        """Readiness follows the broker: unreachable (no metadata answer within 5 s) makes the
        member unready within `every_s + 5` seconds, logged once per minute with a count;
        ready again when it answers."""
        down_since: float | None = None
        failures = 0
        logged = Every(60.0)
        while True:
            await asyncio.sleep(every_s)
            try:
                await self._raw.probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                now = self.clock()
                if down_since is None:
                    down_since = now
                    self.broker_reachable = False
                    quietly(self.observer.ready, False, "broker unreachable")
                if logged.due(now):
                    log.warning(
                        "the Kafka cluster does not answer (%s: %s); %d failed probes over %.0fs",
                        type(exc).__name__,
                        exc,
                        failures,
                        now - down_since,
                    )
                continue
            if down_since is not None:
                log.info("the Kafka cluster answers again after %.0fs", self.clock() - down_since)
                down_since, failures = None, 0
                logged.reset()
                self.broker_reachable = True
                if self.ready.is_set():
                    quietly(self.observer.ready, True, "broker reachable again")

    async def _cancel_leftovers(self) -> None:
        """Requests still in flight after the drain, and partition-state loads: cancelled (their
        offsets stay uncommitted, so the next owner redoes them), never left to the caller."""
        leftovers: list[asyncio.Task[Any]] = [
            t for tasks in self._tasks.values() for t in tasks if not t.done()
        ]
        leftovers += [t for t in self._answered.values() if not t.done()]
        if self._readiness is not None and not self._readiness.done():
            leftovers.append(self._readiness)
        for task in leftovers:
            task.cancel()
        if leftovers:
            _, stuck = await asyncio.wait(leftovers, timeout=10)
            if stuck:
                log.warning("%d tasks did not stop within 10 s of being cancelled", len(stuck))

    async def _partition_counts(self) -> None:
        t = self.topics
        names = [t.requests, t.done, t.batch_jobs, t.control]
        if self.settings.answer_journal:
            names.append(t.journal)
        counts = await partition_counts(self.kafka.common_kwargs(), names)
        self._control_partitions = counts.get(self.topics.control, 0)
        self._source_partitions = counts.get(self.topics.requests, 0)
        self._done_partitions = counts.get(self.topics.done, 0)
        self.publisher.done_partitions = self._done_partitions
        journal = counts.get(t.journal, 0)
        if self.settings.answer_journal and not journal and not self._journal_missing_said:
            log.warning("topic %s is missing: paid answers are not journalled", t.journal)
            self._journal_missing_said = True
        self._journal_partitions = self.publisher.journal_partitions = journal
        self._jobs_partitions = counts.get(self.topics.batch_jobs, 0)

    def _start_batches(self) -> None:
        settings, backend = self.batch_settings, self.batch_backend
        if settings is None or not settings.enabled or backend is None:
            return
        if not self._jobs_partitions:
            log.warning(
                "topic %s is missing: batch requests are answered interactively",
                self.topics.batch_jobs,
            )
            return
        assert self.producer is not None
        store = JobStore(
            self.producer,
            self.kafka.common_kwargs(),
            self.topics.batch_jobs,
            self._jobs_partitions,
        )
        self.batches = batches = BatchManager(
            settings,
            self.topics.requests,
            store,
            backend,
            self._batch_finished,
            self.kafka.common_kwargs(),
            clock=self.clock,
        )
        batches.start()
        self._controlled.append(batches)  # cancel_batch

    @property
    def producer(self) -> AIOKafkaProducer | None:
        return self.publisher.producer

    async def _follow_control(self) -> None:
        """Apply operator commands published after start-up (`worker.kafka.control`)."""
        if self._control_partitions:
            await self.control.run()

    @property
    def control_ready(self) -> asyncio.Event:
        """Set once commands published from now on are applied."""
        return self.control.ready

    # ------------------------------------------------------------ the loop

    async def _poll_until_stopped(self) -> None:
        assert self.consumer is not None
        next_commit = self.clock()
        interval_s = self.settings.commit_interval_ms / 1000
        while not self._stopping.is_set():
            self.observer.heartbeat()
            # fetch no more than there is room for, so in-flight work never exceeds the bound
            room = max(1, self.settings.max_in_flight - self.tracker.in_flight())
            if self.in_flight_bytes:  # and no more bytes than there is room for (on average)
                free = self.settings.max_in_flight_bytes - self.in_flight_bytes
                room = max(1, min(room, free // max(1, self._mean_record_bytes)))
            try:
                batch = await self.consumer.getmany(timeout_ms=100, max_records=room)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, KafkaError) and not isinstance(exc, _UNREADABLE):
                    log.warning("fetching failed (%s: %s)", type(exc).__name__, exc)
                    await asyncio.sleep(0.5)
                else:  # a record aiokafka cannot read: stops only that record
                    await self._salvage(exc)
                continue
            if batch:
                self._start_batch(batch)
            self._backpressure()
            if self.clock() >= next_commit:
                if self.publisher.txn is None:  # else committed with each transaction
                    await self._commit()
                self._report_lag()
                next_commit = self.clock() + interval_s

    def _start_batch(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Decode every record of a fetch, let the pipeline prepare the valid requests at once
        (one batched routing `predict`), then start one task per record."""
        decoded: list[tuple[TopicPartition, Any, Decoded]] = []
        requests: list[schemas.RouteRequest] = []
        for tp, records in batch.items():
            for record in records:
                item = decode(record, self.settings, self.topics)
                decoded.append((tp, record, item))
                if isinstance(item, schemas.RouteRequest):
                    requests.append(item)
        try:
            prepared = iter(self.pipeline.prepare(requests) if requests else ())
        except Exception:  # a bug: each request is then handled unprepared
            log.exception("pipeline.prepare failed on %d requests", len(requests))
            prepared = iter(())
        for tp, record, item in decoded:
            ready = next(prepared, None) if isinstance(item, schemas.RouteRequest) else None
            self._start(tp, record, item, ready)

    async def _salvage(self, exc: Exception) -> None:
        """`getmany` raised on a record it cannot read (and would again on every poll): read
        the partitions' raw batches from their positions, start every readable record, leave
        the unreadable ones to the dead-letter path, and move the partition past them."""
        assert self.consumer is not None
        # records aiokafka had already taken for other partitions in the failed call were lost
        # with the exception (their positions moved on): fetch them again from what we received
        for tp in self.consumer.assignment():
            expected = self.tracker.next_offset(tp)
            if expected is None:  # nothing received yet: where this assignment started
                expected = await self.consumer.committed(tp)
            if expected is None:  # no commit yet: auto_offset_reset="earliest"
                expected = (await self.consumer.beginning_offsets([tp]))[tp]
            if expected is not None and await self.consumer.position(tp) > expected:
                self.consumer.seek(tp, expected)
        paused = self.consumer.paused()
        found = False
        for tp in sorted(self.consumer.assignment() - paused):
            try:
                position = await self.consumer.position(tp)
                data = await self._raw.fetch(tp, position)
            except KafkaError as fetch_exc:
                log.warning("reading %s raw failed: %s", tp, fetch_exc)
                continue
            salvaged = read_batches(tp.topic, tp.partition, data, position)
            if not salvaged.found_problem:
                continue
            found = True
            bad = [r for r in salvaged.records if r.problem is not None]
            log.warning(
                "%s: %d unreadable records from offset %d (%s); dead-lettering them, "
                "keeping %d readable ones",
                tp,
                len(bad),
                bad[0].offset,
                bad[0].problem,
                len(salvaged.records) - len(bad),
            )
            self.consumer.seek(tp, salvaged.next_offset)
            if salvaged.records:
                self._start_batch({tp: salvaged.records})
        if not found:
            log.warning(
                "fetching failed on a record no partition shows raw (%s: %s); retrying",
                type(exc).__name__,
                exc,
            )
            await asyncio.sleep(1.0)

    def _start(self, tp: TopicPartition, record: Any, item: Decoded, prepared: object) -> None:
        self.stats["records"] += 1
        self.tracker.received(tp, record.offset)
        size = len(record.value or b"") + len(record.key or b"")
        self.in_flight_bytes += size
        self._mean_record_bytes += (size - self._mean_record_bytes) // 64
        task = asyncio.create_task(self._process(tp, record, item, prepared))
        task.add_done_callback(lambda _: self._release(size))
        tasks = self._tasks.get(tp)
        if tasks is None:
            tasks = self._tasks[tp] = set()
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _release(self, size: int) -> None:
        self.in_flight_bytes -= size

    def _backpressure(self) -> None:
        assert self.consumer is not None
        in_flight = self.tracker.in_flight()
        quietly(self.observer.in_flight, in_flight)
        assignment = self.consumer.assignment()
        full = (
            in_flight >= self.settings.max_in_flight
            or self.in_flight_bytes >= self.settings.max_in_flight_bytes
        )
        if not self._paused and full:
            self.consumer.pause(*assignment)
            self._paused = True
        elif (
            self._paused
            and in_flight <= self.settings.resume_below
            and self.in_flight_bytes <= self.settings.max_in_flight_bytes * 3 // 4
        ):
            self.consumer.resume(*assignment)
            self._paused = False
        elif self._paused:
            self.consumer.pause(*assignment)  # partitions assigned while paused stay paused

    # ------------------------------------------------------------ one record

    async def _process(
        self, tp: TopicPartition, record: Any, item: Decoded, prepared: object = None
    ) -> None:
        """End one record: a response, an error response or a dead letter, after a bounded
        number of attempts for faults of the record itself (a reply topic that refuses it, a
        record too large); the model is called at most once whatever is retried. Broker outages
        are retried until the member stops (the offset stays unfinished: nothing is lost)."""
        info = record_info(record)
        value: bytes = record.value if record.value is not None else b""
        request = item if isinstance(item, schemas.RouteRequest) else None
        state = Publishing()
        owned: tuple[str, str] | None = None
        if request is not None:
            # one model call per request id in flight in this member: a second record of it
            # waits for the first to end, then finds it answered (a duplicate)
            key = (request.tenant, request.request_id)
            first = self._in_flight_ids.get(key)
            if first is not None:
                await asyncio.shield(first)
            else:
                self._in_flight_ids[key] = asyncio.get_running_loop().create_future()
                owned = key
        try:
            ended = await self._end_record(tp, info, value, item, request, state, prepared)
        finally:
            if state.handled is not None:
                self.answers_held -= 1
            if owned is not None:
                done = self._in_flight_ids.pop(owned)
                if not done.done():
                    done.set_result(None)
        if ended:
            self.tracker.finish(tp, record.offset)

    async def _end_record(
        self,
        tp: TopicPartition,
        info: RecordInfo,
        value: bytes,
        item: Decoded,
        request: schemas.RouteRequest | None,
        state: Publishing,
        prepared: object,
    ) -> bool:
        """True once the record has ended; False when the member stops first (its offset
        stays unfinished, so the next owner redoes it)."""
        with self._span(info, request) as span:
            attempts = _Attempts(self.settings.max_publish_attempts)
            while True:
                try:
                    if request is None:
                        assert not isinstance(item, schemas.RouteRequest)
                        await self._unless_held(tp)
                        await self.publisher.dead_letter(info, value, *item)
                        quietly(span.set_response, status="error", error_type=item[0])
                    else:
                        if not state.handled_once:
                            quietly(
                                span.set_request,
                                tenant=request.tenant,
                                request_id=request.request_id,
                                mode=request.routing.mode,
                                metadata=request.metadata,
                                input_messages=request.messages,
                            )
                            state.handled = await self._handle(tp, request, info, span, prepared)
                            state.handled_once = True  # not before: a failure here is retried
                            if state.handled is not None:
                                self.answers_held += 1
                        if state.handled is not None:
                            key = request_key(request.tenant, request.request_id)
                            if await self._unless_held(tp) and key in await self.answered(
                                tp.partition
                            ):  # answered by another owner while it was held
                                self.stats["duplicates"] += 1
                                quietly(self.observer.duplicate)
                            else:
                                await self.publisher.publish(state.handled, request, info, state)
                                (await self.answered(tp.partition)).add(key)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self._stopping.is_set():
                        log.warning(
                            "giving up publishing %s:%s at shutdown: %s",
                            info.partition,
                            info.offset,
                            exc,
                        )
                        return False
                    if await self._publish_again(attempts, exc, f"{info.partition}:{info.offset}"):
                        continue
                    if request is None:
                        self._give_up(info, exc)
                        break
                    request = None  # dead-letter it instead, with the reason
                    item = (
                        UnpublishableRecord.code,
                        f"its result could not be published: {type(exc).__name__}: {exc}",
                    )
        return True

    def _span(self, info: RecordInfo, request: schemas.RouteRequest | None) -> Any:
        try:
            return self.tracing.process_span(
                info.topic,
                info.partition,
                info.offset,
                info.key,
                info.headers,
                self.kafka.group_id,
                # the trace seed: ids are each tenant's own
                request_key(request.tenant, request.request_id) if request is not None else None,
            )
        except Exception:
            log.exception("opening the record's span failed; the record goes on without it")
            return contextlib.nullcontext(_NoSpan())

    def _give_up(self, info: RecordInfo, exc: Exception) -> None:
        """A dead letter could not be published either: count it and log it once with its
        coordinates; the caller finishes its offset so the partition moves."""
        self.stats["abandoned"] += 1
        log.error(
            "record %s[%d]@%d cannot be ended (%s: %s): offset finished without output",
            info.topic,
            info.partition,
            info.offset,
            type(exc).__name__,
            exc,
        )

    async def _publish_again(self, attempts: _Attempts, exc: Exception, what: str) -> bool:
        """Whether to publish a record again after `exc` (having waited out the backoff): the
        broker's trouble always, a fault of the record itself (a reply topic that refuses it)
        until `attempts` are used up (False; the count restarts for what is sent instead)."""
        if not _record_fault(exc):  # the broker's trouble, not the record's
            self._log_publish_trouble(exc)
        else:
            attempts.faults += 1
            if attempts.faults >= attempts.limit:
                attempts.faults = 0
                return False
            log.warning(
                "publishing %s failed (%s: %s), attempt %d of %d",
                what,
                type(exc).__name__,
                exc,
                attempts.faults,
                attempts.limit,
            )
        await asyncio.sleep(attempts.delay)
        attempts.delay = min(attempts.delay * 2, 10.0)
        return True

    def _log_publish_trouble(self, exc: Exception) -> None:
        self._trouble_count += 1
        if self._trouble_logged.due(self.clock()):
            log.warning(
                "publishing fails (%s: %s); %d failures in the last interval, retrying",
                type(exc).__name__,
                exc,
                self._trouble_count,
            )
            self._trouble_count = 0

    async def _handle(
        self,
        tp: TopicPartition,
        request: schemas.RouteRequest,
        info: RecordInfo,
        span: RequestSpan,
        prepared: object = None,
    ) -> Handled | None:
        """The pipeline's answer (None: already answered, or handed to a batch job). Called
        once per record: the model call is paid for once, whatever publishing needs."""
        answered = await self.answered(tp.partition)
        batches = self.batches
        # ids are the tenant's own: the same id of another tenant is another request
        key = request_key(request.tenant, request.request_id)
        if key in answered or (
            batches is not None
            and batches.is_batched(tp.partition, request.request_id, request.tenant)
        ):
            self.stats["duplicates"] += 1
            quietly(self.observer.duplicate)
            return None
        journal = self._journals.get(tp.partition)
        journalled = journal.take(key, info) if journal is not None else None
        if journalled is not None:  # answered by a member that died before publishing it
            self.stats["journal_replays"] += 1
            quietly(self.observer.journal_replay)
            handled = journalled.handled()
            self._trace_response(span, handled)
            return handled
        try:
            result = await self._pipeline(request, info, prepared)
            if isinstance(result, Deferred):
                decided = result.decision.decision if result.decision is not None else None
                if batches is not None and await batches.submit(
                    tp.partition,
                    info.offset,
                    request.request_id,
                    result.model,
                    result.call,
                    decision=decided,
                    traceparent=span.traceparent(),
                    tenant=request.tenant,
                ):
                    quietly(span.set_response, status="batched", model=result.model)
                    try:
                        await self.publisher.decision(result.decision, request)
                    except KafkaError as exc:
                        log.warning(
                            "the decision event of batched %s was not published: %s",
                            request.request_id,
                            exc,
                        )
                    self.stats["batched"] += 1
                    return None  # answered when the job ends (worker.batch.jobs)
                result = await self._pipeline(request, info, prepared, interactive=True)
            assert isinstance(result, Handled)
            handled = result
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must still end in an error response, never in silence
            log.exception("pipeline failed on request %s", request.request_id)
            handled = self.pipeline.internal_error(request, info, exc)
        if handled.response.attempts:  # a model was called: journalled before anything else
            await self.publisher.journal(handled, info)
        self._trace_response(span, handled)
        return handled

    @staticmethod
    def _trace_response(span: RequestSpan, handled: Handled) -> None:
        r = handled.response
        quietly(
            span.set_response,
            status=r.status,
            model=r.model,
            cost_usd=r.cost_usd,
            output_text=r.message.content if r.message is not None else None,
            error_type=r.error.type if r.error is not None else None,
            error_message=r.error.message if r.error is not None else "",
        )

    async def _pipeline(
        self,
        request: schemas.RouteRequest,
        info: RecordInfo,
        prepared: object,
        interactive: bool = False,
    ) -> Handled | Deferred:
        """The pipeline's answer, within `max_model_calls` requests in the pipeline at once."""
        slots = self._call_slots
        if slots is not None:
            await slots.acquire()
        self.calling += 1
        try:
            return await self.pipeline.handle(request, info, prepared, interactive=interactive)
        finally:
            self.calling -= 1
            if slots is not None:
                slots.release()

    async def _batch_finished(self, finished: Finished) -> None:
        """Answer one item of an ended batch job (called by the batch jobs, at least once)."""
        item = finished.item
        answered = await self.answered(item.partition)
        tenant = (
            item.tenant
            if item.tenant is not None
            else (finished.request.tenant if finished.request is not None else None)
        )
        key = request_key(tenant, item.request_id)
        if key in answered:
            return
        request = finished.request
        info = RecordInfo(
            item.topic, item.partition, item.offset, item.request_id.encode(), [], None
        )
        # the answer's span: in the request's trace, linked to the submission's span
        with self.tracing.answer_span(
            item.topic,
            item.partition,
            item.offset,
            item.request_id,
            finished.job_id,
            item.traceparent,
            trace_seed=key,  # the request's trace: seeded by (tenant, request_id)
        ) as span:
            handled = await self._batch_answer(finished, info, span)
            state = Publishing(handled_once=True, handled=handled)
            await self._publish_batch_answer(handled, request, info, state)
        answered.add(key)

    async def _publish_batch_answer(
        self,
        handled: Handled,
        request: schemas.RouteRequest | None,
        info: RecordInfo,
        state: Publishing,
    ) -> None:
        """Publish a batch item's answer as `_end_record` does an interactive one: a fault of
        the record itself (a reply topic Kafka refuses, say) is tried `max_publish_attempts`
        times, then the item is dead-lettered (`Unpublishable`); a dead letter that cannot go
        out either is counted and logged once. Broker outages are retried until the member
        stops, and then raise: the job is not finished, its next owner answers the item."""
        letter: tuple[schemas.ErrorCode, str] | None = None
        attempts = _Attempts(self.settings.max_publish_attempts)
        while True:
            try:
                if letter is None:
                    await self.publisher.publish(handled, request, info, state)
                else:
                    value = schemas.encode(request) if request is not None else b""
                    await self.publisher.dead_letter(info, value, *letter)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping.is_set():
                    raise
                if await self._publish_again(
                    attempts, exc, f"batch answer {handled.response.request_id}"
                ):
                    continue
                if letter is not None:
                    self._give_up(info, exc)
                    return
                letter = (
                    UnpublishableRecord.code,
                    f"its result could not be published: {type(exc).__name__}: {exc}",
                )

    async def _batch_answer(
        self, finished: Finished, info: RecordInfo, span: RequestSpan
    ) -> Handled:
        """The response for an ended batch item (retried interactively when so configured),
        traced on `span`: a `chat` span for the batch's own answer, the outcome on the root."""
        finished = self.pipeline.redacted(finished)  # parsed outside the client's call path
        item, request, outcome = finished.item, finished.request, finished.outcome
        if request is not None:
            span.set_request(
                tenant=request.tenant,
                request_id=request.request_id,
                mode="batch",
                metadata=request.metadata,
                input_messages=request.messages,
            )
        retry = (
            request is not None
            and not isinstance(outcome, CompletionResult)
            and not finished.cancelled
            and self.batch_settings is not None
            and self.batch_settings.on_item_failure == "interactive"
        )
        handled: Handled | Deferred
        if retry:
            assert request is not None
            try:
                handled = await self.pipeline.handle(request, info, None, interactive=True)
            except Exception as exc:
                log.exception("interactive retry of batch item %s failed", item.request_id)
                handled = self.pipeline.internal_error(request, info, exc)
            if isinstance(handled, Handled) and handled.response.status == "ok":
                handled = Handled(
                    response=handled.response,
                    routing_ms=handled.routing_ms,
                    strong_cost_usd=handled.strong_cost_usd,
                )  # the decision event was published at submission
        else:
            handled = self.pipeline.batch_response(finished)
            if isinstance(outcome, CompletionResult):
                with self.tracing.chat_span(
                    finished.model,
                    outcome.provider,
                    outcome.response_model,
                    decision=item.decision,
                ) as chat:
                    chat.set_result(outcome)
        assert isinstance(handled, Handled)
        r = handled.response
        span.set_response(
            status=r.status,
            model=r.model,
            cost_usd=r.cost_usd,
            output_text=r.message.content if r.message is not None else None,
            error_type=r.error.type if r.error is not None else None,
            error_message=r.error.message if r.error is not None else "",
        )
        return handled

    # ------------------------------------------------------------ commits and rebalances

    async def _commit(self, only: Iterable[TopicPartition] | None = None) -> None:
        assert self.consumer is not None
        if self.publisher.txn is not None:  # the offsets go with the transaction's outputs
            await self.publisher.txn.flush(only)
            return
        offsets = self.tracker.to_commit()
        if only is not None:
            keep = set(only)
            offsets = {tp: pos for tp, pos in offsets.items() if tp in keep}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("commit failed during a rebalance; the new owner resumes: %s", exc)
            return
        except KafkaError as exc:
            log.warning("commit failed, will retry: %s", exc)
            return
        self.tracker.committed(offsets)

    def _report_lag(self) -> None:
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            committable = self.tracker.to_commit().get(tp)
            if highwater is not None:
                position = committable if committable is not None else highwater
                self.observer.lag(tp.partition, max(0, highwater - position))

    async def _drain(self, timeout_s: float, only: Iterable[TopicPartition] | None = None) -> None:
        tps = list(only) if only is not None else list(self._tasks)
        pending = [t for tp in tps for t in self._tasks.get(tp, ())]
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout_s)
            if still:
                log.warning("%d requests still in flight after %.1fs drain", len(still), timeout_s)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Drain (bounded) and commit the revoked partitions. Requests still in flight after
        the drain are held, not cancelled: their model calls go on, nothing of them is
        published until the assignment; a partition that comes back (an eager rebalance
        revokes every partition) carries on where it was, without a repeated model call."""
        self.ready.clear()
        self.observer.ready(False, "rebalancing")
        if self._out_of_group_since is None:
            self._out_of_group_since = self.clock()
        if self._readiness is not None:
            self._readiness.cancel()
        if self.batches is not None:
            self.batches.revoke(tp.partition for tp in revoked)
        await self._drain(self.settings.revoke_drain_timeout_s, revoked)
        await self._commit(revoked)
        loop = asyncio.get_running_loop()
        for tp in revoked:
            if any(not t.done() for t in self._tasks.get(tp, ())) and tp not in self._held:
                self._held[tp] = loop.create_future()
            elif tp not in self._held:
                self._forget(tp)

    def _forget(self, tp: TopicPartition) -> None:
        """Drop a partition that moved: its state, and its requests still in flight (their
        offsets stay uncommitted, so the next owner redoes them)."""
        self.tracker.drop(tp)
        self._journals.pop(tp.partition, None)
        load = self._answered.pop(tp.partition, None)
        if load is not None:
            load.cancel()
        for task in self._tasks.pop(tp, set()):
            task.cancel()

    def _release_held(self, assigned: set[TopicPartition]) -> None:
        """Held partitions that came back go on from where they were (the consumer resumes
        after the last record received, not at the committed offset); the others are
        forgotten. A partition that comes back may have had another owner meanwhile (a member
        dropped from the group learns it late): its answered ids are read again, and each held
        request checks them before publishing."""
        for tp, held in list(self._held.items()):
            del self._held[tp]
            back = tp in assigned
            if back:
                self._journals.pop(tp.partition, None)
                load = self._answered.pop(tp.partition, None)
                if load is not None:
                    load.cancel()
            if back and self.consumer is not None:
                following = self.tracker.next_offset(tp)
                if following is not None:
                    self.consumer.seek(tp, following)
            held.set_result(back)
            if not back:
                self._forget(tp)

    async def _unless_held(self, tp: TopicPartition) -> bool:
        """Wait while `tp` is held by a rebalance (its request is cancelled if it moved). True
        when it was held and came back."""
        held = self._held.get(tp)
        if held is None:
            return False
        if not await asyncio.shield(held):
            raise asyncio.CancelledError  # it moved (the task is being cancelled as well)
        return True

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start loading the partitions' state and return: the rebalance callback never waits
        for a load (a stop mid-rebalance would wait for it, or cancel it under the callback);
        requests wait for their partition's load themselves, and readiness follows the loads."""
        self._out_of_group_since = None
        self._release_held(assigned)
        try:
            await self._partition_counts()
        except KafkaError as exc:
            log.warning("reading partition counts failed (%s); keeping the previous ones", exc)
        if self.on_share is not None and self._source_partitions > 0:
            mine = sum(1 for tp in assigned if tp.topic == self.topics.requests)
            self.on_share(mine / self._source_partitions)
        if self._paused and self.consumer is not None:
            self.consumer.pause(*assigned)
        loads = [self._load_task(tp.partition) for tp in assigned]
        if self._readiness is not None:
            self._readiness.cancel()
        self._readiness = asyncio.create_task(self._ready_after(loads, len(assigned)))

    async def _ready_after(self, loads: list[asyncio.Task[AnsweredIds]], count: int) -> None:
        if loads:
            await asyncio.wait(loads)
        if self._stopping.is_set():
            return
        self.ready.set()
        if self.broker_reachable:
            self.observer.ready(True, f"{count} partitions assigned")
        self.observer.assignment(count, self._source_partitions)

    async def answered(self, partition: int) -> AnsweredIds:
        """The request ids of `partition` that already have a response (loaded on first use)."""
        load = self._answered.get(partition)
        if load is not None and load.done() and not load.cancelled() and load.exception() is None:
            return load.result()  # loaded: no shield (and no task switch) per request
        return await asyncio.shield(self._load_task(partition))

    def _load_task(self, partition: int) -> asyncio.Task[AnsweredIds]:
        load = self._answered.get(partition)
        if load is None or (load.done() and (load.cancelled() or load.exception() is not None)):
            load = asyncio.create_task(self._load_answered(partition))
            self._answered[partition] = load
        return load

    async def _load_answered(self, partition: int) -> AnsweredIds:
        """Read back the partition's answered ids, its journalled answers and batch jobs; a
        failure (a slow broker, a rebalance storm) is retried here, once for all the requests
        waiting on it, with backoff: requests must not run before their partition's dedupe
        memory is loaded, and never with a part of it."""
        delay = 1.0
        while True:
            try:
                answered, journal = await self._load_state(partition)
                if self.batches is not None:
                    await self.batches.load(partition)  # jobs move with their source partitions
                self._journals[partition] = journal
                return answered
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "loading the state of partition %d failed (%s: %s); retrying in %.0fs",
                    partition,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _load_state(self, partition: int) -> tuple[AnsweredIds, Journal]:
        """The dedupe markers of `partition`, then its journalled answers of requests without
        a marker."""
        answered = await load_answered(
            self.kafka.common_kwargs(),
            self.topics.done,
            self._done_partitions,
            [partition],
            max(1, self._source_partitions),
            self.settings.dedupe_window,
        )
        journals = await load_journal(
            self.kafka.common_kwargs(),
            self.topics.journal,
            self._journal_partitions if self.settings.answer_journal else 0,
            self.topics.requests,
            answered,
            max(1, self._source_partitions),
            self.settings.journal_window,
        )
        return answered[partition], journals[partition]


async def close_quietly(
    what: str, close: Callable[[], Awaitable[None]], timeout_s: float = 30.0
) -> None:
    """Stop a Kafka client at shutdown, whatever state the cluster is in: its failure (a
    broker gone, its own tasks cancelled under it) is an expected condition, logged in one
    line, never raised into the caller (and never a CancelledError the caller did not ask
    for)."""
    task = asyncio.ensure_future(close())
    done, _ = await asyncio.wait([task], timeout=timeout_s)
    if not done:
        task.cancel()
        log.warning("stopping %s took longer than %.0fs; left behind", what, timeout_s)
        return
    if task.cancelled():
        log.warning("stopping %s was interrupted (the cluster is unreachable?)", what)
    elif task.exception() is not None:
        exc = task.exception()
        log.warning("stopping %s failed: %s: %s", what, type(exc).__name__, exc)


@dataclass
class _Attempts:
    """One record's publishing attempts: faults of the record itself, and the backoff."""

    limit: int
    faults: int = 0
    delay: float = 0.5


async def _forever() -> None:
    await asyncio.Event().wait()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker.on_assigned(set(assigned))
