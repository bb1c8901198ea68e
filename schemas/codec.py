"""Encode and decode events; one cached msgspec decoder per type.

A record that fails decoding raises `InvalidEvent` whose message names the offending field as a
JSON path (`$.messages[0].role`), which is what the dead-letter record carries as its reason.
A key given twice in one JSON object is an error too (msgspec, like most parsers, would keep the
last): the record key and the id answered must never differ by parser.
"""

from __future__ import annotations

import json
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
    duplicate = _duplicate_key(data)
    if duplicate is not None:
        raise InvalidEvent(type_.__name__, f"duplicate key {duplicate!r} in one object")
    return result


class _Duplicate(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen.add(key)


_ANY = msgspec.json.Decoder()


def _duplicate_key(data: bytes | str) -> str | None:
    """The first key found twice in one object of `data` (already known to be valid JSON).

    Fast path: decoded to plain values and encoded again, a document loses exactly the pairs
    its duplicate keys dropped, each with at least one `:`; every other `:` (in strings too)
    survives as it was, unless written as the escape `\\u003a` (then: the exact slow path)."""
    raw = data.encode() if isinstance(data, str) else data
    if b"\\u003a" not in raw and b"\\u003A" not in raw:
        try:
            same = raw.count(b":") == _ENCODER.encode(_ANY.decode(raw)).count(b":")
        except (msgspec.DecodeError, msgspec.EncodeError, ValueError, OverflowError):
            same = False
        if same:
            return None
    try:
        json.loads(raw, object_pairs_hook=_unique_pairs)
    except _Duplicate as exc:
        return str(exc.args[0])
    return None


def encode(event: msgspec.Struct) -> bytes:
    return _ENCODER.encode(event)


def to_builtins(event: msgspec.Struct) -> Any:
    """The event as plain dicts and lists, as it appears on the wire."""
    return msgspec.to_builtins(event)
