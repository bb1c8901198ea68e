"""The shared HTTP layer of both adapters: one pooled ``httpx.AsyncClient`` per provider,
timeouts, and the boundary where httpx exceptions and non-2xx answers become ProviderErrors."""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import msgspec

from worker.providers.engine import (
    HttpEngine,
    ResponseTooLarge,
    encode_request_head,
    header_line,
    origin_of,
)
from worker.providers.errors import (
    MalformedResponseError,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeoutError,
    status_error,
)
from worker.secrets import redact


@dataclass(frozen=True, slots=True)
class HttpSettings:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    write_timeout_s: float = 10.0
    pool_timeout_s: float = 30.0
    total_timeout_s: float = 120.0  # one HTTP exchange, end to end
    max_connections: int = 2048
    # None: as many as max_connections, so a steady load of N calls in flight reuses N warm
    # connections (a lower cap closes the surplus after each answer and reconnects next call)
    max_keepalive_connections: int | None = None
    keepalive_expiry_s: float = 30.0

    @property
    def keepalive_limit(self) -> int:
        """Idle connections kept for reuse."""
        if self.max_keepalive_connections is None:
            return self.max_connections
        return self.max_keepalive_connections


def default_transport(settings: HttpSettings) -> HttpEngine:
    """The engine every adapter's client runs on, sized by ``settings``."""
    return HttpEngine(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.keepalive_limit,
        keepalive_expiry_s=settings.keepalive_expiry_s,
        ssl_context=_shared_ssl_context(),
    )


_ssl_context: ssl.SSLContext | None = None


def _shared_ssl_context() -> ssl.SSLContext:
    """One TLS context per process (building one loads the CA bundle: ~0.1 s), made lazily."""
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = httpx.create_ssl_context()
    return _ssl_context


