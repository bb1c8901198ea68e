"""What the member writes, each send acknowledged by the broker before it counts.

    Publisher.publish      a response (cut to fit its topic when too large), its decision event
                           (once across attempts) and then its dedupe marker
    Publisher.dead_letter  the dead-letter record (the original bytes, cut to fit)
    Publisher.decision     the decision event of a request handed to a batch job
    Publisher.shadow       a shadow call's answer, decision and verdicts
    Publisher.journal      a paid answer as soon as it arrives (`worker.kafka.journal`), not
                           waiting for its acknowledgement

The producer is idempotent (`acks=all`), keys records by request id with a key-hash
partitioner that remembers the last key's hash (a response and its decision share it), and
keeps its batches within the smallest `max.message.bytes` of the topics written most.

With `kafka.transactions` (`start_transactions`), a response and its dedupe marker go out
through a second, transactional producer (`worker.kafka.transactions`) and `publish` returns
once their transaction has committed; everything else stays on the ordinary producer.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner, murmur2

import schemas
from schemas.trace import request_key
from worker.config.kafka import KafkaSettings, LoopSettings, TopicSettings
from worker.kafka import journal
from worker.kafka.deadletter import dead_letter
from worker.kafka.dedupe import marker
from worker.kafka.observer import LoopObserver, quietly
from worker.kafka.records import Handled, RecordInfo
from worker.kafka.table import home_partition
from worker.kafka.topics import max_message_bytes
from worker.kafka.transactions import Offsets, Transactions
from worker.logs import Every
from worker.telemetry.propagation import context_headers, record_context_headers

log = logging.getLogger(__name__)

RECORD_OVERHEAD = 512  # batch and record framing, key and headers, below a topic's limit


@dataclass
class Publishing:
    """What one record's attempts have done so far."""

    handled_once: bool = False
    handled: Handled | None = None
    decision_sent: bool = False
    cut_to: int | None = None  # the target topic's limit, once a send was too large


def _cut_response(
    response: schemas.RouteResponse, info: RecordInfo, limit: int
) -> schemas.RouteResponse:
    """The response cut to fit `limit` bytes: the answer's text first, then the parts the
    decision event also carries; `truncated` says the original size and the source record."""
    budget = limit - RECORD_OVERHEAD
    original = len(schemas.encode(response))
    source = schemas.SourceRecord(topic=info.topic, partition=info.partition, offset=info.offset)
    r = msgspec.structs.replace(
        response, truncated=schemas.Truncated(original_bytes=original, source=source)
    )
    for _ in range(6):
        excess = len(schemas.encode(r)) - budget
        if excess <= 0:
            return r
        if r.message is not None and r.message.content:
            text = r.message.content.encode()
            keep = max(0, len(text) - excess - 64)
            content = text[:keep].decode(errors="ignore")
            r = msgspec.structs.replace(
                r, message=msgspec.structs.replace(r.message, content=content)
            )
        elif r.error is not None and len(r.error.message) > 200:
            r = msgspec.structs.replace(
                r, error=msgspec.structs.replace(r.error, message=r.error.message[:200])
            )
        else:
            r = msgspec.structs.replace(r, decision=None, attempts=[])
    return r


def _cut_letter(
    letter: schemas.DeadLetter, value: bytes, info: RecordInfo, original: int, limit: int
) -> schemas.DeadLetter:
    """The dead letter cut to fit `limit` bytes: a prefix of the original value (headers
    dropped when they alone are too large), the original size and the source record."""
    budget = limit - RECORD_OVERHEAD
    source = schemas.SourceRecord(topic=info.topic, partition=info.partition, offset=info.offset)
    cut = msgspec.structs.replace(
        letter,
        original_value_b64="",
        truncated=schemas.Truncated(original_bytes=original, source=source),
    )
    if len(schemas.encode(cut)) > budget // 2:
        cut = msgspec.structs.replace(cut, original_headers=None)
    room = max(0, budget - len(schemas.encode(cut)))
    keep = room * 3 // 4
    return msgspec.structs.replace(cut, original_value_b64=base64.b64encode(value[:keep]).decode())


