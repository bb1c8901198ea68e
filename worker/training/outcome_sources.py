"""Where outcomes come from: the worker's Kafka topics, or Langfuse's public API.

Both give the pure core (`routers.outcomes`) plain `Answered` parts and `Label`s.

Kafka: each topic is read from its beginning up to the end offsets it had when reading started
(no consumer group, nothing committed), so a dataset is a snapshot and the command terminates.
Records that do not decode are counted and skipped, never fatal.

Langfuse: `GET /api/public/v2/observations` (type GENERATION, cursor pages, field groups core,
basic, io, metadata, model, usage) and `GET /api/public/v3/scores` (cursor pages, field groups
details and subject), with HTTP basic auth (public key : secret key). The keys are read from
environment variables named by the caller and only ever reach the `Authorization` header: never a
log line, an error message or a repr. 429 and 5xx answers are retried with backoff (honouring
`Retry-After`); other errors raise `LangfuseApiError` naming the status and path.

A Langfuse trace is one request (the worker derives the trace id from the request id). Its
user-facing answer is the last GENERATION that is neither an error nor marked `shadow` in its
metadata; the prompt is that generation's input (chat messages, as the worker records them);
the routing metadata (`router_version`, `arm`, `routed_model`, ...) comes from its metadata.
A score names its model in `metadata.model` when it judges another answer than the user's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import httpx
import msgspec

import schemas
from routers.features import prompt_text
from routers.outcomes import Answered, Label
from worker.config.kafka import KafkaSettings
from worker.kafka.table import read_to_end
from worker.providers.types import Secret

log = logging.getLogger(__name__)

T = TypeVar("T", bound=msgspec.Struct)

MASKED = "[masked]"  # what worker.telemetry writes in place of masked prompts and outputs


# ---------------------------------------------------------------- Kafka


@dataclass
class TopicRead:
    """The decoded events of one topic and how many records did not decode."""

    events: list[Any] = field(default_factory=list)
    invalid: int = 0


async def read_topic_records(
    kafka: KafkaSettings, topic: str, *, idle_timeout_s: float = 30.0
) -> list[Any]:
    """Every record of `topic` from its beginning to its end offsets at the start of the read.
    A missing topic has no records. Raises TimeoutError (`TopicNotReady`) when no progress is
    made for `idle_timeout_s` while records are still expected."""
    return await read_to_end(kafka.common_kwargs(), topic, timeout_s=idle_timeout_s)


async def read_events(
    kafka: KafkaSettings, topic: str, type_: type[T], *, idle_timeout_s: float = 30.0
) -> TopicRead:
    read = TopicRead()
    for record in await read_topic_records(kafka, topic, idle_timeout_s=idle_timeout_s):
        try:
            read.events.append(schemas.decode(record.value or b"", type_))
        except schemas.InvalidEvent:
            read.invalid += 1
    return read


def answered_from_decision(d: schemas.RoutingDecision) -> Answered:
    """A decision: the prompt and the routed model. A shadow call's decision (`shadow: true`,
    the worker copies the user's decision and sets `shadow_model`) only names the shadow model:
    its answer never reached the user (it goes to the shadow topic, not `llm.responses`)."""
    info = d.decision
    masked = d.prompt is None and d.prompt_sha256 is not None
    if d.shadow:
        return Answered(
            request_id=d.request_id,
            prompt=d.prompt,
            prompt_masked=masked,
            shadow_model=d.shadow_model or info.model,
        )
    return Answered(
        request_id=d.request_id,
        prompt=d.prompt,
        prompt_masked=masked,
        routed_model=info.model,
        tenant=d.tenant,
        router=info.router,
        router_version=info.router_version,
        policy=info.policy,
        arm=info.arm,
        cache_hit=d.cache_hit if d.cache_hit is not None else info.cache_hit,
        shadow_model=d.shadow_model,
    )


def answered_from_response(r: schemas.RouteResponse) -> Answered:
    info = r.decision
    return Answered(
        request_id=r.request_id,
        answer_model=r.model if r.status == "ok" else None,
        answer_text=r.message.content if r.status == "ok" and r.message is not None else None,
        failed=r.status == "error",
        cost_usd=r.cost_usd,
        latency_ms=r.latency_ms,
        tenant=r.tenant,
        router=info.router if info else None,
        router_version=info.router_version if info else None,
        policy=info.policy if info else None,
        arm=info.arm if info else None,
        routed_model=info.model if info else None,
        cache_hit=r.cache_hit if r.cache_hit is not None else (info.cache_hit if info else None),
    )


def label_from_feedback(f: schemas.Feedback) -> Label:
    return Label(
        name=f.name,
        value=f.value,
        source=f.source,
        order=f.created_at.timestamp(),
        request_id=f.request_id,
        trace_id=f.trace_id,
        model=f.model,
        tenant=f.tenant,
    )


@dataclass
class KafkaOutcomes:
    """Everything read from the three topics, decoded."""

    decisions: list[schemas.RoutingDecision]
    responses: list[schemas.RouteResponse]
    feedback: list[schemas.Feedback]
    invalid: dict[str, int]

    def parts(self) -> list[Answered]:
        """Decision parts first, so the response's model (after fallbacks) fills in later."""
        return [answered_from_decision(d) for d in self.decisions] + [
            answered_from_response(r) for r in self.responses
        ]

    def labels(self) -> list[Label]:
        return [label_from_feedback(f) for f in self.feedback]


