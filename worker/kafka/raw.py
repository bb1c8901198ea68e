"""Reading records that aiokafka's reader refuses, one record at a time.

aiokafka decodes a whole fetch at once: a single record it cannot read (a header key that is not
UTF-8, a batch whose CRC or compression is broken) raises inside `getmany` and, refetched, raises
again on every poll, so one record would stop its partition and crash every member that takes
it. When that happens the loop reads the partition's raw record batches here (a plain Fetch
request), with a reader that keeps every record it can read and says what is wrong with the
others, so exactly those are dead-lettered and the partition moves on.

Only the v2 record-batch format exists on the brokers we support (Kafka 4 removed v0/v1).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.errors import for_code
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.util import calc_crc32c, decode_varint

_BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")  # base offset .. record count: 61 bytes
_CRC_FROM = 21  # the CRC covers the batch from its attributes on
_CODECS: dict[int, Callable[[bytes], bytes]] = {
    1: gzip_decode,
    2: snappy_decode,
    3: lz4_decode,
    4: zstd_decode,
}


@dataclass(frozen=True)
class RawRecord:
    """A record as read here: the shape of aiokafka's `ConsumerRecord` the loop uses, plus
    `problem`, the reason it cannot be handled (None: readable)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    problem: str | None = None


@dataclass(frozen=True)
class Salvaged:
    """The records of the batches read, in offset order, and the offset to resume from."""

    records: list[RawRecord]
    next_offset: int
    found_problem: bool


def read_batches(topic: str, partition: int, data: bytes, start: int) -> Salvaged:
    """Parse the record batches in `data` (a fetch response's record set) from offset `start`,
    up to and including the first batch that holds a record aiokafka cannot read. A truncated
    batch at the end (fetches may cut the last one) is left for the next fetch."""
    records: list[RawRecord] = []
    pos, next_offset = 0, start
    view = memoryview(data)
    while len(data) - pos >= _BATCH_HEADER.size:
        (
            base,
            length,
            _epoch,
            magic,
            crc,
            attributes,
            last_delta,
            base_ts,
            _max_ts,
            _pid,
            _pepoch,
            _seq,
            count,
        ) = _BATCH_HEADER.unpack_from(data, pos)
        end = pos + 12 + length
        if length < _BATCH_HEADER.size - 12 or end > len(data):
            break  # truncated
        last = base + last_delta
        body = view[pos + _BATCH_HEADER.size : end]
        checked = view[pos + _CRC_FROM : end]
        pos = end
        if last < start:
            continue
        first = max(base, start)
        batch_problem: str | None = None
        if magic != 2:
            batch_problem = f"record batch of unsupported magic {magic}"
        elif calc_crc32c(bytes(checked)) != crc:
            batch_problem = "record batch CRC mismatch (corrupt batch)"
        if batch_problem is None and attributes & 0x20:  # control batch: not data
            next_offset = last + 1
            continue
        payload = b""
        if batch_problem is None:
            codec = attributes & 0x07
            try:
                payload = bytes(body) if codec == 0 else _CODECS[codec](bytes(body))
            except KeyError:
                batch_problem = f"record batch of unknown compression codec {codec}"
            except Exception as exc:
                batch_problem = f"record batch does not decompress ({type(exc).__name__})"
        if batch_problem is not None:
            records.extend(
                RawRecord(topic, partition, o, None, None, None, [], batch_problem)
                for o in range(first, last + 1)
            )
            return Salvaged(records, last + 1, True)
        found, batch = _records(topic, partition, payload, count, base, base_ts, first)
        records.extend(batch)
        next_offset = last + 1
        if found:
            return Salvaged(records, next_offset, True)
    return Salvaged(records, next_offset, False)


