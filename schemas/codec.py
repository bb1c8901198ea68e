"""Encode and decode events; one cached msgspec decoder per type.

A record that fails decoding raises `InvalidEvent` whose message names the offending field as a
JSON path (`$.messages[0].role`), which is what the dead-letter record carries as its reason.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from schemas.events import (
    BatchJob,
    DatasetRecord,
    DeadLetter,
    Feedback,
    RouteRequest,
    RouteResponse,
    RoutingDecision,
)

T = TypeVar("T")

_ENCODER = msgspec.json.Encoder()
_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t)
    for t in (
        RouteRequest,
        RouteResponse,
        RoutingDecision,
        Feedback,
        BatchJob,
        DeadLetter,
        DatasetRecord,
    )
}


class InvalidEvent(ValueError):
    """The bytes are not valid JSON or do not match the event's contract."""

    def __init__(self, event: str, detail: str) -> None:
        super().__init__(f"invalid {event}: {detail}")
        self.event = event
        self.detail = detail


def decode(data: bytes | str, type_: type[T]) -> T:
    """Decode and validate one event; raises InvalidEvent naming the field at fault."""
    decoder = _DECODERS.get(type_) or msgspec.json.Decoder(type_)
    try:
        result: T = decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidEvent(type_.__name__, str(exc)) from None
    return result


def encode(event: msgspec.Struct) -> bytes:
    return _ENCODER.encode(event)


def to_builtins(event: msgspec.Struct) -> Any:
    """The event as plain dicts and lists, as it appears on the wire."""
    return msgspec.to_builtins(event)