class Publisher:
    """The member's producer and every record it writes (`start` before the first send)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicSettings,
        settings: LoopSettings,
        observer: LoopObserver,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.settings = settings
        self.observer = observer
        self.stats = {"published": 0, "dead_letters": 0, "journalled": 0, "journal_failures": 0}
        self.producer: AIOKafkaProducer | None = None
        self.done_partitions = 0  # the dedupe topic's partition count (0: no markers)
        self.journal_partitions = 0  # the journal topic's partition count (0: no journal)
        self._journal_logged = Every(60.0)
        self._limits: dict[str, int] = {}  # topic -> max.message.bytes
        self._batch_bytes = kafka.producer_batch_bytes
        # responses + markers + offsets, one transaction per interval (`kafka.transactions`)
        self.txn: Transactions | None = None

    async def start(self) -> None:
        common = self.kafka.common_kwargs()
        # a batch larger than its topic's max.message.bytes fails whole (aiokafka does not split
        # it): batches stay within the smallest limit of the topics written most
        t = self.topics
        written = [t.responses, t.decisions, t.dlq]
        if self.settings.answer_journal:
            written.append(t.journal)
        self._limits.update(await max_message_bytes(common, written))
        self._batch_bytes = min(
            self.kafka.producer_batch_bytes, *(v - RECORD_OVERHEAD for v in self._limits.values())
        )
        self.producer = self._producer()
        await self.producer.start()

    def _producer(self, **transactional: Any) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=self.kafka.producer_linger_ms,
            max_batch_size=max(1024, self._batch_bytes),
            max_request_size=self.kafka.producer_max_request_bytes,
            compression_type=self.kafka.producer_compression,
            partitioner=KeyHashPartitioner(),
            **transactional,
            **self.kafka.common_kwargs(),
        )

    async def start_transactions(
        self,
        transactional_id: str,
        offsets: Callable[[], Offsets],
        committed: Callable[[Offsets], None],
        on_fatal: Callable[[BaseException], None],
    ) -> Transactions:
        """The transactional producer of responses and markers (after `start`). Its id should
        be the static member id when there is one, so a restarted member fences (and aborts)
        what its predecessor left open; otherwise that transaction ends at
        `transaction_timeout_ms`."""
        producer = self._producer(
            transactional_id=transactional_id,
            transaction_timeout_ms=self.kafka.transaction_timeout_ms,
        )
        txn = Transactions(
            producer,
            self.kafka.group_id,
            offsets=offsets,
            committed=committed,
            on_fatal=on_fatal,
            interval_s=self.kafka.transaction_interval_ms / 1000,
        )
        try:
            await txn.start()
        except BaseException:
            await producer.stop()
            raise
        self.txn = txn
        return txn

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def shadow(
        self,
        response: schemas.RouteResponse,
        decision: schemas.RoutingDecision,
        feedback: list[schemas.Feedback],
    ) -> None:
        """A shadow call's answer (shadow topic), decision (`shadow: true`) and verdicts."""
        producer = self.producer
        if producer is None:
            return
        key = response.request_id.encode()
        headers = context_headers(response.trace_id)
        acks = [
            await producer.send(
                self.topics.shadow, schemas.encode(response), key=key, headers=headers
            )
        ]
        if self.settings.publish_decisions:
            acks.append(
                await producer.send(
                    self.topics.decisions, schemas.encode(decision), key=key, headers=headers
                )
            )
        for event in feedback:
            acks.append(
                await producer.send(
                    self.topics.feedback, schemas.encode(event), key=key, headers=headers
                )
            )
        await asyncio.gather(*acks)

    async def journal(self, handled: Handled, info: RecordInfo) -> None:
        """Write a paid answer to the journal (when there is one). Returns once the record is
        handed to the producer, not when it is acknowledged; never raises: a failure costs a
        repeated model call after a crash, nothing else (counted, logged once a minute)."""
        producer = self.producer
        if not self.journal_partitions or producer is None:
            return
        try:
            r = handled.response
            e = journal.entry(handled, info)
            value = journal.encode(e)
            budget = (
                await self.record_limit(self.topics.journal) - 2 * RECORD_OVERHEAD
            )  # the entry's own fields beside the response
            if len(value) > budget and e.decision is not None:
                e = msgspec.structs.replace(e, decision=None)
                value = journal.encode(e)
            if len(value) > budget:
                e = msgspec.structs.replace(e, response=_cut_response(r, info, budget))
                value = journal.encode(e)
            ack = await producer.send(
                self.topics.journal,
                value,
                key=request_key(r.tenant, r.request_id).encode(),
                partition=home_partition(info.partition, self.journal_partitions),
            )
        except Exception as exc:
            self._journal_failed(exc)
            return
        ack.add_done_callback(self._journalled)

    def _journalled(self, ack: asyncio.Future[Any]) -> None:
        failure = asyncio.CancelledError() if ack.cancelled() else ack.exception()
        if failure is not None:
            self._journal_failed(failure)
        else:
            self.stats["journalled"] += 1

    def _journal_failed(self, exc: BaseException) -> None:
        self.stats["journal_failures"] += 1
        if self._journal_logged.due(time.monotonic()):
            log.warning(
                "writing answers to the journal fails (%s: %s); %d failures so far (a crash "
                "now costs those model calls again)",
                type(exc).__name__,
                exc,
                self.stats["journal_failures"],
            )

    async def decision(
        self, decision: schemas.RoutingDecision | None, request: schemas.RouteRequest
    ) -> None:
        if decision is None or not self.settings.publish_decisions:
            return
        assert self.producer is not None
        await self.producer.send_and_wait(
            self.topics.decisions,
            schemas.encode(decision),
            key=request.request_id.encode(),
            headers=context_headers(decision.trace_id),
        )

    async def publish(
        self,
        handled: Handled,
        request: schemas.RouteRequest | None,
        info: RecordInfo,
        state: Publishing | None = None,
    ) -> None:
        """The response (cut to fit its topic when too large), and the decision event once
        (`state` remembers it across attempts), then the dedupe marker."""
        assert self.producer is not None
        state = state if state is not None else Publishing()
        key = handled.response.request_id.encode()
        reply = request.reply_topic if request is not None else None
        target = handled.reply_topic or reply or self.topics.responses
        response = handled.response
        if state.cut_to is not None:
            response = _cut_response(response, info, state.cut_to)
        value = schemas.encode(response)
        if len(value) > self.kafka.producer_max_request_bytes - RECORD_OVERHEAD:
            response = _cut_response(response, info, self.kafka.producer_max_request_bytes)
            value = schemas.encode(response)
        # traceparent (+ tracestate) of the request's span: consumers continue the trace
        headers = record_context_headers(handled.headers, handled.response.trace_id)
        if self.txn is not None:
            await self._publish_in_transaction(handled, target, value, key, headers, info, state)
            return
        send = self.producer.send(target, value, key=key, headers=headers)
        if target != self.topics.responses:  # a reply topic may not exist: bound the wait
            ack = await asyncio.wait_for(send, timeout=self.settings.reply_publish_timeout_s)
        else:
            ack = await send
        decision_ack = await self._send_decision(handled, key, headers, state)
        await self._settle(all_acked([ack]), decision_ack, handled, target, key, state)
        if self.done_partitions:
            # the dedupe marker goes out once the response is acknowledged (never before: a
            # marker without its response would lose the request), and the offset finishes
            # once the marker is acknowledged too: a member killed before its next commit
            # leaves markers for every response it published, so the next owner skips them. A
            # marker that fails is logged, not retried (the response is out).
            try:
                await self.producer.send_and_wait(
                    self.topics.done,
                    marker(info.partition, info.offset),
                    key=request_key(handled.response.tenant, handled.response.request_id).encode(),
                    partition=home_partition(info.partition, self.done_partitions),
                )
            except KafkaError as exc:
                log.warning("dedupe marker of %s not written: %s", key.decode(), exc)

    async def _publish_in_transaction(
        self,
        handled: Handled,
        target: str,
        value: bytes,
        key: bytes,
        headers: Any,
        info: RecordInfo,
        state: Publishing,
    ) -> None:
        """The response and its dedupe marker in the open transaction (both or neither become
        visible); returns once it committed. The decision event goes out once, outside it."""
        assert self.txn is not None and self.producer is not None
        if target != self.topics.responses:  # a reply topic may not exist: bound the wait
            await asyncio.wait_for(
                self.txn.producer.partitions_for(target),
                timeout=self.settings.reply_publish_timeout_s,
            )
        sends: list[tuple[str, bytes, bytes | None, Any, int | None]] = [
            (target, value, key, headers, None)
        ]
        if self.done_partitions:
            sends.append(
                (
                    self.topics.done,
                    marker(info.partition, info.offset),
                    request_key(handled.response.tenant, handled.response.request_id).encode(),
                    None,
                    home_partition(info.partition, self.done_partitions),
                )
            )
        decision_ack = await self._send_decision(handled, key, headers, state)
        await self._settle(self.txn.publish(sends), decision_ack, handled, target, key, state)

    async def _send_decision(
        self, handled: Handled, key: bytes, headers: Any, state: Publishing
    ) -> Awaitable[Any] | None:
        """The decision event, unless it is off or went out on an earlier attempt: its
        acknowledgement, to settle with `_settle`."""
        if handled.decision is None or not self.settings.publish_decisions:
            return None
        if state.decision_sent:
            return None
        assert self.producer is not None
        ack: Awaitable[Any] = await self.producer.send(
            self.topics.decisions, schemas.encode(handled.decision), key=key, headers=headers
        )
        return ack

    async def _settle(
        self,
        outputs: Awaitable[Any],
        decision_ack: Awaitable[Any] | None,
        handled: Handled,
        target: str,
        key: bytes,
        state: Publishing,
    ) -> None:
        """Wait for the response's outputs and count the publication; a response too large
        for `target` is cut to the topic's own limit on the next attempt. The decision's
        acknowledgement is settled either way (a failed decision is logged, not retried)."""
        try:
            await outputs
        except MessageSizeTooLargeError:
            if state.cut_to is None:  # once more, cut to the topic's own limit
                state.cut_to = await self.topic_limit(target)
            raise
        finally:
            if decision_ack is not None:
                try:
                    await decision_ack
                    state.decision_sent = True
                except Exception as exc:
                    log.warning("decision event of %s not published: %s", key.decode(), exc)
        self.stats["published"] += 1
        quietly(self.observer.published, handled)

    async def dead_letter(
        self, info: RecordInfo, value: bytes, error_type: schemas.ErrorCode, reason: str
    ) -> None:
        """The dead-letter record, cut to fit the dead-letter topic when it is too large."""
        assert self.producer is not None
        letter = dead_letter(
            topic=info.topic,
            partition=info.partition,
            offset=info.offset,
            key=info.key,
            value=value,
            headers=info.headers,
            timestamp_ms=info.timestamp_ms,
            error_type=error_type,
            reason=reason,
            worker_id=self.settings.worker_id,
        )
        encoded = schemas.encode(letter)
        limit = await self.record_limit(self.topics.dlq)
        if len(encoded) > limit - RECORD_OVERHEAD:
            encoded = schemas.encode(_cut_letter(letter, value, info, len(value), limit))
        await self.producer.send_and_wait(
            self.topics.dlq, encoded, key=info.key, headers=context_headers()
        )
        self.stats["dead_letters"] += 1
        quietly(self.observer.dead_letter, error_type)

    async def record_limit(self, topic: str) -> int:
        """The largest record this producer can write to `topic`: the smaller of its request
        limit and the topic's `max.message.bytes`."""
        return min(self.kafka.producer_max_request_bytes, await self.topic_limit(topic))

    async def topic_limit(self, topic: str) -> int:
        """The topic's `max.message.bytes` (read once per topic; the broker default when it
        cannot be read)."""
        known = self._limits.get(topic)
        if known is not None:
            return known
        limits = await max_message_bytes(self.kafka.common_kwargs(), [topic])
        self._limits[topic] = limits[topic]
        return limits[topic]


async def all_acked(acks: list[Awaitable[Any]]) -> None:
    """Wait for every acknowledgement; raise the first failure met (as `asyncio.gather`, without
    its per-call future and callbacks), leaving no other failure unretrieved."""
    try:
        for ack in acks:
            await ack
    except BaseException:
        for ack in acks:
            if isinstance(ack, asyncio.Future):
                if ack.done():
                    if not ack.cancelled():
                        ack.exception()
                else:
                    ack.add_done_callback(_retrieve)
        raise


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class KeyHashPartitioner:
    """aiokafka's `DefaultPartitioner` (murmur2 of the key, as the Java client; random without a
    key), remembering the last key's hash: a response and its decision share the key, and
    murmur2 is pure Python in aiokafka."""

    __slots__ = ("_hash", "_key")

    def __init__(self) -> None:
        self._key: bytes | None = None
        self._hash = 0

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        if key != self._key:
            self._hash = murmur2(key) & 0x7FFFFFFF
            self._key = key
        return all_partitions[self._hash % len(all_partitions)]
