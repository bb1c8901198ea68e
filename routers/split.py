"""Deterministic traffic splits (as OpenTelemetry's `TraceIdRatioBased` hashes the trace id): an
A/B arm or a shadow sample is a pure function of a stable key, usually the request id, and a
salt naming the experiment, so a replay or a redelivery makes the same choice on every member."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def bucket(key: str, salt: str = "") -> float:
    """A uniform number in [0, 1) from `key` and `salt` (the first 8 bytes of SHA-256)."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def sampled(key: str, fraction: float, salt: str = "") -> bool:
    """Whether `key` falls in a `fraction` sample (monotone: a larger fraction keeps every key a
    smaller one kept)."""
    return bucket(key, salt) < fraction


def choose(key: str, weights: Sequence[float], salt: str = "") -> int:
    """The index of the arm `key` falls in, arms sized by their (non-negative) weights."""
    total = sum(weights)
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    point = bucket(key, salt) * total
    upto = 0.0
    for i, w in enumerate(weights):
        upto += w
        if point < upto:
            return i
    return max(i for i, w in enumerate(weights) if w > 0)
