"""HTTP/1.1 as bytes, without I/O: the request head the engine writes, the response head it
reads (status, headers, how the body is framed, whether the connection stays open) and the
chunk-size line of a chunked body. Failures are httpx's ``LocalProtocolError`` (what we would
send is illegal) and ``RemoteProtocolError`` (what the server sent is)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import Final

import httpx

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_CHUNK_LINE_BYTES: Final = 4 * 1024
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}

Origin = tuple[bytes, bytes, int]  # (scheme, host, port): what the pool keys connections by


class Framing(IntEnum):
    """How a response body ends."""

    LENGTH = 0  # after Content-Length bytes
    CHUNKED = 1  # at the zero-size chunk
    UNTIL_CLOSE = 2  # when the server closes the connection
    EMPTY = 3  # no body (HEAD, 1xx, 204, 304)


class ResponseHead:
    """A parsed status line and header block."""

    __slots__ = ("framing", "headers", "keep_alive", "length", "reason", "status", "version")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.version = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.framing = Framing.UNTIL_CLOSE
        self.length = 0
        self.keep_alive = False


def parse_head(raw: bytes, method: str, request: httpx.Request | None) -> ResponseHead:
    """The head of a response to ``method``: ``raw`` is everything before the blank line."""
    lines = raw.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}", request=request)
    head = ResponseHead()
    head.status = int(code)
    head.reason = reason
    head.version = version
    head.headers = _header_lines(lines[1:], request)
    length: int | None = None
    chunked = transfer_encoding = False
    connection = b""
    for name, value in head.headers:
        lname = name.lower()
        if lname == b"content-length":
            for item in value.split(b","):
                item = item.strip()
                if not item.isdigit() or (length is not None and int(item) != length):
                    raise httpx.RemoteProtocolError("bad Content-Length", request=request)
                length = int(item)
        elif lname == b"transfer-encoding":
            transfer_encoding = True
            chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif lname == b"connection":
            connection += b"," + value.lower()
    tokens = {t.strip() for t in connection.split(b",")}
    head.keep_alive = b"close" not in tokens if version == b"HTTP/1.1" else b"keep-alive" in tokens
    if method == "HEAD" or head.status < 200 or head.status in (204, 304):
        head.framing = Framing.EMPTY
    elif transfer_encoding:
        head.framing = Framing.CHUNKED if chunked else Framing.UNTIL_CLOSE
    elif length is not None:
        head.framing = Framing.LENGTH
        head.length = length
    if head.framing == Framing.UNTIL_CLOSE:
        head.keep_alive = False
    return head


def _header_lines(lines: list[bytes], request: httpx.Request | None) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):  # obsolete line folding
            if not headers:
                raise httpx.RemoteProtocolError("folded first header line", request=request)
            name, value = headers.pop()
            headers.append((name, value + b" " + line.strip(b" \t")))
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1:] in (b" ", b"\t"):
            raise httpx.RemoteProtocolError(f"malformed header line {line[:80]!r}", request=request)
        headers.append((name, value.strip(b" \t")))
    return headers


def chunk_size(line: bytes, request: httpx.Request | None) -> int:
    """The size on a chunk-size line (extensions after ``;`` ignored)."""
    size_text = line.split(b";", 1)[0].strip()
    try:
        size = int(size_text, 16)
    except ValueError:
        raise httpx.RemoteProtocolError(
            f"bad chunk size {size_text[:20]!r}", request=request
        ) from None
    if size < 0:
        raise httpx.RemoteProtocolError("negative chunk size", request=request)
    return size


def origin_of(url: httpx.URL, request: httpx.Request | None = None) -> Origin:
    """(scheme, host, port) of an absolute http(s) URL, as the pool keys connections."""
    scheme = url.raw_scheme
    default_port = DEFAULT_PORTS.get(scheme)
    if default_port is None:
        raise httpx.UnsupportedProtocol(
            f"unsupported URL scheme {scheme.decode('ascii', 'replace')!r}", request=request
        )
    if not url.raw_host:
        raise httpx.UnsupportedProtocol("request URL has no host", request=request)
    return (scheme, url.raw_host, url.port or default_port)


def header_line(name: bytes, value: bytes) -> bytes:
    """``name: value\\r\\n``; LocalProtocolError for a CR or LF in either (as httpx sends)."""
    if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
        raise httpx.LocalProtocolError("illegal header value")
    return name + b": " + value + b"\r\n"


def encode_request_head(
    method: str, url: httpx.URL, headers: Sequence[tuple[bytes, bytes]]
) -> tuple[bytes, bool]:
    """The request line, ``Host`` and ``headers`` as ``httpx.Request`` + the engine would write
    them, without the blank line (callers append per-request headers, ``Content-Length`` and
    the body; see :meth:`HttpEngine.round_trip`); and whether they ask the server to close the
    connection."""
    parts = [method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
    close = False
    if not any(name.lower() == b"host" for name, _ in headers):
        parts.append(header_line(b"Host", url.netloc))
    for name, value in headers:
        parts.append(header_line(name, value))
        lname = name.lower()
        if lname == b"connection":
            close = b"close" in value.lower()
        elif lname in (b"content-length", b"transfer-encoding"):
            raise ValueError(f"{name.decode()} is set per request")
    return b"".join(parts), close


def encode_httpx_head(request: httpx.Request) -> tuple[bytes, bool, bool]:
    """The request line and headers of an ``httpx.Request`` (blank line included); whether the
    body goes chunked; whether the request asks the server to close the connection."""
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    chunked = close = False
    for name, value in request.headers.raw:
        if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
            raise httpx.LocalProtocolError("illegal header value", request=request)
        parts += (name, b": ", value, b"\r\n")
        if len(name) in (10, 17):
            lname = name.lower()
            if lname == b"connection":
                close = b"close" in value.lower()
            elif lname == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
    parts.append(b"\r\n")
    return b"".join(parts), chunked, close
