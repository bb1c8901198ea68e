"""Edges of the member's life: stopping mid-rebalance or mid-state-load, hostile records (codecs,
undecodable headers, unpublishable results), and the paid model call made once."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import schemas
from tests.conftest import TopicFactory
from tests.kafka.test_worker_kafka import _run_until, _topics
from tests.kafka_support import create_topics, java_produce
from tests.worker.support import (
    ROWS,
    poll_until,
    produce,
    read_all,
    request_event,
    worker_config,
)
from worker.app import build
from worker.kafka.dedupe import marker
from worker.kafka.member import Worker
from worker.kafka.observer import NullObserver
from worker.kafka.topics import ensure_topics
from worker.sim import Simulator
from worker.sim.harness import NotUtf8 as _NotUtf8
from worker.sim.harness import send_raw_batch as _send_raw_batch

pytestmark = pytest.mark.kafka


async def _fill_done_topic(bootstrap: str, topic: str, n: int) -> None:
    """`n` dedupe markers of source partition 0: a state load that takes a while to read."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1 << 20, acks=1
    )
    await producer.start()
    try:
        acks = [
            await producer.send(topic, marker(0, i), key=b"old-%08d" % i, partition=0)
            for i in range(n)
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def test_stop_during_the_assignment_state_load_returns_cleanly(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """SIGTERM while the rebalance callback loads the partition's dedupe markers: the member
    stops without an exception (it was a CancelledError out of `consumer.stop()`)."""
    topics = await _topics(new_topic, partitions=1)
    config = worker_config(
        kafka_bootstrap, topics, artifact, sim.base_url, loop={"dedupe_window": 400_000}
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    await _fill_done_topic(kafka_bootstrap, topics["done"], 150_000)
    app = build(config)
    worker = app.worker
    task = asyncio.create_task(worker.run())
    try:
        loading = await poll_until(lambda: bool(worker._answered) or task.done(), 60, 0.01)
        assert loading and not task.done()
        assert not worker._answered[0].done(), "the load finished before the stop: too small"
        worker.stop()
        done, _ = await asyncio.wait([task], timeout=60)
        assert done, "the member did not stop"
        assert not task.cancelled()
        assert task.exception() is None, repr(task.exception())
    finally:
        if not task.done():
            task.cancel()
        await app.close()


def _request_values(ids: range, prefix: str = "req") -> list[tuple[bytes, bytes]]:
    return [
        (
            f"{prefix}-{i:06d}".encode(),
            schemas.encode(request_event(ROWS[i % len(ROWS)], i, request_id=f"{prefix}-{i:06d}")),
        )
        for i in ids
    ]


async def _committed_to_end(bootstrap: str, group: str, topic: str, partitions: int) -> bool:
    check = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await check.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await check.end_offsets(tps)
        committed = [await check.committed(tp) for tp in tps]
        return committed == [ends[tp] for tp in tps]
    finally:
        await check.stop()


async def test_every_kafka_codec_is_decoded(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """Records from Kafka's Java producer with each compression.type are answered (lz4, snappy
    and zstd crashed the member: no codec library)."""
    topics = await _topics(new_topic, partitions=2)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    codecs = ["none", "gzip", "snappy", "lz4", "zstd"]
    per = 6
    values = [
        (codec, key, value)
        for c, codec in enumerate(codecs)
        for key, value in _request_values(range(c * per, (c + 1) * per), prefix=codec)
    ]
    await asyncio.to_thread(java_produce, kafka_bootstrap, topics["requests"], values)
    n = per * len(codecs)
    app = build(config)
    try:
        await _run_until(app.worker, lambda: app.worker.stats["published"] >= n, timeout_s=120)
    finally:
        await app.close()
    responses = [
        schemas.decode(r.value, schemas.RouteResponse)
        for r in await read_all(kafka_bootstrap, topics["responses"], n)
    ]
    counts = Counter(r.request_id for r in responses)
    assert set(counts) == {
        f"{c}-{i:06d}" for j, c in enumerate(codecs) for i in range(j * per, (j + 1) * per)
    }
    assert max(counts.values()) == 1
    assert await _committed_to_end(kafka_bootstrap, config.kafka.group_id, topics["requests"], 2)


async def test_an_unreadable_header_is_dead_lettered_and_its_neighbours_answered(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """A header key that is not UTF-8 made aiokafka's reader raise inside `getmany`: the member
    exited 1 on every restart. Now exactly that record is dead-lettered (with its coordinates,
    raw key and value) and every other record of its batch, and after it, is answered."""
    topics = await _topics(new_topic, partitions=1)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    good = _request_values(range(12))
    bad_header = [(_NotUtf8("x"), b"1")]
    plain = [(k, v, []) for k, v in good[:3]] + [(b"poison-1", good[3][1], bad_header)]
    plain += [(k, v, []) for k, v in good[4:6]]
    lz4 = [(k, v, []) for k, v in good[6:8]] + [(b"poison-2", b"{}", bad_header)]
    lz4 += [(k, v, []) for k, v in good[8:10]]
    await _send_raw_batch(kafka_bootstrap, topics["requests"], plain)
    await _send_raw_batch(kafka_bootstrap, topics["requests"], lz4, codec=3)
    await produce(kafka_bootstrap, topics["requests"], list(good[10:]))
    answered = {k.decode() for k, _ in good if k not in (good[3][0],)}
    app = build(config)
    try:
        await _run_until(
            app.worker,
            lambda: (
                app.worker.stats["published"] >= len(answered)
                and app.worker.stats["dead_letters"] >= 2
            ),
            timeout_s=90,
        )
    finally:
        await app.close()
    responses = [
        schemas.decode(r.value, schemas.RouteResponse)
        for r in await read_all(kafka_bootstrap, topics["responses"], len(answered))
    ]
    counts = Counter(r.request_id for r in responses)
    assert set(counts) == answered and max(counts.values()) == 1
    letters = [
        schemas.decode(r.value, schemas.DeadLetter)
        for r in await read_all(kafka_bootstrap, topics["dlq"], 2)
    ]
    by_key = {base64.b64decode(d.original_key_b64 or ""): d for d in letters}
    assert set(by_key) == {b"poison-1", b"poison-2"}
    assert by_key[b"poison-1"].source.offset == 3 and by_key[b"poison-2"].source.offset == 8
    assert base64.b64decode(by_key[b"poison-1"].original_value_b64) == good[3][1]
    for letter in letters:
        assert letter.error_type == "UnreadableRecord" and "UTF-8" in letter.reason
    assert await _committed_to_end(kafka_bootstrap, config.kafka.group_id, topics["requests"], 1)


async def test_results_that_cannot_be_published_as_asked_still_end(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """Each of these froze its partition forever (the publish was retried until the member
    stopped): a header with a null value, reply topics that cannot take a record, a dead letter
    or a response larger than its topic's max.message.bytes. Each now ends in a response, a
    response cut to fit, or a dead-letter record, and the partition's commits reach its end."""
    topics = await _topics(new_topic, partitions=1)
    await create_topics(kafka_bootstrap, [topics["dlq"]], configs={"max.message.bytes": "60000"})
    await create_topics(
        kafka_bootstrap, [topics["responses"]], configs={"max.message.bytes": "1100"}
    )
    taken = f"{topics['requests']}.taken"
    await create_topics(kafka_bootstrap, [taken])
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    good = _request_values(range(4))
    await asyncio.to_thread(
        java_produce,
        kafka_bootstrap,
        topics["requests"],
        [("none", k, v) for k, v in good[:2]],
        null_header=True,
    )
    replies = {
        "dots": "..",
        "internal": "__consumer_offsets",
        "ours": topics["done"],
        "collides": taken.replace(".", "_"),  # Kafka refuses names that collide in metrics
    }
    poison = [
        (
            f"reply-{name}".encode(),
            schemas.encode(
                request_event(ROWS[i], 100 + i, request_id=f"reply-{name}", reply_topic=reply)
            ),
        )
        for i, (name, reply) in enumerate(replies.items())
    ]
    long_answer = request_event(
        ROWS[5], 200, request_id="long-answer", params=schemas.GenerationParams(max_tokens=2000)
    )
    poison.append((b"long-answer", schemas.encode(long_answer)))
    poison.append((b"big-letter", b"\x00not json" * 8000))  # ~80 KB: ~107 KB in base64
    await produce(kafka_bootstrap, topics["requests"], poison + list(good[2:]))
    total = len(good) + len(poison)
    app = build(config)
    try:
        await _run_until(
            app.worker,
            lambda: app.worker.stats["published"] + app.worker.stats["dead_letters"] >= total,
            timeout_s=120,
        )
    finally:
        await app.close()
    responses = [
        schemas.decode(r.value, schemas.RouteResponse)
        for r in await read_all(kafka_bootstrap, topics["responses"], 5)
    ]
    by_id = Counter(r.request_id for r in responses)
    assert {k.decode() for k, _ in good} | {"long-answer"} <= set(by_id)
    assert max(by_id.values()) == 1
    letters = [
        schemas.decode(r.value, schemas.DeadLetter)
        for r in await read_all(kafka_bootstrap, topics["dlq"], len(replies) + 1)
    ]
    by_key = {base64.b64decode(d.original_key_b64 or b""): d for d in letters}
    assert set(by_key) == {f"reply-{n}".encode() for n in replies} | {b"big-letter"}
    big = by_key[b"big-letter"]
    assert big.truncated is not None and big.truncated.original_bytes == 72_000
    assert big.truncated.source.offset == big.source.offset
    assert (
        base64.b64decode(big.original_value_b64)
        == (b"\x00not json" * 8000)[: len(base64.b64decode(big.original_value_b64))]
    )
    # the responses topic takes 1,100 bytes: larger responses were cut, saying so
    cut = [r for r in responses if r.truncated is not None]
    assert cut, "no response was cut: the limit did not bite"
    for r in cut:
        assert r.truncated is not None and r.truncated.original_bytes > 1100 - 512
        assert r.truncated.source.topic == topics["requests"] and r.status == "ok"
    assert await _committed_to_end(kafka_bootstrap, config.kafka.group_id, topics["requests"], 1)


class _FailingMetrics(NullObserver):
    """A loop observer whose `published` raises, as a metric did on a negative count."""

    def __init__(self) -> None:
        self.calls = 0

    def published(self, handled: object) -> None:
        self.calls += 1
        raise ValueError("Counters can only be incremented by non-negative amounts.")


async def test_a_model_answer_is_paid_for_once_when_what_follows_fails(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """A metric raising after the response was acknowledged made the loop redo the whole
    request: a new model call and a new response each second. Now the model is called once,
    one response and one decision event go out per request, and the member carries on."""
    topics = await _topics(new_topic, partitions=1)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    n = 6
    await produce(kafka_bootstrap, topics["requests"], list(_request_values(range(n))))
    app = build(config)
    metrics = _FailingMetrics()
    worker = Worker(config.kafka, config.topics, config.loop, app.pipeline, metrics, app.tracing)
    before = sim.stats.requests
    try:
        await _run_until(worker, lambda: metrics.calls >= n, timeout_s=60)
        await asyncio.sleep(2.0)  # time for any repeat to show
    finally:
        await app.close()
    assert sim.stats.requests - before == n
    responses = await read_all(kafka_bootstrap, topics["responses"], n)
    decisions = await read_all(kafka_bootstrap, topics["decisions"], n)
    assert len(responses) == n and len(decisions) == n
    assert await _committed_to_end(kafka_bootstrap, config.kafka.group_id, topics["requests"], 1)


async def test_the_same_request_twice_in_flight_makes_one_model_call(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """Two records of one request (a producer's retry) fetched together were both answered:
    two model calls, two responses. Now they share one call and one response."""
    topics = await _topics(new_topic, partitions=1)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    values = list(_request_values(range(5)))
    await produce(kafka_bootstrap, topics["requests"], values + values)  # one fetch: all in flight
    app = build(config)
    before = sim.stats.requests
    try:
        await _run_until(
            app.worker,
            lambda: app.worker.stats["published"] + app.worker.stats["duplicates"] >= 10,
            timeout_s=60,
        )
    finally:
        await app.close()
    assert sim.stats.requests - before == 5
    responses = await read_all(kafka_bootstrap, topics["responses"], 5)
    assert Counter(r.key for r in responses) == Counter({k: 1 for k, _ in values})
    assert await _committed_to_end(kafka_bootstrap, config.kafka.group_id, topics["requests"], 1)


class _PeakInFlight(_FailingMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.peak = 0
        self.done = 0

    def in_flight(self, count: int) -> None:
        self.peak = max(self.peak, count)

    def published(self, handled: object) -> None:
        self.done += 1


async def test_in_flight_memory_is_bounded_in_bytes(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """Large requests: the count bound (2,000) let 400 requests of 0.9 MB in at once. With
    `max_in_flight_bytes` the member holds about that many bytes (at most twice: the bound,
    plus one fetch, which is capped by it)."""
    from worker.sim import Latency

    sim.config = dataclasses.replace(sim.config, latency=Latency(ms=300))
    topics = await _topics(new_topic, partitions=1)
    config = worker_config(
        kafka_bootstrap, topics, artifact, sim.base_url, loop={"max_in_flight_bytes": 400_000}
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    n = 16
    values = [
        (
            f"big-{i:06d}".encode(),
            schemas.encode(
                request_event(
                    ROWS[i], i, request_id=f"big-{i:06d}", metadata={"pad": "x" * 100_000}
                )
            ),
        )
        for i in range(n)
    ]
    await produce(kafka_bootstrap, topics["requests"], values)
    app = build(config)
    observer = _PeakInFlight()
    worker = Worker(config.kafka, config.topics, config.loop, app.pipeline, observer, app.tracing)
    try:
        await _run_until(worker, lambda: observer.done >= n, timeout_s=120)
    finally:
        await app.close()
    print(f"\npeak in flight: {observer.peak} records of ~100 KB (bound 400 KB)")
    assert observer.peak <= 2 * 400_000 // 100_000 + 1


async def test_poison_suite_against_one_member(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """Every kind of poison record above, mixed with valid requests, against one member: it
    stays up, every valid request is answered exactly once, every poison record is
    dead-lettered or error-answered, and the committed offsets reach the end offsets."""
    topics = await _topics(new_topic, partitions=2)
    await create_topics(kafka_bootstrap, [topics["dlq"]], configs={"max.message.bytes": "60000"})
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    valid = list(_request_values(range(40)))
    # compressed batches from Kafka's Java producer, some with null header values
    codecs = ["none", "gzip", "snappy", "lz4", "zstd"]
    await asyncio.to_thread(
        java_produce,
        kafka_bootstrap,
        topics["requests"],
        [(codecs[i % 5], k, v) for i, (k, v) in enumerate(valid[:20])],
    )
    await asyncio.to_thread(
        java_produce,
        kafka_bootstrap,
        topics["requests"],
        [("lz4", k, v) for k, v in valid[20:25]],
        null_header=True,
    )
    # an unreadable header key amid readable records, in one batch
    bad_header = [(_NotUtf8("x"), b"1")]
    await _send_raw_batch(
        kafka_bootstrap,
        topics["requests"],
        [(k, v, []) for k, v in valid[25:28]]
        + [(b"poison-header", b"{}", bad_header)]
        + [(k, v, []) for k, v in valid[28:30]],
        codec=2,
    )
    poison: list[tuple[bytes | None, bytes]] = [
        (b"poison-json", b"{not json"),
        (b"poison-big-letter", b"\x00" * 70_000),
        (
            b"poison-reply-dots",
            schemas.encode(
                request_event(ROWS[0], 900, request_id="poison-reply-dots", reply_topic="..")
            ),
        ),
        (
            b"poison-reply-internal",
            schemas.encode(
                request_event(
                    ROWS[1],
                    901,
                    request_id="poison-reply-internal",
                    reply_topic="__consumer_offsets",
                )
            ),
        ),
    ]
    # the last ten valid requests twice each (a producer's retry): answered once
    await produce(kafka_bootstrap, topics["requests"], poison + valid[30:] + valid[30:])
    before = sim.stats.requests
    app = build(config)
    try:
        await _run_until(
            app.worker,
            lambda: (
                app.worker.stats["published"] >= len(valid)
                and app.worker.stats["dead_letters"] >= len(poison) + 1
            ),
            timeout_s=120,
        )
    finally:
        await app.close()
    responses = await read_all(kafka_bootstrap, topics["responses"], len(valid))
    counts = Counter(r.key for r in responses)
    assert counts == Counter({k: 1 for k, _ in valid})
    assert sim.stats.requests - before == len(valid)  # one model call per valid request
    letters = [
        schemas.decode(r.value, schemas.DeadLetter)
        for r in await read_all(kafka_bootstrap, topics["dlq"], len(poison) + 1)
    ]
    keys = {base64.b64decode(d.original_key_b64 or b"") for d in letters}
    assert keys == {k for k, _ in poison} | {b"poison-header"}
    assert app.worker.stats["abandoned"] == 0
    assert await _committed_to_end(kafka_bootstrap, config.kafka.group_id, topics["requests"], 2)


async def test_an_unreadable_record_loses_nothing_of_the_other_partitions(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """When aiokafka's reader raises, the records it had already taken from other partitions in
    that call are dropped with the exception, their positions moved on: without a rewind they
    were never answered, yet committed (608 of 10,000 in bench/chaos_bench.py)."""
    topics = await _topics(new_topic, partitions=6)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    good = _request_values(range(120))
    await produce(kafka_bootstrap, topics["requests"], list(good))
    for i in range(3):
        await _send_raw_batch(
            kafka_bootstrap,
            topics["requests"],
            [(f"poison-{i}".encode(), b"{}", [(_NotUtf8("x"), b"1")])],
        )
    app = build(config)
    try:
        await _run_until(
            app.worker,
            lambda: (
                app.worker.stats["dead_letters"] >= 3 and app.worker.stats["published"] >= len(good)
            ),
            timeout_s=60,
        )
    finally:
        await app.close()
    responses = await read_all(kafka_bootstrap, topics["responses"], len(good))
    assert {r.key for r in responses} == {k for k, _ in good}
    assert await _committed_to_end(kafka_bootstrap, config.kafka.group_id, topics["requests"], 6)


class _BrokenPipeline:
    """A pipeline whose every path raises (a bug): the record must still end."""

    def prepare(self, requests: object) -> list[None]:
        return []

    async def handle(self, *args: object, **kwargs: object) -> object:
        raise RuntimeError("bug in handle")

    def batch_response(self, finished: object) -> object:
        raise RuntimeError("bug")

    def internal_error(self, *args: object) -> object:
        raise RuntimeError("bug in internal_error")


async def test_a_request_whose_handling_raises_is_dead_lettered_not_dropped(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """When even the error response cannot be built, the record used to be finished without
    any output (its offset committed: lost). It now ends as a dead letter after the bounded
    attempts."""
    topics = await _topics(new_topic, partitions=1)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    await produce(kafka_bootstrap, topics["requests"], list(_request_values(range(2))))
    worker = Worker(config.kafka, config.topics, config.loop, _BrokenPipeline())
    await _run_until(worker, lambda: worker.stats["dead_letters"] >= 2, timeout_s=60)
    letters = await read_all(kafka_bootstrap, topics["dlq"], 2)
    assert {r.key for r in letters} == {b"req-000000", b"req-000001"}
    for r in letters:
        assert schemas.decode(r.value, schemas.DeadLetter).error_type == "Unpublishable"
