"""The HTTP/1.1 engine under the provider adapters, in httpcore's shape: ``parse`` (bytes in,
bytes out, no I/O), ``connection`` (one asyncio connection and its waits), ``pool`` (connections
per origin, limits, keep-alive) and ``http11`` (the one exchange loop, the httpx transport and
the adapters' direct path)."""

from worker.providers.engine.http11 import HttpEngine, ResponseTooLarge
from worker.providers.engine.parse import Origin, encode_request_head, header_line, origin_of

__all__ = [
    "HttpEngine",
    "Origin",
    "ResponseTooLarge",
    "encode_request_head",
    "header_line",
    "origin_of",
]
