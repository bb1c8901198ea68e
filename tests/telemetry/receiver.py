"""A local stand-in for the Langfuse server's ingestion endpoints, on a real socket.

It implements what the Langfuse Python SDK 5.x talks to:

    POST /api/public/otel/v1/traces   OTLP/HTTP protobuf (gzip or not) -> ExportTraceServiceResponse
    POST /api/public/scores           JSON list of scores -> 202 {"message": "Accepted"}
    GET  /api/public/health           200 (the SDK does not call it on start-up; kept for probes)
    GET  /api/public/projects         200 (what `Langfuse.auth_check()` calls)
    POST /v1/traces                   plain OTLP/HTTP, for the worker's own OTLP exporter

and records every request (path, headers) so tests can assert nothing else was called.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def _any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return _attrs(v.kvlist_value.values)
    if kind is None:
        return None
    return getattr(v, kind)


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass
class WireSpan:
    """One span as decoded from an OTLP request."""

    path: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    resource: dict[str, Any]
    scope: str
    status_code: int


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class LangfuseReceiver:
    score_delay_s: float = 0.0
    trace_delay_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    spans: list[WireSpan] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LangfuseReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _read(self) -> bytes:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.requests.append(
                        Received(
                            self.command,
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                        )
                    )
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                return body

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._read()
                if self.path.startswith(("/api/public/health", "/api/public/projects")):
                    self._send(200, b'{"status":"OK","data":[]}', "application/json")
                else:
                    self._send(404, b"{}", "application/json")

            def do_POST(self) -> None:
                body = self._read()
                path = self.path.split("?", 1)[0]
                if path in ("/api/public/otel/v1/traces", "/v1/traces"):
                    time.sleep(receiver.trace_delay_s)
                    receiver._add_spans(path, body)
                    out = ExportTraceServiceResponse().SerializeToString()
                    self._send(200, out, "application/x-protobuf")
                elif path == "/api/public/scores":
                    time.sleep(receiver.score_delay_s)
                    with receiver._lock:
                        receiver.scores.extend(json.loads(body))
                    self._send(202, b'{"message":"Accepted"}', "application/json")
                else:
                    self._send(404, b"{}", "application/json")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _add_spans(self, path: str, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        decoded = [
            WireSpan(
                path=path,
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex(),
                name=span.name,
                kind=span.kind,
                attributes=_attrs(span.attributes),
                links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                resource=_attrs(rs.resource.attributes),
                scope=ss.scope.name,
                status_code=span.status.code,
            )
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        with self._lock:
            self.spans.extend(decoded)

    def wait_for(
        self, predicate: Callable[[LangfuseReceiver], bool], timeout_s: float = 10
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self):
                    return
            time.sleep(0.02)
        raise AssertionError(f"receiver: condition not met in {timeout_s}s; got {self.requests}")
