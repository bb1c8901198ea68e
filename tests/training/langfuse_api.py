"""A local stand-in for the Langfuse public read API, on a real socket.

It speaks what `worker.training.outcome_sources.LangfuseSource` reads, as Langfuse documents it (the
generated client in the langfuse 5.x SDK, `langfuse/api/observations` and `langfuse/api/scores`):

    GET /api/public/v2/observations   cursor pages; `limit` 0..1000 (else 400); field groups
                                      core (always), basic, time, io, metadata, model, usage, ...
                                      (unknown ones are left out, as the server does);
                                      filters type, traceId, fromStartTime, environment
    GET /api/public/v3/scores         cursor pages; `limit` <= 100 (else 400); field groups
                                      details, subject, annotation (unknown group: 400);
                                      `meta.limit` and `meta.cursor` (absent on the last page)

Every request needs HTTP basic auth with the configured key pair (401 otherwise). `throttle`
answers the first N requests with 429 and `Retry-After: 0`. Requests are recorded (method, path,
query, headers) so tests can check what was sent.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

OBS_GROUPS: dict[str, tuple[str, ...]] = {
    "core": ("id", "traceId", "startTime", "endTime", "projectId", "parentObservationId", "type"),
    "basic": (
        "name",
        "level",
        "statusMessage",
        "version",
        "environment",
        "bookmarked",
        "public",
        "userId",
        "sessionId",
        "isRootObservation",
    ),
    "time": ("completionStartTime", "createdAt", "updatedAt"),
    "io": ("input", "output"),
    "metadata": ("metadata",),
    "model": ("model", "internalModelId", "modelParameters"),
    "usage": ("usageDetails", "costDetails", "totalCost", "usagePricingTierName"),
    "prompt": ("promptId", "promptName", "promptVersion"),
    "metrics": ("latency", "timeToFirstToken"),
    "trace_context": ("tags", "release", "traceName"),
}
SCORE_CORE = (
    "id",
    "projectId",
    "name",
    "value",
    "dataType",
    "source",
    "timestamp",
    "environment",
    "createdAt",
    "updatedAt",
)
SCORE_GROUPS: dict[str, tuple[str, ...]] = {
    "details": ("comment", "configId", "metadata"),
    "subject": ("subject",),
    "annotation": ("authorUserId", "queueId"),
}


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class LangfuseApi:
    public_key: str
    secret_key: str
    observations: list[dict[str, Any]] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)
    throttle: int = 0  # answer the first N requests with 429
    seen: list[Seen] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> LangfuseApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, body, headers = api.handle(self)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------ request handling

    def handle(self, req: BaseHTTPRequestHandler) -> tuple[int, Any, dict[str, str]]:
        url = urlsplit(req.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        headers = {k.lower(): v for k, v in req.headers.items()}
        with self._lock:
            self.seen.append(Seen("GET", url.path, query, headers))
            if self.throttle > 0:
                self.throttle -= 1
                return 429, {"message": "rate limit exceeded"}, {"retry-after": "0"}
        expected = base64.b64encode(f"{self.public_key}:{self.secret_key}".encode()).decode()
        if headers.get("authorization") != f"Basic {expected}":
            return 401, {"message": "Invalid authorization header"}, {}
        if url.path == "/api/public/v2/observations":
            return self._observations(query)
        if url.path == "/api/public/v3/scores":
            return self._scores(query)
        return 404, {"message": "not found"}, {}

    @staticmethod
    def _page(items: list[dict[str, Any]], query: dict[str, str], top: int, low: int = 1) -> Any:
        limit = int(query.get("limit", "50"))
        if not low <= limit <= top:
            raise ValueError(f"limit must be between {low} and {top}")
        start = 0
        if query.get("cursor"):
            start = int(base64.urlsafe_b64decode(query["cursor"].encode()).decode())
        page = items[start : start + limit]
        nxt = start + limit
        cursor = base64.urlsafe_b64encode(str(nxt).encode()).decode() if nxt < len(items) else None
        return page, limit, cursor

    def _observations(self, q: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        # the server filters unknown field groups out (`unknownValues: "filter"`), it does not
        # refuse them (web/src/features/public-api/types/observations.ts, v4.16.0)
        groups = [g for g in (q.get("fields") or "core,basic").split(",") if g in OBS_GROUPS]
        items = [
            o
            for o in self.observations
            if (not q.get("type") or o.get("type") == q["type"])
            and (not q.get("traceId") or o.get("traceId") == q["traceId"])
            and (not q.get("environment") or o.get("environment") == q["environment"])
            and (not q.get("fromStartTime") or o["startTime"] >= q["fromStartTime"])
        ]
        try:
            page, _, cursor = self._page(items, q, 1000, low=0)  # nonnegative().lte(1000)
        except ValueError as exc:
            return 400, {"message": str(exc)}, {}
        keep = {f for g in ("core", *groups) for f in OBS_GROUPS[g]}
        data = [{k: v for k, v in o.items() if k in keep} for o in page]
        meta: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
        return 200, {"data": data, "meta": meta}, {}

    def _scores(self, q: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        groups = [g for g in (q.get("fields") or "").split(",") if g]
        if any(g not in SCORE_GROUPS for g in groups):
            return 400, {"message": f"unknown field group in {groups}"}, {}
        items = [
            s
            for s in self.scores
            if (not q.get("environment") or s.get("environment") == q["environment"])
            and (not q.get("fromTimestamp") or s["timestamp"] >= q["fromTimestamp"])
        ]
        try:
            page, limit, cursor = self._page(items, q, 100)
        except ValueError as exc:
            return 400, {"message": str(exc)}, {}
        keep = set(SCORE_CORE) | {f for g in groups for f in SCORE_GROUPS[g]}
        data = [{k: v for k, v in s.items() if k in keep} for s in page]
        meta: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            meta["cursor"] = cursor
        return 200, {"data": data, "meta": meta}, {}


# ---------------------------------------------------------------- data as the worker writes it


def generation(
    trace_id: str,
    *,
    n: int,
    model: str,
    prompt: str,
    output: str,
    metadata: dict[str, Any],
    level: str = "DEFAULT",
    cost: float = 0.001,
    user: str = "acme",
) -> dict[str, Any]:
    """A GENERATION observation with the worker's shapes: input = JSON chat messages, metadata
    strings plain and other values JSON-encoded (as the worker writes them)."""
    return {
        "id": f"obs-{trace_id[:8]}-{n}",
        "traceId": trace_id,
        "startTime": f"2026-11-27T10:00:0{n}.000Z",
        "endTime": f"2026-11-27T10:00:0{n}.250Z",
        "projectId": "proj-1",
        "parentObservationId": f"root-{trace_id[:8]}",
        "type": "GENERATION",
        "name": f"chat {model}",
        "level": level,
        "environment": "default",
        "userId": user,
        "input": json.dumps([{"role": "user", "content": prompt}]),
        "output": output,
        "metadata": {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()},
        "model": model,
        "totalCost": cost,
        "usageDetails": {"input": 10, "output": 20},
    }


def score(
    sid: str,
    trace_id: str,
    name: str,
    value: float | bool | str,
    *,
    data_type: str,
    metadata: dict[str, Any] | None = None,
    source: str = "API",
    timestamp: str = "2026-11-27T10:01:00.000Z",
) -> dict[str, Any]:
    return {
        "id": sid,
        "projectId": "proj-1",
        "name": name,
        "value": value,
        "dataType": data_type,
        "source": source,
        "timestamp": timestamp,
        "environment": "default",
        "createdAt": timestamp,
        "updatedAt": timestamp,
        "comment": None,
        "configId": None,
        "metadata": metadata or {},
        "subject": {"kind": "trace", "id": trace_id},
    }
