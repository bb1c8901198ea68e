"""The answer journal: a paid model answer is written down as soon as it arrives, so that a member
that dies before its response is committed does not make the next owner pay for it again.

A response becomes visible (and its offset finished) only when it is published, or with
`kafka.transactions` when its transaction commits, up to `transaction_interval_ms` later. A
member killed in between loses the answer: the next owner of the partition redoes the request,
model call included. With `loop.answer_journal` on, each answer of a request that called a
model is also written at once, outside any transaction (`acks=all`), to the journal topic: key
the request's dedupe key, value the response and decision event (`Entry`), on the partition of
the source partition's number modulo the journal's partition count. On assignment the member
reads the last `loop.journal_window` entries of its partitions back once their dedupe markers
are loaded, keeping those of requests without a marker (fail closed, as the markers: all or
`TopicNotReady`); a redelivered record whose request has no committed marker but has an entry
for that very record (topic, partition, offset) publishes the journalled response instead of
calling the model.

The journal never decides whether a request was answered (the dedupe markers do): an entry only
replaces a model call. An entry that is missing (not yet acknowledged at the crash, beyond the
window, too large) costs a repeated call, nothing else. The topic is not compacted: it is
deleted after `topics.journal_retention_ms` (entries are useful for seconds to minutes).

Entries carry what the response and decision topics carry, as published (provider strings
redacted, prompts masked when so configured); an entry larger than the journal's
`max.message.bytes` drops its decision event, then has its answer cut as a response would be.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container, Mapping
from typing import Any

import msgspec

import schemas
from worker.kafka.records import Handled, RecordInfo
from worker.kafka.table import home_partition, last_per_source, scan

log = logging.getLogger(__name__)


class Entry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One journalled answer: the record it answers, and what its publication would carry."""

    topic: str
    partition: int
    offset: int
    response: schemas.RouteResponse
    decision: schemas.RoutingDecision | None = None
    reply_topic: str | None = None
    routing_ms: float | None = None
    strong_cost_usd: float | None = None

    def handled(self) -> Handled:
        return Handled(
            response=self.response,
            decision=self.decision,
            reply_topic=self.reply_topic,
            routing_ms=self.routing_ms,
            strong_cost_usd=self.strong_cost_usd,
        )

    def answers(self, info: RecordInfo) -> bool:
        """Whether this entry is the answer to that very record (not to another record of the
        same id, nor to a record of another request topic sharing the journal)."""
        here = (info.topic, info.partition, info.offset)
        return (self.topic, self.partition, self.offset) == here


class _Where(msgspec.Struct):
    """An entry's source record, decoded without its response."""

    topic: str
    partition: int
    offset: int


_ENCODER = msgspec.json.Encoder()
_ENTRY = msgspec.json.Decoder(Entry)
_WHERE = msgspec.json.Decoder(_Where)


def entry(handled: Handled, info: RecordInfo) -> Entry:
    return Entry(
        topic=info.topic,
        partition=info.partition,
        offset=info.offset,
        response=handled.response,
        decision=handled.decision,
        reply_topic=handled.reply_topic,
        routing_ms=handled.routing_ms,
        strong_cost_usd=handled.strong_cost_usd,
    )


def encode(e: Entry) -> bytes:
    return _ENCODER.encode(e)


def decode(value: bytes) -> Entry | None:
    """The entry, or None for a value that is not one (logged: a foreign writer)."""
    try:
        return _ENTRY.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        log.warning("a journal record that is not an entry was ignored: %s", exc)
        return None


class Journal:
    """The loaded entries of one source partition, by request key (each used at most once)."""

    def __init__(self) -> None:
        self._entries: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: str, value: bytes) -> None:
        self._entries[key] = value

    def take(self, key: str, info: RecordInfo) -> Entry | None:
        """The journalled answer to the record `info` of request `key` (then forgotten)."""
        value = self._entries.get(key)
        if value is None:
            return None
        found = decode(value)
        if found is None or not found.answers(info):
            return None
        del self._entries[key]
        return found


async def load_journal(
    client_kwargs: Mapping[str, Any],
    topic: str,
    journal_count: int,
    source_topic: str,
    answered: Mapping[int, Container[str]],
    source_count: int,
    window: int,
    timeout_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> dict[int, Journal]:
    """The last `window` entries written for each source partition of `answered` (of
    `source_topic`), less the requests `answered` knows (their markers committed): only those
    are kept as the journal is read, so memory holds what a crash left, not the window. All of
    them or `TopicNotReady` (the rule of every state load; a missing entry would only cost a
    model call)."""
    journals = {p: Journal() for p in answered}
    if not answered or journal_count < 1 or window < 1:
        return journals
    reads = scan(
        client_kwargs,
        topic,
        partitions={home_partition(p, journal_count) for p in answered},
        window=last_per_source(window, source_count, journal_count),
        timeout_s=timeout_s,
        clock=clock,
    )
    async for records in reads:
        for record in records:
            if record.key is None or record.value is None:
                continue
            try:
                where = _WHERE.decode(record.value)
            except (msgspec.ValidationError, msgspec.DecodeError):
                continue
            journal = journals.get(where.partition)
            if where.topic != source_topic or journal is None:
                continue
            key = record.key.decode(errors="replace")
            if key not in answered[where.partition]:
                journal.add(key, record.value)
    return journals