def _records(
    topic: str, partition: int, payload: bytes, count: int, base: int, base_ts: int, first: int
) -> tuple[bool, list[RawRecord]]:
    out: list[RawRecord] = []
    buf = bytearray(payload)
    pos, found = 0, False
    for _ in range(count):
        try:
            length, pos = decode_varint(buf, pos)
            end = pos + length
            if length < 0 or end > len(buf):
                raise ValueError("record length beyond its batch")
            record, problem = _record(topic, partition, buf, pos, end, base, base_ts)
        except (ValueError, IndexError) as exc:
            # the rest of the batch cannot be framed: nothing more is readable in it
            out.append(
                RawRecord(
                    topic,
                    partition,
                    base + len(out),
                    None,
                    None,
                    None,
                    [],
                    f"malformed record ({exc})",
                )
            )
            return True, [r for r in out if r.offset >= first]
        pos = end
        found = found or problem is not None
        if record.offset >= first:
            out.append(record)
    return found, out


def _record(
    topic: str, partition: int, buf: bytearray, pos: int, end: int, base: int, base_ts: int
) -> tuple[RawRecord, str | None]:
    pos += 1  # attributes: unused
    ts_delta, pos = decode_varint(buf, pos)
    offset_delta, pos = decode_varint(buf, pos)
    key, pos = _bytes(buf, pos)
    value, pos = _bytes(buf, pos)
    n_headers, pos = decode_varint(buf, pos)
    headers: list[tuple[str, bytes | None]] = []
    problem = None
    for _ in range(n_headers):
        raw_key, pos = _bytes(buf, pos)
        h_value, pos = _bytes(buf, pos)
        if raw_key is None:
            raise ValueError("negative header key size")
        try:
            h_key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            h_key = raw_key.decode("utf-8", errors="backslashreplace")
            problem = f"header key {h_key!r} is not valid UTF-8"
        headers.append((h_key, h_value))
    if pos > end:
        raise ValueError("record fields beyond its length")
    record = RawRecord(
        topic, partition, base + offset_delta, base_ts + ts_delta, key, value, headers, problem
    )
    return record, problem


def _bytes(buf: bytearray, pos: int) -> tuple[bytes | None, int]:
    length, pos = decode_varint(buf, pos)
    if length < 0:
        return None, pos
    if pos + length > len(buf):
        raise ValueError("field beyond its record")
    return bytes(buf[pos : pos + length]), pos + length


class RawFetcher:
    """Plain Fetch requests to a partition's leader, on a client of its own (started on first
    use): the record bytes exactly as the broker stores them."""

    def __init__(
        self, client_kwargs: Callable[[], dict[str, Any]], max_bytes: int = 1024 * 1024
    ) -> None:
        self._kwargs = client_kwargs
        self._max_bytes = max_bytes
        self._client: AIOKafkaClient | None = None

    async def fetch(self, tp: TopicPartition, offset: int) -> bytes:
        client = await self._started()
        client.add_topic(tp.topic)
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            await client.force_metadata_update()
            leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            raise for_code(5)(f"no leader for {tp}")  # LeaderNotAvailable
        request = FetchRequest(
            500, 1, self._max_bytes, 0, [(tp.topic, [(tp.partition, offset, self._max_bytes)])]
        )
        response = await client.send(leader, request)
        for _topic, partitions in response.topics:
            for partition, error_code, _high, *rest in partitions:
                if partition != tp.partition:
                    continue
                if error_code:
                    raise for_code(error_code)(f"fetching {tp} at {offset}")
                return bytes(rest[-1] or b"")
        return b""

    async def probe(self, timeout_s: float = 5.0) -> None:
        """Raise unless the cluster answers a metadata request within `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            client = await self._started()
            await client.fetch_all_metadata()

    async def _started(self) -> AIOKafkaClient:
        """The client, bootstrapped; one whose bootstrap fails or is interrupted is closed
        (its connections never left open)."""
        if self._client is not None:
            return self._client
        client = AIOKafkaClient(**self._kwargs())
        try:
            await client.bootstrap()
        except BaseException:
            await client.close()
            raise
        self._client = client
        return client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
