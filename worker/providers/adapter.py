"""What both provider adapters share: one pooled ``httpx.AsyncClient`` per ``base_url`` on the
engine (or a transport given), the key kept as a `Secret` and listed for redaction, a repr that
never shows it, and the completion call. An adapter says only what differs: the endpoint, the
headers, the request body, how the answer reads into a result, and its request-id header."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

import httpx
import msgspec

from worker.config.models import ModelSpec
from worker.providers.deployments import parse_rate_limit_headers
from worker.providers.engine import HttpEngine
from worker.providers.errors import ProviderStatusError, status_error
from worker.providers.http import (
    HttpSettings,
    RequestTemplate,
    decode_json,
    default_transport,
    endpoint_url,
    make_client,
    send,
)
from worker.providers.types import CompletionRequest, CompletionResult, ProviderKind, Secret

T = TypeVar("T")


def batch_item_error(
    status: int, body: Any, provider: ProviderKind, model: str, request_id: str | None = None
) -> ProviderStatusError:
    """The error of one item of a provider's batch, as the interactive call would have raised
    it (no retry-after: the batch has ended)."""
    return status_error(
        status=status,
        body=body,
        provider=provider,
        model=model,
        request_id=request_id,
        retry_after_s=None,
        should_retry_header=None,
    )


class HttpAdapter:
    provider: ClassVar[ProviderKind]
    completion_path: ClassVar[str]  # under base_url
    request_id_header: ClassVar[str]  # the provider's id of an answer

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Secret | None,
        http: HttpSettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_body_bytes: int | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        # the most of a completion's answer body read; a longer one is refused, read no further
        self._max_body_bytes = max_body_bytes
        self._api_key = api_key
        self._http = http or HttpSettings()
        if transport is None:
            transport = default_transport(self._http)
        self._client = make_client(self.base_url, self._http, transport)
        self._secret_values: tuple[str, ...] = (api_key.reveal(),) if api_key else ()
        # completions may skip httpx's layers when the engine is underneath (RequestTemplate)
        self._completion = RequestTemplate(
            self._client,
            "POST",
            endpoint_url(self._client, self.completion_path),
            self._headers(),
            transport if isinstance(transport, HttpEngine) else None,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # -- what an adapter says ----------------------------------------------------------------

    def _headers(self, json: bool = True) -> dict[str, str]:
        """The provider's headers (the key among them); ``json``: the body is JSON."""
        raise NotImplementedError

    def _completion_body(self, spec: ModelSpec, request: CompletionRequest) -> dict[str, Any]:
        raise NotImplementedError

    def _completion_headers(self, request: CompletionRequest) -> Mapping[str, str] | None:
        """Headers of one call on top of :meth:`_headers` (none by default)."""
        return None

    def _completion_result(
        self, content: bytes, spec: ModelSpec, *, latency_ms: float, request_id: str | None
    ) -> CompletionResult:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------

    async def complete(
        self, spec: ModelSpec, request: CompletionRequest, *, timeout_s: float
    ) -> CompletionResult:
        payload = msgspec.json.encode(self._completion_body(spec, request))
        started = time.perf_counter()
        response = await self._completion.send(
            payload,
            self._completion_headers(request),
            provider=self.provider,
            model=spec.name,
            secrets=self._secret_values,
            timeout_s=min(timeout_s, self._http.total_timeout_s),
            max_body_bytes=self._max_body_bytes,
        )
        latency_ms = (time.perf_counter() - started) * 1000.0
        result = self._completion_result(
            response.content,
            spec,
            latency_ms=latency_ms,
            request_id=response.headers.get(self.request_id_header),
        )
        limits = parse_rate_limit_headers(response.headers)
        return result if limits is None else replace(result, rate_limit=limits)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        timeout_s: float,
        json_body: bytes | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One call of the provider's other APIs (files, batches) through httpx."""
        return await send(
            self._client,
            method,
            path,
            provider=self.provider,
            model=None,
            headers=self._headers(json=json_body is not None),
            secrets=self._secret_values,
            timeout_s=timeout_s,
            json_body=json_body,
            **kwargs,
        )

    async def _call_json(
        self, typ: type[T], method: str, path: str, *, timeout_s: float, **kwargs: Any
    ) -> T:
        """:meth:`_call`, the answer decoded into ``typ`` (or MalformedResponseError)."""
        response = await self._call(method, path, timeout_s=timeout_s, **kwargs)
        return decode_json(response.content, typ, provider=self.provider, model=None)

    async def aclose(self) -> None:
        await self._client.aclose()