async def read_kafka_outcomes(
    kafka: KafkaSettings,
    *,
    decisions: str,
    responses: str,
    feedback: str,
    idle_timeout_s: float = 30.0,
) -> KafkaOutcomes:
    d, r, f = await asyncio.gather(
        read_events(kafka, decisions, schemas.RoutingDecision, idle_timeout_s=idle_timeout_s),
        read_events(kafka, responses, schemas.RouteResponse, idle_timeout_s=idle_timeout_s),
        read_events(kafka, feedback, schemas.Feedback, idle_timeout_s=idle_timeout_s),
    )
    return KafkaOutcomes(
        d.events,
        r.events,
        f.events,
        {"decisions": d.invalid, "responses": r.invalid, "feedback": f.invalid},
    )


# ---------------------------------------------------------------- Langfuse


class LangfuseApiError(Exception):
    """The Langfuse API refused or failed a request (the message never holds a key)."""

    def __init__(self, status: int, path: str, detail: str = "") -> None:
        super().__init__(f"Langfuse API {path}: HTTP {status}{': ' + detail if detail else ''}")
        self.status = status
        self.path = path


@dataclass(frozen=True, slots=True)
class LangfuseQuery:
    from_time: datetime | None = None  # only observations/scores from then on
    environment: str | None = None
    observation_page: int = 1000  # the API's maximum
    score_page: int = 100  # the API's maximum
    max_retries: int = 4
    backoff_s: float = 0.5


class LangfuseSource:
    """A read-only client of the Langfuse public API for outcomes."""

    def __init__(
        self,
        base_url: str,
        public_key: Secret,
        secret_key: Secret,
        *,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=httpx.BasicAuth(public_key.reveal(), secret_key.reveal()),
            timeout=timeout_s,
            transport=transport,
            headers={"accept": "application/json"},
        )
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"LangfuseSource(base_url={str(self._client.base_url)!r})"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> LangfuseSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _get(self, path: str, params: Mapping[str, Any], query: LangfuseQuery) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        for attempt in range(query.max_retries + 1):
            try:
                response = await self._client.get(path, params=clean)
            except httpx.TransportError as exc:
                if attempt == query.max_retries:
                    raise LangfuseApiError(0, path, type(exc).__name__) from None
                await self._sleep(query.backoff_s * 2**attempt)
                continue
            if response.status_code == 429 or response.status_code >= 500:
                if attempt == query.max_retries:
                    raise LangfuseApiError(response.status_code, path, "giving up after retries")
                wait = _retry_after(response)
                await self._sleep(query.backoff_s * 2**attempt if wait is None else wait)
                continue
            if response.status_code != 200:
                raise LangfuseApiError(response.status_code, path, _message(response))
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):  # e.g. a sign-in page in front of the server
                raise LangfuseApiError(
                    200, path, "not a JSON object: is the host the Langfuse server's address?"
                )
            return body
        raise AssertionError("unreachable")

    async def _pages(
        self, path: str, params: dict[str, Any], query: LangfuseQuery
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            body = await self._get(path, {**params, "cursor": cursor}, query)
            data = body.get("data")
            data = data if isinstance(data, list) else []
            out.extend(d for d in data if isinstance(d, dict))
            cursor = _mapping(body.get("meta")).get("cursor")
            if not isinstance(cursor, str) or not cursor or not data:
                return out

    async def observations(self, query: LangfuseQuery) -> list[dict[str, Any]]:
        params = {
            "type": "GENERATION",
            "fields": "core,basic,io,metadata,model,usage",
            "limit": query.observation_page,
            "fromStartTime": _iso(query.from_time),
            "environment": query.environment,
        }
        return await self._pages("/api/public/v2/observations", params, query)

    async def scores(self, query: LangfuseQuery) -> list[dict[str, Any]]:
        params = {
            "fields": "details,subject",
            "limit": query.score_page,
            "fromTimestamp": _iso(query.from_time),
            "environment": query.environment,
        }
        return await self._pages("/api/public/v3/scores", params, query)

    async def outcomes(
        self, query: LangfuseQuery | None = None
    ) -> tuple[list[Answered], list[Label]]:
        q = query or LangfuseQuery()
        observations, scores = await asyncio.gather(self.observations(q), self.scores(q))
        return answered_from_observations(observations), labels_from_scores(scores)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return min(float(raw), 60.0) if raw is not None else None
    except ValueError:
        return None


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("message", ""))[:200] if isinstance(body, dict) else ""


