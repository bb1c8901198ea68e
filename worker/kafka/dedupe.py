"""Which request ids already have a published response, per source partition.

A record is redelivered when a member dies (or loses its partition) after publishing a response but
before committing the offset, and producers sometimes send one request twice. After each response
is acknowledged the worker appends a small marker to the compacted `done` topic (key = request id,
value = source partition and offset), on the partition of the same number (modulo the topic's
partition count). On assignment, the member reads the last `window` markers of that partition back,
so the memory survives a restart and moves with the partition.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from worker.kafka.table import home_partition, last_per_source, read_to_end


class AnsweredIds:
    """A bounded, insertion-ordered set of request ids (the oldest fall out first)."""

    def __init__(self, window: int) -> None:
        self._window = window
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, request_id: str) -> None:
        self._ids[request_id] = None
        self._ids.move_to_end(request_id)
        while len(self._ids) > self._window:
            self._ids.popitem(last=False)


def marker(partition: int, offset: int) -> bytes:
    """The marker's value: what `json.dumps({"partition": p, "offset": o})` writes."""
    return b'{"partition": %d, "offset": %d}' % (partition, offset)


async def load_answered(
    client_kwargs: dict[str, Any],
    done_topic: str,
    done_count: int,
    source_partitions: list[int],
    source_count: int,
    window: int,
    timeout_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> dict[int, AnsweredIds]:
    """Read back the last `window` markers written for each of `source_partitions`, from the
    `done_count` partitions of `done_topic`. All of them or `TopicNotReady` (a partial set
    would let a request be answered twice: the load fails closed)."""
    answered = {p: AnsweredIds(window) for p in source_partitions}
    if not source_partitions or done_count < 1:
        return answered  # nothing was ever answered
    records = await read_to_end(
        client_kwargs,
        done_topic,
        partitions={home_partition(p, done_count) for p in source_partitions},
        window=last_per_source(window, source_count, done_count),
        timeout_s=timeout_s,
        clock=clock,
        # a marker of an aborted transaction (`worker.kafka.transactions`) never counts: it
        # would hide a request that has no response (a loss)
        committed_only=True,
    )
    for record in records:
        _remember(answered, record.key, record.value)
    return answered


def _remember(answered: dict[int, AnsweredIds], key: bytes | None, value: bytes | None) -> None:
    if key is None or value is None:
        return
    try:
        partition = json.loads(value)["partition"]
    except (ValueError, KeyError, TypeError):
        return
    ids = answered.get(partition)
    if ids is not None:
        ids.add(key.decode(errors="replace"))
