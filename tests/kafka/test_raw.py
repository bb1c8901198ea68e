"""The raw record reader (worker.kafka.raw) on batches built by aiokafka's own builder."""

from __future__ import annotations

from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

from worker.kafka.raw import read_batches


class _NotUtf8(str):
    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xffk"


def _batch(base: int, values: list[bytes], codec: int = 0, bad: int | None = None) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(
        2,
        codec,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=0,
        batch_size=1 << 20,
    )
    for i, value in enumerate(values):
        headers = [(_NotUtf8("k"), b"v")] if i == bad else [("h", None)]
        assert builder.append(i, 1_000 + i, key=b"k%d" % i, value=value, headers=headers)
    data = bytearray(builder.build())
    data[0:8] = base.to_bytes(8, "big")  # the broker assigns the base offset
    return bytes(data)


def test_readable_batches_are_read_whole_from_the_start_offset() -> None:
    data = _batch(10, [b"a", b"b", b"c"], codec=3) + _batch(13, [b"d"])
    out = read_batches("t", 0, data, start=11)
    assert not out.found_problem and out.next_offset == 14
    assert [(r.offset, r.value, r.problem) for r in out.records] == [
        (11, b"b", None),
        (12, b"c", None),
        (13, b"d", None),
    ]
    assert out.records[0].headers == [("h", None)] and out.records[0].key == b"k1"


def test_an_unreadable_header_marks_only_its_record_and_ends_the_read() -> None:
    data = _batch(0, [b"a", b"b", b"c"], codec=1, bad=1) + _batch(3, [b"d"])
    out = read_batches("t", 2, data, start=0)
    assert out.found_problem and out.next_offset == 3
    assert [r.problem is None for r in out.records] == [True, False, True]
    assert "UTF-8" in (out.records[1].problem or "") and out.records[1].value == b"b"


def test_a_corrupt_batch_marks_each_of_its_offsets_and_a_truncated_one_waits() -> None:
    good = _batch(0, [b"a"])
    corrupt = bytearray(_batch(1, [b"b", b"c"]))
    corrupt[-1] ^= 0xFF
    out = read_batches("t", 0, good + bytes(corrupt), start=0)
    assert out.found_problem and out.next_offset == 3
    assert [(r.offset, r.problem is None) for r in out.records] == [
        (0, True),
        (1, False),
        (2, False),
    ]
    assert "CRC" in (out.records[1].problem or "")
    truncated = read_batches("t", 0, good + _batch(1, [b"b"])[:-3], start=0)
    assert not truncated.found_problem and truncated.next_offset == 1
    assert [r.offset for r in truncated.records] == [0]
