"""The trace id of a request: one rule for the worker's traces, its responses, Langfuse and
feedback scores, and the offline dataset builder.

Request ids are each tenant's own: a request is known by `request_key(tenant, request_id)`
(`["tenant","id"]` as compact JSON; the id alone when the tenant is unknown). Its trace id is
`trace_id_hex(request_key(...))`: the first 16 bytes of the SHA-256 of the key, as 32 lowercase
hex digits, which is Langfuse's `create_trace_id(seed=key)`. So a request's trace is found in
Langfuse and in any OTLP backend from its tenant and id alone, and a replay lands on the same
trace. `route_response.trace_id` and `feedback.trace_id` carry such ids.
"""

from __future__ import annotations

import hashlib
import json

__all__ = ["request_key", "request_trace_id", "trace_id_hex"]


def request_key(tenant: str | None, request_id: str) -> str:
    """A request's identity across tenants, `["tenant","id"]` (compact JSON): two tenants using
    the same request id are two requests. The id alone when the tenant is unknown (None)."""
    if tenant is None:
        return request_id
    return json.dumps([tenant, request_id], ensure_ascii=False, separators=(",", ":"))


def trace_id_hex(seed: str) -> str:
    """32 lowercase hex digits; equal to Langfuse's `create_trace_id(seed=seed)`."""
    return hashlib.sha256(seed.encode("utf-8")).digest()[:16].hex()


def request_trace_id(request_id: str, tenant: str | None = None) -> str:
    """The trace id of the request `request_id` of `tenant`."""
    return trace_id_hex(request_key(tenant, request_id))
