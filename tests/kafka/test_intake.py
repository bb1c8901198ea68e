"""From a fetched record to a request or a dead-letter reason (worker.kafka.intake): every
record gives one or the other, whatever its bytes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

import schemas
from tests.worker.support import ROWS, request_event
from worker.config.kafka import LoopSettings, TopicSettings
from worker.kafka.intake import decode, record_info

TOPICS = TopicSettings()
SETTINGS = LoopSettings(max_request_bytes=4096, reply_topic_pattern=r"replies\..*")


def _record(value: bytes | None, **fields: Any) -> SimpleNamespace:
    base = {
        "topic": "llm.requests",
        "partition": 2,
        "offset": 7,
        "key": b"k",
        "headers": [],
        "timestamp": 1_700_000_000_000,
        "value": value,
    }
    return SimpleNamespace(**{**base, **fields})


def _request(**fields: Any) -> bytes:
    return schemas.encode(request_event(ROWS[0], 1, **fields))


@pytest.mark.parametrize(
    ("value", "error_type", "says"),
    [
        (b"x" * 5000, "OversizedEvent", "exceeds max_request_bytes 4096"),
        (b"{not json", "InvalidEvent", ""),
        (None, "InvalidEvent", ""),
        (_request(reply_topic=".."), "InvalidEvent", "not a valid Kafka topic name"),
        (_request(reply_topic="__consumer_offsets"), "InvalidEvent", "internal topic"),
        (_request(reply_topic=TOPICS.dlq), "InvalidEvent", "one of the worker's own topics"),
        (_request(reply_topic="elsewhere"), "InvalidEvent", "does not match"),
    ],
)
def test_a_record_that_is_not_a_request_gives_its_dead_letter_reason(
    value: bytes | None, error_type: str, says: str
) -> None:
    item = decode(_record(value), SETTINGS, TOPICS)
    assert isinstance(item, tuple)
    assert item[0] == error_type and says in item[1]


def test_a_request_decodes_and_a_raw_problem_wins() -> None:
    item = decode(_record(_request(reply_topic="replies.a")), SETTINGS, TOPICS)
    assert isinstance(item, schemas.RouteRequest) and item.reply_topic == "replies.a"
    assert decode(_record(_request(), problem="bad CRC"), SETTINGS, TOPICS) == (
        "UnreadableRecord",
        "bad CRC",
    )


def test_record_info_keeps_where_it_came_from() -> None:
    info = record_info(_record(b"", headers=[("a", b"1"), ("b", None)]))
    assert (info.topic, info.partition, info.offset, info.key) == ("llm.requests", 2, 7, b"k")
    assert info.headers == [("a", b"1"), ("b", b"")]
    assert info.timestamp_ms == 1_700_000_000_000