def _mapping(value: Any) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else an empty one (a field of another shape is ignored)."""
    return value if isinstance(value, Mapping) else {}


def _metadata(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record's metadata, each value decoded (`_meta_value`); none unless a JSON object."""
    return {str(k): _meta_value(v) for k, v in _mapping(record.get("metadata")).items()}


def _meta_value(value: Any) -> Any:
    """A metadata value as the worker writes it: strings plain, other values JSON. JSON objects,
    arrays, quoted strings (older workers quoted every value) and true/false are decoded; any
    other string is kept as it is, so "2026.1" stays a string."""
    if isinstance(value, str) and (value[:1] in ('"', "[", "{") or value in ("true", "false")):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _prompt_of(raw: Any) -> tuple[str | None, bool]:
    """(prompt text, masked) from a generation's input (a JSON string of chat messages)."""
    value = _meta_value(raw)
    if isinstance(value, dict) and "messages" in value:
        value = value["messages"]
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        text = prompt_text(value)
    elif isinstance(value, str):
        text = value
    else:
        return None, False
    if text == MASKED:
        return None, True
    return text, False


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def answered_from_observations(observations: Iterable[Mapping[str, Any]]) -> list[Answered]:
    """One `Answered` per trace: its user-facing generation (see the module docstring)."""
    by_trace: dict[str, list[Mapping[str, Any]]] = {}
    for o in observations:
        if not isinstance(o, Mapping):
            continue
        trace_id = o.get("traceId")
        if isinstance(trace_id, str) and o.get("type", "GENERATION") == "GENERATION":
            by_trace.setdefault(trace_id, []).append(o)
    out: list[Answered] = []
    for trace_id, gens in sorted(by_trace.items()):
        gens.sort(key=lambda o: str(o.get("startTime", "")))
        meta_of = [_metadata(g) for g in gens]
        user = [
            (g, m)
            for g, m in zip(gens, meta_of, strict=True)
            if not _truthy(m.get("shadow")) and g.get("level") != "ERROR"
        ]
        shadow = [
            g.get("model") for g, m in zip(gens, meta_of, strict=True) if _truthy(m.get("shadow"))
        ]
        failed = not user
        g, meta = user[-1] if user else (gens[-1], meta_of[-1])
        prompt, masked = _prompt_of(g.get("input"))
        cost = g.get("totalCost")
        rid = meta.get("request_id")
        out.append(
            Answered(
                request_id=str(rid) if isinstance(rid, str) and rid else trace_id,
                prompt=prompt,
                prompt_masked=masked,
                routed_model=_str(meta.get("routed_model")),
                answer_model=None if failed else _str(g.get("model")),
                failed=failed,
                cost_usd=float(cost) if isinstance(cost, int | float) else None,
                latency_ms=_latency_ms(g),
                tenant=_str(g.get("userId")),
                router=_str(meta.get("router")),
                router_version=_str(meta.get("router_version")),
                policy=_str(meta.get("policy")),
                arm=_str(meta.get("arm")),
                cache_hit=meta.get("cache_hit")
                if isinstance(meta.get("cache_hit"), bool)
                else None,
                shadow_model=_str(shadow[-1]) if shadow else None,
            )
        )
    return out


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _latency_ms(o: Mapping[str, Any]) -> float | None:
    try:
        start = datetime.fromisoformat(str(o["startTime"]).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(o["endTime"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    return max((end - start).total_seconds() * 1000.0, 0.0)


_LANGFUSE_SOURCES = {"ANNOTATION": "user", "EVAL": "judge", "API": "user"}


def labels_from_scores(scores: Iterable[Mapping[str, Any]]) -> list[Label]:
    """Trace- and observation-level scores -> labels keyed by trace id. Our own scores carry
    the feedback source and judged model in their metadata (worker.telemetry writes them);
    others map ANNOTATION -> user, EVAL -> judge, API -> user."""
    out: list[Label] = []
    for s in scores:
        if not isinstance(s, Mapping):
            continue
        subject = _mapping(s.get("subject"))
        kind = subject.get("kind")
        trace_id = subject.get("id") if kind == "trace" else subject.get("traceId")
        trace_id = trace_id or s.get("traceId")
        if not isinstance(trace_id, str):
            continue  # session / experiment scores are not about one answer
        value = s.get("value")
        if not isinstance(value, bool | int | float | str):
            continue
        meta = _metadata(s)
        source = meta.get("source")
        if source not in ("user", "task", "judge", "system"):
            source = _LANGFUSE_SOURCES.get(str(s.get("source", "")).upper(), "user")
        out.append(
            Label(
                name=str(s.get("name", "score")),
                value=value,
                source=str(source),
                order=_timestamp(s.get("timestamp")),
                request_id=_str(meta.get("request_id")),
                trace_id=trace_id,
                model=_str(meta.get("model")),
            )
        )
    return out


def _timestamp(value: Any) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
