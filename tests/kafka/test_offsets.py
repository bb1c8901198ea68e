from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.kafka.offsets import OffsetTracker, PartitionOffsets


def test_commits_only_the_finished_prefix() -> None:
    p = PartitionOffsets()
    for off in (10, 11, 12, 15):  # a gap at 13-14, as after a transaction marker
        p.received(off)
    assert p.committable() == 10
    p.finish(12)
    p.finish(11)
    assert p.committable() == 10
    p.finish(10)
    assert p.committable() == 15
    p.finish(15)
    assert p.committable() == 16
    assert p.in_flight == 0


def test_to_commit_only_when_moved() -> None:
    t = OffsetTracker()
    t.received("p0", 0)
    assert t.to_commit() == {"p0": 0}
    t.committed({"p0": 0})
    assert t.to_commit() == {}
    t.finish("p0", 0)
    assert t.to_commit() == {"p0": 1}


def test_out_of_order_receive_is_a_bug() -> None:
    p = PartitionOffsets()
    p.received(5)
    with pytest.raises(ValueError, match="after 5"):
        p.received(5)


def test_late_completion_of_a_dropped_partition_is_ignored() -> None:
    t = OffsetTracker()
    t.received("p0", 3)
    t.drop("p0")
    t.finish("p0", 3)
    assert t.to_commit() == {}
    assert t.in_flight() == 0


@given(
    gaps=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=60),
    data=st.data(),
)
def test_committable_is_first_unfinished_or_end(gaps: list[int], data: st.DataObject) -> None:
    offsets, pos = [], 0
    for g in gaps:
        pos += g
        offsets.append(pos)
    p = PartitionOffsets()
    for off in offsets:
        p.received(off)
    order = data.draw(st.permutations(offsets))
    done: set[int] = set()
    for off in order:
        p.finish(off)
        done.add(off)
        unfinished = [o for o in offsets if o not in done]
        expected = unfinished[0] if unfinished else offsets[-1] + 1
        assert p.committable() == expected
        assert p.in_flight == len(unfinished)
