"""Secrets never leave the worker: one rule set, `redact`, for every text that goes to logs, spans,
errors and dead letters, and `Redactor` for the configured secret values themselves.

`redact(text, secrets=())` removes, in this order: every fragment of the secrets given and of
those `protect`ed process-wide (the app protects the catalogue's key values at start-up); then
every credential-shaped string: API keys (`sk-...`, `sk-ant-...`, Langfuse `sk-lf-...`), masked
key echoes (`sk-abc***wxyz`, as providers print them in 401 errors), `Bearer`/`Basic`
credentials, `api-key`/`authorization`/`secret-key` header or field values, and SASL/PLAIN auth
bytes. Provider answers are not text of this kind: `worker.providers.redaction` removes the
configured values from them (`Redactor`) but applies no patterns, which would rewrite answers
that show code (`api_key=os.environ[...]`).

Redaction by the configured secret values themselves:

A provider can echo its key anywhere: a response header, an error body (JSON or plain text), the
answer itself; upper-cased, glued to other text, cut at any point. `Redactor` removes every
fragment of `MIN_FRAGMENT` (12) or more characters of any configured secret, in any case, wherever
it starts, whatever the key's prefix. It must run before any truncation: a cut key is a fragment.

How: any fragment of 12+ characters of a secret contains one of the secret's 6-character pieces
that start at a multiple of 6 (a fragment starting at `a` holds the piece at `6 * ceil(a / 6)`,
which ends by `a + 11`). Each piece is looked for with `str.find` (C speed); each hit is extended
left and right while the text keeps matching the secret, and a match of 12+ characters (or the
whole of a shorter secret) is replaced. Secrets shorter than `MIN_SECRET` are not redacted (too
short to tell from ordinary text).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Final

__all__ = ["MIN_FRAGMENT", "MIN_SECRET", "REDACTED", "Redactor", "protect", "redact"]

REDACTED: Final = "[REDACTED]"
MIN_FRAGMENT: Final = 12
MIN_SECRET: Final = 8
_PIECE: Final = 6


class Redactor:
    """Replaces every 12+ character fragment (any case) of the given secrets with `[REDACTED]`."""

    __slots__ = ("_pieces", "_secrets")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        lowered = {s.lower() for s in secrets if s and len(s) >= MIN_SECRET}
        self._secrets: tuple[str, ...] = tuple(sorted(lowered))
        # (piece, secret, offset of the piece in the secret)
        self._pieces: tuple[tuple[str, str, int], ...] = tuple(
            (secret[k : k + _PIECE], secret, k)
            for secret in self._secrets
            for k in range(0, len(secret) - _PIECE + 1, _PIECE)
        )

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"  # never the values

    def merged(self, other: Redactor) -> Redactor:
        """Both sets of secrets (each once: merging the same keys again adds no work)."""
        if set(other._secrets) <= set(self._secrets):
            return self
        return Redactor({*self._secrets, *other._secrets})

    def __call__(self, text: str) -> str:
        if not self._pieces or len(text) < _PIECE:
            return text
        low = _lower_same_length(text)
        spans: list[tuple[int, int]] = []
        for piece, secret, k in self._pieces:
            start = low.find(piece)
            while start != -1:
                span = _extend(low, start, secret, k)
                if span is not None:
                    spans.append(span)
                start = low.find(piece, start + 1)
        if not spans:
            return text
        spans.sort()
        merged: list[list[int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        out: list[str] = []
        at = 0
        for a, b in merged:
            out.append(text[at:a])
            out.append(REDACTED)
            at = b
        out.append(text[at:])
        return "".join(out)

    def found(self, text: str) -> bool:
        """Whether `text` holds a fragment `__call__` would remove."""
        return self(text) != text


def _lower_same_length(text: str) -> str:
    low = text.lower()
    if len(low) == len(text):
        return low
    # a few characters lower-case to two (U+0130): keep positions aligned with `text`
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def _extend(low: str, at: int, secret: str, k: int) -> tuple[int, int] | None:
    """The longest match of `secret` around `low[at:at+6] == secret[k:k+6]`, if long enough."""
    i = 0
    while at - i > 0 and k - i > 0 and low[at - i - 1] == secret[k - i - 1]:
        i += 1
    j = _PIECE
    n, m = len(low), len(secret)
    while at + j < n and k + j < m and low[at + j] == secret[k + j]:
        j += 1
    length = i + j
    if length >= MIN_FRAGMENT or length == m:
        return at - i, at + j
    return None


_PATTERNS: Final = (
    # SASL/PLAIN authentication bytes as aiokafka logs them at DEBUG ("user\x00user\x00password")
    (re.compile(r"(sasl_auth_bytes=)b?(['\"]).*?(?<!\\)\2"), rf"\1{REDACTED}"),
    # a key masked in the middle, as providers echo it in 401 errors (`sk-abc***wxyz`)
    (re.compile(r"\b(?:sk|key)[-_][A-Za-z0-9_\-]*\*+[A-Za-z0-9_\-]*"), REDACTED),
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

_protected = Redactor()


def protect(redactor: Redactor) -> None:
    """From now on, `redact` also removes these secrets, in this process (logs are
    process-wide, so the set is too)."""
    global _protected
    _protected = _protected.merged(redactor)


@functools.lru_cache(maxsize=64)
def _redactor_of(secrets: tuple[str, ...]) -> Redactor:
    return Redactor(secrets)


def redact(text: str, secrets: Redactor | Iterable[str] = ()) -> str:
    """`text` without any fragment of the protected or given secrets, nor anything that looks
    like a credential (the one rule set; see the module docstring)."""
    if not text:
        return text
    text = _protected(text)
    given = secrets if isinstance(secrets, Redactor) else _redactor_of(tuple(secrets))
    text = given(text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
