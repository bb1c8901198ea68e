"""JSON log lines and the redaction filter."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from worker.logs import Every, JsonFormatter, setup_logging
from worker.secrets import REDACTED, redact

OPENAI = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx0123"
ANTHROPIC = "sk-ant-api03-ZyXwVuTsRqPoNm-9876543210"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level, before = root.level, list(root.handlers)
    stream = io.StringIO()
    setup_logging("DEBUG", stream)
    yield stream
    root.handlers[:] = before
    root.setLevel(level)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_extras(lines: io.StringIO):
    log = logging.getLogger("worker.kafka.member")
    log.info("routed %s", "req-1", extra={"request_id": "req-1", "tenant": "acme", "model": "s"})
    log.warning("slow", extra={"latency_ms": 812.5, "when": object})
    (first, second) = parsed(lines)
    assert first["msg"] == "routed req-1" and first["level"] == "info"
    assert first["logger"] == "worker.kafka.member"
    assert (first["request_id"], first["tenant"], first["model"]) == ("req-1", "acme", "s")
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2026-01-02T03:04:05.678Z")
    assert second["latency_ms"] == 812.5 and second["when"] == str(object)


def test_keys_and_tokens_are_redacted_everywhere(lines: io.StringIO):
    log = logging.getLogger("worker.providers")
    log.error("calling with %s", OPENAI, extra={"headers": {"authorization": f"Bearer {OPENAI}"}})
    log.error(f"anthropic key {ANTHROPIC} failed", extra={"detail": [f"x-api-key: {ANTHROPIC}"]})
    try:
        raise RuntimeError(f"boom Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig {OPENAI}")
    except RuntimeError:
        log.exception("failed")
    text = lines.getvalue()
    assert "sk-proj" not in text and "sk-ant" not in text and "eyJhbGci" not in text
    entries = parsed(lines)
    assert entries[0]["msg"] == f"calling with {REDACTED}"
    assert entries[0]["headers"] == {"authorization": f"Bearer {REDACTED}"}
    assert entries[2]["exc_type"] == "RuntimeError" and "Traceback" in entries[2]["exc"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key=sk-abcdefghijklmnop", f"key={REDACTED}"),
        ("Bearer abc.def-ghi_jkl", f"Bearer {REDACTED}"),
        ("Basic cGstbGY6c2stbGYtc2VjcmV0", f"Basic {REDACTED}"),
        ('{"api_key": "abcdef123456"}', f'{{"api_key": "{REDACTED}"}}'),
        ("sk-lf-0123456789abcdef", REDACTED),
        ("risk-free tasks and sk-short", "risk-free tasks and sk-short"),
        ("a basic question about bearer bonds", "a basic question about bearer bonds"),
        ("", ""),
    ],
)
def test_redact(text: str, expected: str):
    assert redact(text) == expected


def test_setup_twice_keeps_one_handler(lines: io.StringIO):
    handler = setup_logging("INFO", lines)
    ours = [h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)]
    assert ours == [handler]


def test_every_lets_one_warning_through_per_period_and_resets():
    every = Every(60.0)
    assert not every.fired
    assert every.due(100.0)  # the first occurrence is logged at once
    assert every.fired
    assert not every.due(100.5) and not every.due(159.9)
    assert every.due(160.0)  # a new period starts at the first occurrence after it
    assert not every.due(219.0)
    every.reset()  # the condition ended: its next start is logged at once
    assert not every.fired and every.due(219.5)
