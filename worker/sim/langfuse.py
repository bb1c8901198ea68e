"""A local stand-in for the Langfuse server's ingestion endpoints, on a real socket.

It implements what the worker and the Langfuse Python SDK 4.x talk to:

    POST /api/public/otel/v1/traces   OTLP/HTTP protobuf (gzip or not) -> ExportTraceServiceResponse
    POST /api/public/scores           ONE score object, validated as Langfuse v3/v4 servers do
                                      (`PostScoresBodyV1`, see `validate_score`) -> 200 {"id": ...};
                                      what the server refuses -> 400 {"message", "error"}; no or
                                      malformed basic auth -> 401
    GET  /api/public/health           200 (the SDK does not call it on start-up; kept for probes)
    GET  /api/public/projects         200 (what `Langfuse.auth_check()` calls)
    POST /v1/traces                   plain OTLP/HTTP, for the worker's own OTLP exporter

and records every request (path, headers) so tests can assert nothing else was called.
`score_answers` scripts the next answers to score posts (e.g. `[503, 429]`: two refusals, then
the normal handling; a 0 in the list means "as usual"); `refused` keeps every refused body
with the answer given.
"""

from __future__ import annotations

import base64
import binascii
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


# ---------------------------------------------------------------- the server's score validation

SCORE_FIELDS = frozenset(
    {
        "id",
        "name",
        "traceId",
        "sessionId",
        "datasetRunId",
        "observationId",
        "comment",
        "metadata",
        "environment",
        "queueId",
        "source",
        "value",
        "dataType",
        "configId",
    }
)
_OPTIONAL_STRINGS = (
    "traceId",
    "sessionId",
    "datasetRunId",
    "observationId",
    "comment",
    "queueId",
    "configId",
)
TEXT_SCORE_MAX_LENGTH = 500


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def validate_score(body: Any) -> list[str]:
    """What Langfuse's `PostScoresBodyV1` (v3.225.4 and v4.16.0, identical) refuses, as a list of
    issues (empty: accepted). Unknown fields are stripped by the server, not refused."""
    if not isinstance(body, dict):
        return [f"Expected object, received {type(body).__name__}"]
    issues = []
    name = body.get("name")
    if not isinstance(name, str) or not name:
        issues.append("name: a non-empty string is required")
    sid = body.get("id")
    if sid is not None and (not isinstance(sid, str) or not 0 < len(sid) <= 800 or "\r" in sid):
        issues.append("id: a string of 1 to 800 characters without carriage returns")
    for key in _OPTIONAL_STRINGS:
        if body.get(key) is not None and not isinstance(body[key], str):
            issues.append(f"{key}: expected string")
    if "environment" in body and not isinstance(body["environment"], str):
        issues.append("environment: expected string")
    if "metadata" in body and body["metadata"] is not None:
        try:
            json.dumps(body["metadata"], allow_nan=False)
        except ValueError:
            issues.append("metadata: not JSON")
    source = body.get("source", "API")
    if source not in ("API", "ANNOTATION"):
        issues.append("source: expected 'API' | 'ANNOTATION'")
    value, data_type = body.get("value"), body.get("dataType")
    if data_type in ("NUMERIC", "BOOLEAN") and not _is_number(value):
        issues.append(f"value: expected number for data type {data_type}")
    elif data_type == "BOOLEAN" and value not in (0, 1):
        issues.append("Value must be a number equal to either 0 or 1 for data type BOOLEAN")
    elif data_type in ("CATEGORICAL", "CORRECTION") and not isinstance(value, str):
        issues.append(f"value: expected string for data type {data_type}")
    elif data_type == "TEXT" and not (
        isinstance(value, str) and 1 <= len(value) <= TEXT_SCORE_MAX_LENGTH
    ):
        issues.append("value: a string of 1 to 500 characters for data type TEXT")
    elif data_type is None and not (_is_number(value) or isinstance(value, str)):
        issues.append("value: expected number or string")
    elif data_type not in (None, "NUMERIC", "BOOLEAN", "CATEGORICAL", "CORRECTION", "TEXT"):
        issues.append("dataType: invalid discriminator value")
    if data_type == "CORRECTION" and body.get("configId") is not None:
        issues.append("configId: not allowed for data type CORRECTION")
    if source == "ANNOTATION" and data_type != "CORRECTION" and not body.get("configId"):
        issues.append("configId: required for ANNOTATION scores")
    has = {k: bool(body.get(k)) for k in ("traceId", "sessionId", "datasetRunId")}
    observation = bool(body.get("observationId"))
    if not (
        (has["traceId"] and not has["sessionId"] and not has["datasetRunId"])
        or (has["sessionId"] and not has["traceId"] and not has["datasetRunId"] and not observation)
        or (has["datasetRunId"] and not has["traceId"] and not has["sessionId"] and not observation)
    ):
        issues.append(
            "Provide exactly one of the following: traceId (with optional observationId), "
            "sessionId or datasetRunId. ObservationId requires traceId."
        )
    return issues


def _basic_auth_ok(header: str | None) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return bool(user) and bool(password)


@dataclass
class LangfuseReceiver:
    score_delay_s: float = 0.0
    trace_delay_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    spans: list[WireSpan] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)  # accepted, as sent
    score_answers: list[int] = field(default_factory=list)  # scripted answers, used up in order
    refused: list[tuple[int, Any]] = field(default_factory=list)  # (status, body) of refusals
    unknown_fields: set[str] = field(default_factory=set)  # sent, but not in the server schema
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
                if path == "/api/public/otel/v1/traces" and not _basic_auth_ok(
                    self.headers.get("Authorization")
                ):  # Langfuse's OTLP endpoint wants the project keys, like the rest of its API
                    self._send(
                        401, b'{"message":"Invalid authorization header"}', "application/json"
                    )
                elif path in ("/api/public/otel/v1/traces", "/v1/traces"):
                    time.sleep(receiver.trace_delay_s)
                    receiver._add_spans(path, body)
                    out = ExportTraceServiceResponse().SerializeToString()
                    self._send(200, out, "application/x-protobuf")
                elif path == "/api/public/scores":
                    time.sleep(receiver.score_delay_s)
                    status, answer = receiver._score(self.headers.get("Authorization"), body)
                    self._send(status, json.dumps(answer).encode(), "application/json")
                else:
                    self._send(404, b"{}", "application/json")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def _score(self, authorization: str | None, raw: bytes) -> tuple[int, Any]:
        with self._lock:
            scripted = self.score_answers.pop(0) if self.score_answers else None
        scripted = scripted or None  # 0: answer as usual
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        if scripted is not None:
            answer: Any = {"message": f"scripted answer {scripted}"}
        elif not _basic_auth_ok(authorization):
            scripted, answer = 401, {"message": "Invalid authorization header"}
        elif issues := validate_score(body):
            scripted, answer = 400, {"message": "Invalid request data", "error": issues}
        if scripted is not None:
            with self._lock:
                self.refused.append((scripted, body))
            return scripted, answer
        with self._lock:
            self.unknown_fields |= set(body) - SCORE_FIELDS
            self.scores.append(body)
        return 200, {"id": body.get("id") or f"score-{len(self.scores)}"}

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