def make_client(
    base_url: str,
    settings: HttpSettings,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """One pooled keep-alive client. Carries no credentials: keys go on each request."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.read_timeout_s,
            write=settings.write_timeout_s,
            pool=settings.pool_timeout_s,
        ),
        limits=httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.keepalive_limit,
            keepalive_expiry=settings.keepalive_expiry_s,
        ),
        transport=transport or default_transport(settings),
        follow_redirects=False,
    )


def endpoint_url(client: httpx.AsyncClient, path: str) -> httpx.URL:
    """``path`` under the client's ``base_url``, merged once as httpx would merge it on every
    request (parsing the two URLs is ~15% of the client's CPU per call at 0 ms latency)."""
    base = client.base_url
    return base.copy_with(raw_path=base.raw_path + path.lstrip("/").encode("ascii"))


class RawHeaders:
    """The headers of a :class:`RawResponse`: ``get`` as ``httpx.Headers.get`` (any case; several
    values joined with ", ")."""

    __slots__ = ("raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in self.raw if k.lower() == key]
        return ", ".join(values) if values else default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


class RawResponse:
    """A 2xx answer that came by :meth:`RequestTemplate.send`'s direct path: what the provider
    transports read of a response (``content``, ``headers.get``), without an httpx.Response."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: list[tuple[bytes, bytes]], content: bytes):
        self.status_code = status_code
        self.headers = RawHeaders(headers)
        self.content = content


Answer = httpx.Response | RawResponse

# answer headers that need httpx's own handling (decoding, the cookie jar)
_HTTPX_HEADERS = frozenset({b"content-encoding", b"set-cookie"})


class RequestTemplate:
    """Builds one endpoint's requests as ``client.build_request`` would (the client's headers
    merged under ours, the client's timeout, the URL as given), merging the fixed headers once
    instead of per call (that merge and its header normalisation were about half of httpx's own
    CPU per call). The client's headers and timeout are read when the template is made.

    :meth:`send` goes through ``client.send`` (auth, hooks, redirects, cookie extraction and the
    transport are httpx's), except when the client's transport is our :class:`HttpEngine`
    (given as ``fast``; the client must have no mounts of its own, as :func:`make_client`
    makes it) and the client has no auth, no event hooks, no proxy and no cookies: then the
    request is encoded once here (the same head httpx would send) and exchanged by
    ``HttpEngine.round_trip``, and a plain 2xx answer comes back as a
    :class:`RawResponse`; an encoded or cookie-setting answer, and any non-2xx answer, is still
    made an ``httpx.Response`` (decoded, cookies stored, errors mapped as before). httpx's
    request and response objects and its client layers were about half of the client's CPU per
    call. While the client holds cookies, ``build_request`` does the work."""

    __slots__ = (
        "_client",
        "_close",
        "_fast",
        "_fixed",
        "_fixed_names",
        "_headers",
        "_method",
        "_origin",
        "_prefix",
        "_timeout",
        "_url",
    )

    def __init__(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: httpx.URL,
        headers: Mapping[str, str],
        fast: HttpEngine | None = None,
    ) -> None:
        if not url.is_absolute_url:
            raise ValueError("a request template needs an absolute URL (see endpoint_url)")
        self._client = client
        self._method = method
        self._url = url
        self._fixed = dict(headers)
        merged = httpx.Headers(client.headers)
        merged.update(headers)
        self._headers = merged
        self._timeout = client.timeout.as_dict()
        self._fixed_names = frozenset(name.lower() for name in merged)
        self._fast: HttpEngine | None = None
        self._prefix = b""
        self._close = False
        if fast is not None and _direct_ok(client):
            self._origin = origin_of(url)
            self._prefix, self._close = encode_request_head(method, url, merged.raw)
            self._fast = fast

    def build(
        self, content: bytes, extra_headers: Mapping[str, str] | None = None
    ) -> httpx.Request:
        if self._client.cookies:
            return self._client.build_request(
                self._method,
                self._url,
                headers={**self._fixed, **(extra_headers or {})},
                content=content,
            )
        request = httpx.Request(
            self._method,
            self._url,
            headers=self._headers,
            content=content,
            extensions={"timeout": dict(self._timeout)},
        )
        if extra_headers:
            request.headers.update(extra_headers)
        return request

    async def send(
        self,
        content: bytes,
        extra_headers: Mapping[str, str] | None = None,
        *,
        provider: str,
        model: str | None,
        secrets: Iterable[str],
        timeout_s: float,
        max_body_bytes: int | None = None,
    ) -> Answer:
        """Send one request; return a 2xx answer or raise the mapped ProviderError (as
        :func:`send_request`; ``timeout_s`` caps the whole exchange, ``max_body_bytes`` the
        answer's body as received)."""
        fast, client = self._fast, self._client
        if (
            fast is None
            or client.cookies
            or client.is_closed
            or (extra_headers and not self._fixed_names.isdisjoint(map(str.lower, extra_headers)))
        ):
            return await send_request(
                client,
                self.build(content, extra_headers),
                provider=provider,
                model=model,
                secrets=secrets,
                timeout_s=timeout_s,
                max_body_bytes=max_body_bytes,
            )
        parts = [self._prefix]
        if extra_headers:
            for name, value in extra_headers.items():
                parts.append(header_line(name.encode("ascii"), value.encode("ascii")))
        parts.append(b"Content-Length: %d\r\n\r\n" % len(content))
        parts.append(content)
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            status, headers, body = await fast.round_trip(
                self._origin,
                self._method,
                b"".join(parts),
                self._timeout,
                close=self._close,
                deadline=deadline,
                max_body_bytes=max_body_bytes,
            )
        except (httpx.TransportError, OSError) as exc:  # TimeoutError is an OSError
            raise _mapped(exc, timeout_s, provider, model, secrets) from None
        if status < 300 and not any(name.lower() in _HTTPX_HEADERS for name, _ in headers):
            return RawResponse(status, headers, body)
        request = httpx.Request(self._method, self._url)
        response = httpx.Response(status, headers=headers, content=body, request=request)
        client.cookies.extract_cookies(response)
        if status < 300:
            return response
        raise error_from_response(response, provider=provider, model=model, secrets=tuple(secrets))


def _direct_ok(client: httpx.AsyncClient) -> bool:
    """Whether ``client.send`` hands a request to the client's own transport with nothing of
    its own on the way: no auth flow, no event hooks, no proxy. (httpx mounts proxy transports
    only for the proxies the environment names, and only with ``trust_env``.)"""
    if client.auth is not None or any(client.event_hooks.values()):
        return False
    if not client.trust_env:
        return True
    proxies = urllib.request.getproxies()  # what httpx reads the environment's proxies from
    return not any(proxies.get(scheme) for scheme in ("http", "https", "all"))


def parse_retry_after_s(
    headers: Mapping[str, str], *, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, then ``retry-after`` as seconds
    (floats allowed) or an HTTP date; None when absent or unparsable (as the official SDKs)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(raw)
    if parsed is None:
        return None
    return float(email.utils.mktime_tz(parsed) - now())


def parse_should_retry(headers: Mapping[str, str]) -> bool | None:
    value = headers.get("x-should-retry")
    if value == "true":
        return True
    if value == "false":
        return False
    return None


T = TypeVar("T")

_json_decoder = msgspec.json.Decoder()


async def send(
    client: httpx.AsyncClient,
    method: str,
    path: str | httpx.URL,
    *,
    provider: str,
    model: str | None,
    headers: Mapping[str, str],
    secrets: Iterable[str],
    timeout_s: float,
    json_body: bytes | None = None,
    files: Mapping[str, Any] | None = None,
    data: Mapping[str, str] | None = None,
) -> httpx.Response:
    """Send one request; return a 2xx response or raise the mapped ProviderError.

    ``timeout_s`` caps the whole exchange (connect + send + wait + read)."""
    request = client.build_request(
        method, path, headers=headers, content=json_body, files=files, data=data
    )
    return await send_request(
        client, request, provider=provider, model=model, secrets=secrets, timeout_s=timeout_s
    )


async def send_request(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    provider: str,
    model: str | None,
    secrets: Iterable[str],
    timeout_s: float,
    max_body_bytes: int | None = None,
) -> httpx.Response:
    """``send`` for a request already built (e.g. by a :class:`RequestTemplate`); with
    ``max_body_bytes``, a longer answer body is read no further (MalformedResponseError)."""
    try:
        async with asyncio.timeout(timeout_s):
            if max_body_bytes is None:
                response = await client.send(request)
            else:
                response = await _send_capped(client, request, max_body_bytes)
    except (httpx.TransportError, OSError) as exc:  # TimeoutError is an OSError
        raise _mapped(exc, timeout_s, provider, model, secrets) from None
    if response.status_code < 300:
        return response
    raise error_from_response(response, provider=provider, model=model, secrets=tuple(secrets))


async def _send_capped(
    client: httpx.AsyncClient, request: httpx.Request, limit: int
) -> httpx.Response:
    """``client.send``, the body read as received (content-encoding not undone) up to ``limit``
    bytes: ResponseTooLarge past it, the connection closed unread."""
    response = await client.send(request, stream=True)
    if response.is_stream_consumed:  # the transport answered with the body read already
        if len(response.content) > limit:
            raise ResponseTooLarge(limit, request)
        return response
    try:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLarge(limit, request)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(limit, request)
            chunks.append(chunk)
    finally:
        await response.aclose()
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        content=b"".join(chunks),
        request=request,
        extensions=response.extensions,
    )


def _mapped(
    exc: Exception, timeout_s: float, provider: str, model: str | None, secrets: Iterable[str]
) -> ProviderError:
    """The ProviderError for an exchange that timed out, whose connection failed, or whose
    answer was longer than the caller reads (that one is the same answer again on a retry,
    paid again: not retriable)."""
    if isinstance(exc, ResponseTooLarge):
        err = MalformedResponseError(str(exc), provider=provider, model=model)
        err.retriable = False
        return err
    if isinstance(exc, TimeoutError):
        return ProviderTimeoutError(
            f"no complete answer within {timeout_s:.3f} s", provider=provider, model=model
        )
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeoutError(
            f"{type(exc).__name__}: {redact(str(exc), tuple(secrets))}",
            provider=provider,
            model=model,
        )
    # ConnectError, ReadError, WriteError, RemoteProtocolError, ...: the connection failed.
    return ProviderConnectionError(
        f"{type(exc).__name__}: {redact(str(exc), tuple(secrets))}",
        provider=provider,
        model=model,
    )


def error_from_response(
    response: httpx.Response, *, provider: str, model: str | None, secrets: Iterable[str]
) -> ProviderStatusError:
    try:
        body: Any = _json_decoder.decode(response.content)
    except msgspec.DecodeError:
        # redacted before it is cut (status_error): a key cut short is still a key
        text = response.text[:65_536] if response.content else ""
        body = {"error": {"message": _cut(redact(text, secrets), 300)}} if text else None
    return status_error(
        status=response.status_code,
        body=body,
        provider=provider,
        model=model,
        request_id=response.headers.get("x-request-id") or response.headers.get("request-id"),
        retry_after_s=parse_retry_after_s(response.headers),
        should_retry_header=parse_should_retry(response.headers),
        secrets=secrets,
    )


def decode_json(
    content: bytes,
    typ: type[T],
    *,
    provider: str,
    model: str | None,
    secrets: Iterable[str] = (),
) -> T:
    """Decode a 2xx body into ``typ`` or raise MalformedResponseError."""
    try:
        return msgspec.json.decode(content, type=typ)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        err = MalformedResponseError(
            f"unexpected response body: {_cut(redact(str(exc), secrets), 200)}",
            provider=provider,
            model=model,
        )
        # well-formed JSON of the wrong shape (a fractional token count) is the same answer
        # again on a retry, paid again: not retriable; a cut-off body may be transient
        if isinstance(exc, msgspec.ValidationError):
            err.retriable = False
        raise err from None


__all__ = [
    "HttpSettings",
    "ProviderError",
    "RawResponse",
    "RequestTemplate",
    "decode_json",
    "default_transport",
    "endpoint_url",
    "error_from_response",
    "make_client",
    "parse_retry_after_s",
    "parse_should_retry",
    "send",
    "send_request",
]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit]
