"""Responses, dedupe markers and committed offsets in one Kafka transaction per interval.

Without it, a member killed between publishing a response and writing its dedupe marker leaves
a response the next owner cannot know about: it answers the request again (a duplicate). With
`kafka.transactions` on, the worker's responses and markers go out through one transactional
producer; every `interval_s` the open transaction takes the offsets finished so far
(`send_offsets_to_transaction`) and commits. A member that dies mid-transaction leaves nothing a
`read_committed` reader sees: the transaction is aborted when the member's successor starts
with the same transactional id (static membership: `kafka.group_instance_id`), or after
`kafka.transaction_timeout_ms`. The dedupe loader reads `read_committed`, so an aborted marker
never hides a request.

A record's publish returns once its transaction has committed; an aborted transaction raises,
and the record's publish is retried in the next one (its model answer is kept: paid once).
aiokafka implements the transactions of KIP-98 (no KIP-447 group-generation fencing): a zombie
is fenced by the transactional id, i.e. by its restarted self.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

log = logging.getLogger(__name__)

Offsets = dict[Any, int]  # TopicPartition -> the next offset to commit


class TransactionAborted(Exception):
    """The transaction that carried a record's output was aborted: publish it again."""


class _Open:
    """One transaction while it is open: resolved when it commits (or is aborted)."""

    def __init__(self) -> None:
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks: list[asyncio.Future[Any]] = []  # every send's delivery in this transaction
        self.incomplete = False  # a publish sent part of its records: abort, never commit


class Transactions:
    """A transactional producer whose transaction is always open between flushes.

    `publish` sends records into the open transaction and waits for it to commit; `flush`
    (every `interval_s` from `run`, and on revoke and stop) closes the gate, waits for the sends
    already under way, adds `offsets()` to the transaction and commits it, then opens the next.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        group_id: str,
        offsets: Callable[[], Offsets],
        committed: Callable[[Offsets], None],
        on_fatal: Callable[[BaseException], None],
        interval_s: float,
    ) -> None:
        self.producer = producer
        self.group_id = group_id
        self._offsets = offsets
        self._committed = committed
        self._on_fatal = on_fatal
        self.interval_s = interval_s
        self._open: _Open | None = None
        self._sending = 0
        self._gate = asyncio.Condition()
        self._closing = False
        self._flush_lock = asyncio.Lock()
        self.failed: BaseException | None = None
        self.stats = {"committed": 0, "aborted": 0}

    async def start(self) -> None:
        await self.producer.start()  # InitProducerId: aborts what a predecessor left open
        await self.producer.begin_transaction()
        self._open = _Open()

    async def run(self) -> None:
        """Commit every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            # a cancel (the member stopping) never interrupts a commit half-way: the flush goes
            # on, and the next one waits for it
            await asyncio.shield(self.flush())

    async def publish(
        self, sends: Iterable[tuple[str, bytes, bytes | None, Any, int | None]]
    ) -> None:
        """Send (topic, value, key, headers, partition) records in the open transaction and
        return once it has committed. Raises the record's own delivery failure, or
        `TransactionAborted`."""
        async with self._gate:
            await self._gate.wait_for(lambda: not self._closing)
            if self.failed is not None:
                raise TransactionAborted(f"the transactional producer failed: {self.failed}")
            self._sending += 1
            txn = self._open
        assert txn is not None
        acks: list[asyncio.Future[Any]] = []
        try:
            for topic, value, key, headers, partition in sends:
                ack = await self.producer.send(
                    topic, value, key=key, headers=headers, partition=partition
                )
                acks.append(ack)
                txn.acks.append(ack)
        except BaseException:
            if acks:  # a response in without its marker (or the reverse): all or nothing
                txn.incomplete = True
            raise
        finally:
            async with self._gate:
                self._sending -= 1
                self._gate.notify_all()
        await asyncio.wait(acks)  # every future is retrieved below, ended or not
        try:
            await asyncio.shield(txn.ended)
        finally:
            # every delivery's outcome is retrieved; the record's own failure is what it raises
            failures = [a.exception() for a in acks if not a.cancelled()]
            first = next((exc for exc in failures if exc is not None), None)
            if first is not None:
                raise first

    async def flush(self, only: Iterable[TopicPartition] | None = None) -> bool:
        """Commit the open transaction with the finished offsets (of `only`, when given) and
        open the next one. True when it committed."""
        async with self._flush_lock:
            if self._open is None or self.failed is not None:
                return False
            async with self._gate:
                self._closing = True
                await self._gate.wait_for(lambda: self._sending == 0)
            txn = self._open
            offsets = self._offsets()
            if only is not None:
                keep = set(only)
                offsets = {tp: pos for tp, pos in offsets.items() if tp in keep}
            ok = False
            try:
                # all or nothing: one failed delivery (a record too large, say) aborts the whole
                # transaction, or a marker could commit without its response (a lost request)
                if txn.acks:
                    await asyncio.wait(txn.acks)
                failed = sum(1 for a in txn.acks if a.cancelled() or a.exception() is not None)
                if failed or txn.incomplete:
                    raise TransactionAborted(f"{failed} of its records were not delivered")
                if offsets:
                    await self.producer.send_offsets_to_transaction(offsets, self.group_id)
                await self.producer.commit_transaction()
                ok = True
            except Exception as exc:
                log.warning(
                    "committing a transaction failed (%s: %s); aborting it", type(exc).__name__, exc
                )
                self.stats["aborted"] += 1
                txn.ended.set_exception(TransactionAborted(f"{type(exc).__name__}: {exc}"))
                txn.ended.exception()  # retrieved: no publisher may be waiting on it
                try:
                    await self.producer.abort_transaction()
                except Exception as fatal:
                    self._fail(fatal)
                    return False
            if ok:
                self.stats["committed"] += 1
                self._committed(offsets)
                txn.ended.set_result(None)
            try:
                await self.producer.begin_transaction()
            except Exception as fatal:
                self._fail(fatal)
                return False
            async with self._gate:
                self._open = _Open()
                self._closing = False
                self._gate.notify_all()
            return ok

    def _fail(self, exc: BaseException) -> None:
        """The producer cannot go on (fenced by a successor with our transactional id, or in
        a fatal state): nothing more is published through it; the member stops."""
        log.error("the transactional producer failed (%s: %s); stopping", type(exc).__name__, exc)
        self.failed = exc
        self._on_fatal(exc)

    async def close(self) -> None:
        """Wake every waiting publisher (their records stay unfinished), then stop."""
        async with self._gate:
            if self.failed is None:
                self.failed = RuntimeError("closed")
            self._closing = False
            self._gate.notify_all()
        if self._open is not None and not self._open.ended.done():
            self._open.ended.set_exception(TransactionAborted("the member stopped"))
            self._open.ended.exception()  # retrieved: nobody may be waiting
        await self.producer.stop()  # an open transaction is aborted by our successor
