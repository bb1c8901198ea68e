"""Structured logs: one JSON object per line, secrets scrubbed as defence in depth.

    {"ts": "2026-01-02T03:04:05.678Z", "level": "info", "logger": "worker.kafka.member",
     "msg": "routed", "request_id": "r-1", "tenant": "acme", "model": "small"}

Fields passed with `extra=` are written as top-level keys (values that JSON cannot encode are
written as `str()`); an exception adds `exc_type` and `exc`. `RedactingFilter` applies
`worker.secrets.redact` (the one rule set: credential patterns, and the key values the app
`protect`s at start-up) to the message, the extras and the traceback.
Nothing here runs at import; `setup_logging` installs one handler on the root logger.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any, Final

from worker.secrets import redact

__all__ = [
    "LOG_FORMATS",
    "Every",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "setup_logging",
]

LOG_FORMATS: Final = ("json", "text")

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


class Every:
    """At most once per `seconds` of a clock: for a warning about a condition that can last
    (a broker down, publishing failing), logged with a count instead of once per occurrence.
    `due(now)` is True, and starts a new period, when the last True was `seconds` ago or more
    (or never); `reset()` forgets it, so the next occurrence is logged at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last = float("-inf")

    def due(self, now: float) -> bool:
        if now - self._last >= self.seconds:
            self._last = now
            return True
        return False

    @property
    def fired(self) -> bool:
        """Whether `due` said True since the last reset."""
        return self._last > float("-inf")

    def reset(self) -> None:
        self._last = float("-inf")


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Scrubs the formatted message, string extras and the exception text of each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS:
                record.__dict__[key] = _redact_value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, msg, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        secs = int(record.created)
        millis = int((record.created - secs) * 1000)
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{millis:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """For people at a terminal: `11:44:10 INFO  worker.app  msg  key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        at = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [f"{at} {record.levelname:<7} {record.name}  {record.getMessage()}"]
        extras = [
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _RECORD_ATTRS and not isinstance(v, dict | list)  # the message says it
        ]
        if extras:
            parts.append("  " + " ".join(extras))
        text = "".join(parts)
        if record.exc_info or record.exc_text:
            text += "\n" + (record.exc_text or self.formatException(record.exc_info))  # type: ignore[arg-type]
        return text


class _JsonHandler(logging.StreamHandler[IO[str]]):
    """The handler `setup_logging` installs (a type of its own, so a second call replaces it)."""


def setup_logging(
    level: int | str = "INFO", stream: IO[str] | None = None, fmt: str = "json"
) -> logging.Handler:
    """Send every log record to `stream` (stderr) as JSON lines (`fmt="text"`: readable lines);
    replaces a previous call's handler. Returns the handler (tests read from their own stream).
    An unknown `level` or `fmt` raises ValueError before anything is installed."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use one of {', '.join(LOG_FORMATS)}")
    if isinstance(level, str) and level.upper() not in logging.getLevelNamesMapping():
        raise ValueError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    level = level.upper() if isinstance(level, str) else level
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(old)
    handler = _JsonHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level)
    return handler
