"""A sharded connection pool behind one ``httpx.AsyncClient``.

httpcore's pool re-scans every connection on every request event (O(connections) per event,
so O(n^2) for n concurrent calls: at 400 concurrent calls it spends most of its time in
``_assign_requests_to_connections``). Splitting the pool into shards of ``connections_per_shard``
keeps each scan short; a request goes to the shard with the fewest calls in flight, so warm
keep-alive connections are reused. Each shard is a stock ``httpx.AsyncHTTPTransport``, so TLS,
proxies-free HTTP/1.1 and timeouts behave exactly as in httpx.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator

import httpx


class _CountedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, on_close: _Release):
        self._inner = inner
        self._on_close = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._on_close()


class _Release:
    __slots__ = ("_done", "_index", "_load")

    def __init__(self, load: list[int], index: int):
        self._load = load
        self._index = index
        self._done = False

    def __call__(self) -> None:
        if not self._done:
            self._done = True
            self._load[self._index] -= 1


class ShardedTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        *,
        max_connections: int,
        max_keepalive_connections: int,
        keepalive_expiry_s: float,
        connections_per_shard: int = 64,
    ):
        shards = max(1, math.ceil(max_connections / connections_per_shard))
        per_shard = math.ceil(max_connections / shards)
        keepalive = max(1, math.ceil(max_keepalive_connections / shards))
        # one TLS context for every shard (building one loads the CA bundle: ~0.1 s each)
        tls: ssl.SSLContext = httpx.create_ssl_context()
        self._shards = [
            httpx.AsyncHTTPTransport(
                verify=tls,
                limits=httpx.Limits(
                    max_connections=per_shard,
                    max_keepalive_connections=min(keepalive, per_shard),
                    keepalive_expiry=keepalive_expiry_s,
                ),
            )
            for _ in range(shards)
        ]
        self._load = [0] * shards

    @property
    def shards(self) -> int:
        return len(self._shards)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        load = self._load
        index = load.index(min(load))
        load[index] += 1
        release = _Release(load, index)
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_CountedStream(response.stream, release),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()
