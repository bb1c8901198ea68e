"""Per-partition offset bookkeeping for out-of-order completion.

Thousands of requests of one partition are in flight at once and finish in any order. A partition
may only commit the offset *after* its longest finished prefix: the committable position is the
smallest offset received and not yet finished, or (when none is pending) the last received + 1.
Offsets are tracked as received, never by `last + 1` arithmetic, because a partition's offsets can
have gaps (transaction markers, compaction).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class PartitionOffsets:
    """Offsets of one partition, in the order the consumer returned them (ascending)."""

    pending: deque[int] = field(default_factory=deque)
    finished: set[int] = field(default_factory=set)
    last_received: int | None = None
    committed: int | None = None

    def received(self, offset: int) -> None:
        if self.last_received is not None and offset <= self.last_received:
            raise ValueError(f"offset {offset} received after {self.last_received}")
        self.pending.append(offset)
        self.last_received = offset

    def finish(self, offset: int) -> None:
        """Mark one offset finished: its output was acknowledged by the broker."""
        if offset == (self.pending[0] if self.pending else None):
            self.pending.popleft()
            while self.pending and self.pending[0] in self.finished:
                self.finished.discard(self.pending.popleft())
        else:
            self.finished.add(offset)

    @property
    def in_flight(self) -> int:
        return len(self.pending) - len(self.finished)

    def committable(self) -> int | None:
        """The next offset to commit (one past the finished prefix), or None before any record."""
        if self.pending:
            return self.pending[0]
        return None if self.last_received is None else self.last_received + 1

    def to_commit(self) -> int | None:
        """`committable()` when it moved past what was committed last, else None."""
        pos = self.committable()
        if pos is None or (self.committed is not None and pos <= self.committed):
            return None
        return pos


class OffsetTracker:
    """Offsets of every assigned partition, keyed by any hashable partition id."""

    def __init__(self) -> None:
        self._parts: dict[object, PartitionOffsets] = {}

    def received(self, tp: object, offset: int) -> None:
        self._parts.setdefault(tp, PartitionOffsets()).received(offset)

    def finish(self, tp: object, offset: int) -> None:
        part = self._parts.get(tp)
        if part is not None:  # a revoked partition's late completions are dropped
            part.finish(offset)

    def in_flight(self, tp: object | None = None) -> int:
        if tp is not None:
            part = self._parts.get(tp)
            return 0 if part is None else part.in_flight
        return sum(p.in_flight for p in self._parts.values())

    def to_commit(self) -> dict[object, int]:
        out: dict[object, int] = {}
        for tp, part in self._parts.items():
            pos = part.to_commit()
            if pos is not None:
                out[tp] = pos
        return out

    def committed(self, offsets: dict[object, int]) -> None:
        for tp, pos in offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = pos

    def next_offset(self, tp: object) -> int | None:
        """One past the last offset received for `tp` (None before any record)."""
        part = self._parts.get(tp)
        return None if part is None or part.last_received is None else part.last_received + 1

    def drop(self, tp: object) -> None:
        self._parts.pop(tp, None)

    def partitions(self) -> list[object]:
        return list(self._parts)
