"""The dead-letter record: the original bytes, where they came from, and why they were refused."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime

import schemas


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes,
    headers: Sequence[tuple[str, bytes]] = (),
    timestamp_ms: int | None = None,
    error_type: schemas.ErrorCode,
    reason: str,
    worker_id: str | None = None,
) -> schemas.DeadLetter:
    return schemas.DeadLetter(
        schema_version=1,
        reason=reason,
        error_type=error_type,
        original_value_b64=_b64(value),
        original_key_b64=_b64(key) if key is not None else None,
        original_headers=[schemas.DeadLetterHeader(key=k, value_b64=_b64(v)) for k, v in headers],
        source=schemas.DeadLetterSource(
            topic=topic, partition=partition, offset=offset, timestamp_ms=timestamp_ms
        ),
        first_seen_at=datetime.now(UTC),
        worker_id=worker_id,
    )
