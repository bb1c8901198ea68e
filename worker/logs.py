"""Structured logs: one JSON object per line, secrets scrubbed as defence in depth.

    {"ts": "2026-01-02T03:04:05.678Z", "level": "info", "logger": "worker.loop",
     "msg": "routed", "request_id": "r-1", "tenant": "acme", "model": "small"}

Fields passed with `extra=` are written as top-level keys (values that JSON cannot encode are
written as `str()`); an exception adds `exc_type` and `exc`. `RedactingFilter` scrubs API keys
(`sk-...`, `sk-ant-...`, Langfuse `sk-lf-...`), `Bearer`/`Basic` credentials,
`api-key`/`x-api-key`-style header values and SASL/PLAIN auth bytes from the message, the
extras and the traceback; and, once `protect` has been given them (the app does, at start-up),
every fragment of the configured key values themselves (`worker.secrets.Redactor`). The
logging machinery is process-wide, so that set is too.
Nothing here runs at import; `setup_logging` installs one handler on the root logger.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import IO, Any, Final

from worker.secrets import Redactor

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "protect",
    "redact",
    "setup_logging",
]

LOG_FORMATS: Final = ("json", "text")

REDACTED: Final = "[REDACTED]"

_SECRET_PATTERNS: Final = (
    # SASL/PLAIN authentication bytes as aiokafka logs them at DEBUG ("user\x00user\x00password")
    (re.compile(r"(sasl_auth_bytes=)b?(['\"]).*?(?<!\\)\2"), rf"\1{REDACTED}"),
    # OpenAI (sk-, sk-proj-), Anthropic (sk-ant-), Langfuse secret keys (sk-lf-) and the like.
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), REDACTED),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"), rf"\1 {REDACTED}"),
    # HTTP basic credentials: base64 with a digit or +/= in it, so prose ("basic question") stays.
    (
        re.compile(r"\b(Basic)\s+(?=[A-Za-z0-9+/]*[0-9+/=])[A-Za-z0-9+/]{12,}={0,2}"),
        rf"\1 {REDACTED}",
    ),
    (
        re.compile(
            r"(?i)\b((?:x-)?api[-_]?key|authorization|secret[-_]?key)(\"?\s*[:=]\s*\"?)"
            r"(?!\[REDACTED\])[^\s\"',;}]{6,}"
        ),
        rf"\1\2{REDACTED}",
    ),
)

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


_configured = Redactor()


def protect(redactor: Redactor) -> None:
    """From now on, `redact` (log records, span error messages) also removes these secrets."""
    global _configured
    _configured = _configured.merged(redactor)


def redact(text: str) -> str:
    """`text` with anything that looks like an API key or credential replaced."""
    if not text:
        return text
    text = _configured(text)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


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
