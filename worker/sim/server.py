"""The provider simulator: a real HTTP server on 127.0.0.1 speaking OpenAI Chat Completions,
Files and Batches, and Anthropic Messages and Message Batches.

    async with Simulator(SimConfig(latency=Latency("fixed", 50)), dataset) as sim:
        sim.base_url          # http://127.0.0.1:PORT  (Anthropic base_url)
        sim.openai_base_url   # http://127.0.0.1:PORT/v1

Keys: ``Authorization: Bearer K`` (OpenAI) or ``x-api-key: K`` (Anthropic); any non-empty key
unless ``SimConfig.api_keys`` lists the accepted ones. ``GET /sim/stats`` reports requests,
statuses, injected faults and the peak of concurrent in-flight calls; ``POST
/sim/outage?kind=503|reset|timeout|none`` starts or ends an outage (``Simulator.set_outage``).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import urllib.parse
import uuid
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from worker.sim.answers import Answerer, Dataset, anthropic_system_text_or_empty, input_tokens
from worker.sim.batches import AnthropicBatches, OpenAIBatches
from worker.sim.config import Fault, RateLimit, SimConfig
from worker.sim.http import HttpRequest, HttpResponse, HttpServer
from worker.sim.wire import (
    WireError,
    anthropic_error,
    anthropic_message,
    masked_key,
    openai_completion,
    openai_error,
    validate_anthropic_messages,
    validate_openai_chat,
)

_JSON = "application/json"


def _json(status: int, body: Any, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    return HttpResponse(status, json.dumps(body).encode(), _JSON, headers or [])


def _query(query: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(query))


Outage = Literal["503", "reset", "timeout"]


class _Limiter:
    """Sliding one-minute window of (time, tokens) per simulator, as one API key's limits."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.clock = clock
        self.calls: deque[tuple[float, int]] = deque()
        self.tokens = 0

    def _prune(self, now: float) -> None:
        while self.calls and self.calls[0][0] <= now - 60.0:
            self.tokens -= self.calls.popleft()[1]

    def admit(self, tokens: int) -> tuple[float, list[tuple[str, str]]]:
        """(seconds until it would fit, 0 when admitted and counted; the x-ratelimit headers)."""
        now = self.clock()
        self._prune(now)
        rpm, tpm = self.limit.rpm, self.limit.tpm
        wait = 0.0
        if rpm is not None and len(self.calls) >= rpm:
            wait = self.calls[len(self.calls) - rpm][0] + 60.0 - now
        if tpm is not None and self.tokens + tokens > tpm:
            excess, freed = self.tokens + tokens - tpm, 0
            for at, n in self.calls:
                freed += n
                if freed >= excess:
                    wait = max(wait, at + 60.0 - now)
                    break
        if wait <= 0:
            self.calls.append((now, tokens))
            self.tokens += tokens
        headers: list[tuple[str, str]] = []
        oldest = self.calls[0][0] + 60.0 - now if self.calls else 0.0
        if rpm is not None:
            headers += [
                ("x-ratelimit-limit-requests", str(rpm)),
                ("x-ratelimit-remaining-requests", str(max(0, rpm - len(self.calls)))),
                ("x-ratelimit-reset-requests", f"{max(oldest, 0.0):.3f}s"),
            ]
        if tpm is not None:
            headers += [
                ("x-ratelimit-limit-tokens", str(tpm)),
                ("x-ratelimit-remaining-tokens", str(max(0, tpm - self.tokens))),
                ("x-ratelimit-reset-tokens", f"{max(oldest, 0.0):.3f}s"),
            ]
        return max(wait, 0.0), headers


def _anthropic_limit_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens} as Anthropic spells them
    (anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}; reset as an RFC 3339 time)."""
    out = []
    for name, value in headers:
        _, _, what, kind = name.split("-")
        if what == "reset":
            at = time.time() + float(value.rstrip("s"))
            value = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
        out.append((f"anthropic-ratelimit-{kind}-{what}", value))
    return out


class SimStats:
    def __init__(self) -> None:
        self.requests = 0  # every HTTP request
        self.completions = 0  # interactive chat / messages calls
        self.in_flight = 0
        self.max_in_flight = 0
        self.statuses: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "completions": self.completions,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "faults": dict(self.faults),
        }


def _multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, content) of a multipart/form-data body."""
    boundary = ""
    for part in content_type.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "boundary":
            boundary = value.strip('"')
    if not boundary:
        return {}
    fields: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(b"--" + boundary.encode()):
        if not chunk or chunk.startswith(b"--"):
            continue
        head, sep, content = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            continue
        name, filename = None, None
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-disposition"):
                for item in line.split(";")[1:]:
                    k, _, v = item.strip().partition("=")
                    if k == "name":
                        name = v.strip('"')
                    elif k == "filename":
                        filename = v.strip('"')
        if name is not None:
            fields[name] = (filename, content)
    return fields


class Simulator:
    def __init__(
        self,
        config: SimConfig | None = None,
        dataset: Dataset | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config or SimConfig()
        self.answerer = Answerer(self.config, dataset)
        self.stats = SimStats()
        self.faults: tuple[Fault, ...] = self.config.faults
        self._fault_counts: Counter[int] = Counter()
        self._rng = random.Random(self.config.seed)
        self._server = HttpServer(self._handle, host=host, port=port)
        self._host = host
        self.recent: deque[tuple[str, Any]] = deque(maxlen=256)  # (path, JSON body), no headers
        self._clock = clock
        self.outage: Outage | None = None
        self._limiter = _Limiter(self.config.rate_limit, clock) if self.config.rate_limit else None
        self.openai_batches = OpenAIBatches(
            self.config.batch, self._run_item, self.config.seed, clock
        )
        self.anthropic_batches = AnthropicBatches(
            self.config.batch, self._run_item, self.config.seed, clock, lambda: self.base_url
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> Simulator:
        await self._server.start()
        return self

    async def close(self) -> None:
        await self._server.close()

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def set_faults(self, faults: tuple[Fault, ...]) -> None:
        self.faults = faults
        self._fault_counts.clear()

    def set_outage(self, outage: Outage | None) -> None:
        """From now on every completion fails: "503" answers 503 at once, "reset" resets the
        connection, "timeout" never answers (until the client gives up); None ends it."""
        self.outage = outage

    # -- dispatch ----------------------------------------------------------------------------

    async def _handle(self, req: HttpRequest) -> HttpResponse | None:
        self.stats.requests += 1
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        api = "anthropic" if req.path.startswith("/v1/messages") else "openai"
        rid = f"req_{uuid.uuid4().hex[:24]}"
        try:
            response = await self._route(req, api)
        except WireError as exc:
            response = _json(exc.status, exc.body, list(exc.headers))
        finally:
            self.stats.in_flight -= 1
        if response is not None:
            if "header" in self.config.echo_key and (key := _caller_key(req, api)):
                rid = f"req_{key}"
                response.headers.append(("x-echo", echoed(key)))
            response.headers.append(("request-id" if api == "anthropic" else "x-request-id", rid))
            self.stats.statuses[response.status] += 1
        return response

    async def _route(self, req: HttpRequest, api: str) -> HttpResponse | None:
        method, path = req.method, req.path
        if path == "/sim/stats":  # ?reset=1 restarts the in-flight peak
            body = self.stats.to_json()
            submitted = self.openai_batches.submitted + self.anthropic_batches.submitted
            body["batch_items_submitted"] = sum(submitted.values())
            body["batch_items_resubmitted"] = sum(n - 1 for n in submitted.values() if n > 1)
            batch_files = [f for f in self.openai_batches.files.values() if f.purpose == "batch"]
            body["batch_files"] = len(batch_files)
            body["batch_file_bytes"] = sum(len(f.content) for f in batch_files)
            body["batches_created"] = len(self.openai_batches.jobs) + len(
                self.anthropic_batches.jobs
            )
            if "reset=1" in req.query:
                self.stats.max_in_flight = self.stats.in_flight
            return _json(200, body)
        if path == "/healthz":
            return _json(200, {"ok": True})
        if path == "/sim/outage" and method == "POST":  # ?kind=503|reset|timeout|none
            kinds: dict[str, Outage | None] = {
                "503": "503",
                "reset": "reset",
                "timeout": "timeout",
                "none": None,
            }
            kind = _query(req.query).get("kind", "none")
            if kind not in kinds:
                return _json(400, {"error": "kind: 503, reset, timeout or none"})
            self.set_outage(kinds[kind])
            return _json(200, {"outage": self.outage})
        self._check_auth(req, api)
        parts = path.strip("/").split("/")
        if method == "POST" and path == "/v1/chat/completions":
            return await self._completion(req, "openai")
        if method == "POST" and path == "/v1/messages":
            return await self._completion(req, "anthropic")
        ob, ab = self.openai_batches, self.anthropic_batches
        if method == "POST" and path == "/v1/files":
            fields = _multipart(req.body, req.headers.get("content-type", ""))
            purpose = fields.get("purpose", (None, b""))[1].decode()
            if "file" not in fields or not purpose:
                raise openai_error(
                    400, "'file' and 'purpose' are required", "invalid_request_error"
                )
            filename, content = fields["file"]
            return _json(200, ob.add_file(filename or "upload.jsonl", purpose, content).to_json())
        if method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "files"]:
            return _json(200, ob.get_file(parts[2]).to_json())
        if (
            method == "GET"
            and len(parts) == 4
            and parts[:2] == ["v1", "files"]
            and parts[3] == "content"
        ):
            return HttpResponse(200, ob.get_file(parts[2]).content, "application/octet-stream")
        if method == "POST" and path == "/v1/batches":
            return _json(200, ob.create(self._body(req, "openai")))
        if method == "GET" and path == "/v1/batches":
            return _json(200, ob.list(_query(req.query)))
        if method == "GET" and path == "/v1/messages/batches":
            return _json(200, ab.list(_query(req.query)))
        if len(parts) >= 3 and parts[:2] == ["v1", "batches"]:
            if method == "GET" and len(parts) == 3:
                return _json(200, ob.view(parts[2]))
            if method == "POST" and len(parts) == 4 and parts[3] == "cancel":
                return _json(200, ob.cancel(parts[2]))
        if method == "POST" and path == "/v1/messages/batches":
            return _json(200, ab.create(self._body(req, "anthropic"), len(req.body)))
        if len(parts) >= 4 and parts[:3] == ["v1", "messages", "batches"]:
            if method == "GET" and len(parts) == 4:
                return _json(200, ab.view(parts[3]))
            if method == "POST" and len(parts) == 5 and parts[4] == "cancel":
                return _json(200, ab.cancel(parts[3]))
            if method == "GET" and len(parts) == 5 and parts[4] == "results":
                return HttpResponse(200, ab.results(parts[3]), "application/binary")
        if api == "anthropic":
            raise anthropic_error(404, "not_found_error", f"Not found: {method} {path}")
        raise openai_error(404, f"Invalid URL ({method} {path})", "invalid_request_error", None)

    def _check_auth(self, req: HttpRequest, api: str) -> None:
        if api == "anthropic":
            key = req.headers.get("x-api-key", "")
            if not key or (self.config.api_keys and key not in self.config.api_keys):
                raise anthropic_error(401, "authentication_error", "invalid x-api-key")
            return
        auth = req.headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not key:
            raise openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            )
        if self.config.api_keys and key not in self.config.api_keys:
            raise openai_error(
                401,
                f"Incorrect API key provided: {masked_key(key)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )

    @staticmethod
    def _body(req: HttpRequest, api: str) -> Any:
        try:
            return json.loads(req.body)
        except ValueError:
            if api == "anthropic":
                raise anthropic_error(
                    400, "invalid_request_error", "Request body is not valid JSON"
                ) from None
            raise openai_error(
                400, "We could not parse the JSON body of your request.", "invalid_request_error"
            ) from None

    # -- completions -------------------------------------------------------------------------

    def _pick_fault(self, api: str, model: str) -> Fault | None:
        for i, fault in enumerate(self.faults):
            if not fault.matches(api, model):
                continue
            self._fault_counts[i] += 1
            if self._fault_counts[i] in fault.at or (
                fault.rate > 0 and self._rng.random() < fault.rate
            ):
                return fault
        return None

    def _fault_response(self, fault: Fault, api: str, key: str = "") -> HttpResponse:
        openai = api == "openai"
        kind = fault.kind
        if kind == "429":
            headers: list[tuple[str, str]] = []
            if fault.retry_after_s is not None:
                headers = [
                    ("retry-after", str(max(1, math.ceil(fault.retry_after_s)))),
                    ("retry-after-ms", str(int(fault.retry_after_s * 1000))),
                ]
            body = (
                {
                    "error": {
                        "message": "Rate limit reached for requests",
                        "type": "requests",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                }
                if openai
                else {
                    "type": "error",
                    "error": {
                        "type": "rate_limit_error",
                        "message": "Number of requests has exceeded your rate limit",
                    },
                }
            )
            return _json(429, body, headers)
        if kind == "quota":
            if openai:
                return _json(
                    429,
                    {
                        "error": {
                            "message": "You exceeded your current quota, please check your plan "
                            "and billing details.",
                            "type": "insufficient_quota",
                            "param": None,
                            "code": "insufficient_quota",
                        }
                    },
                )
            return _json(
                400,
                {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "message": "Your credit balance is too low to access the Anthropic API.",
                    },
                },
            )
        if kind == "500":
            if openai:
                return _json(
                    500,
                    {
                        "error": {
                            "message": "The server had an error while processing your request. "
                            "Sorry about that!",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    },
                )
            return _json(
                500,
                {
                    "type": "error",
                    "error": {"type": "api_error", "message": "Internal server error"},
                },
            )
        if kind in ("503", "529"):
            if openai:
                return _json(
                    503,
                    {
                        "error": {
                            "message": "The engine is currently overloaded, please try again "
                            "later.",
                            "type": "server_error",
                            "param": None,
                            "code": "overloaded",
                        }
                    },
                )
            if kind == "529":
                return _json(
                    529,
                    {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    },
                )
            return _json(
                503,
                {"type": "error", "error": {"type": "api_error", "message": "Service unavailable"}},
            )
        if kind == "echo_text":
            # the key ends just past character 300: a body cut at 300 keeps all but its last
            head = "upstream failure while using key "
            text = head.ljust(max(len(head), 301 - len(key)), ".") + key + " (plain text)"
            return HttpResponse(500, text.encode(), "text/plain")
        if kind == "echo_json":
            detail = f"invalid request for {echoed(key)}"
            if openai:
                return _json(
                    400,
                    {
                        "error": {
                            "message": detail,
                            "type": key.upper(),
                            "param": None,
                            "code": key[2:],
                        }
                    },
                )
            return _json(400, {"type": "error", "error": {"type": key[1:], "message": detail}})
        # malformed: a 200 whose JSON body is cut in half
        return HttpResponse(200, b'{"id": "chatcmpl-x", "object": "chat.completion", "choi', _JSON)

    async def _completion(self, req: HttpRequest, api: str) -> HttpResponse | None:
        self.stats.completions += 1
        body = self._body(req, api)
        self.recent.append((req.path, body))
        body = validate_openai_chat(body) if api == "openai" else validate_anthropic_messages(body)
        model = body["model"]
        if self.config.models and model not in self.config.models:
            if api == "openai":
                raise openai_error(
                    404,
                    f"The model `{model}` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    "model_not_found",
                )
            raise anthropic_error(404, "not_found_error", f"model: {model}")
        if self.outage is not None:
            self.stats.faults[f"outage_{self.outage}"] += 1
            if self.outage == "reset":
                return None
            if self.outage == "timeout":
                await asyncio.sleep(3600.0)
            return self._fault_response(Fault("503"), api)
        limit_headers: list[tuple[str, str]] = []
        if self._limiter is not None:
            max_tokens = (
                body.get("max_completion_tokens") or body.get("max_tokens")
                if api == "openai"
                else body["max_tokens"]
            )
            system = anthropic_system_text_or_empty(body.get("system")) if api != "openai" else ""
            wanted = input_tokens(body["messages"], system) + int(max_tokens or 16)
            wait_s, limit_headers = self._limiter.admit(wanted)
            if api == "anthropic":
                limit_headers = _anthropic_limit_headers(limit_headers)
            if wait_s > 0:
                self.stats.faults["rate_limit"] += 1
                return self._rate_limited(api, wait_s, limit_headers)
        fault = self._pick_fault(api, model)
        latency_s = self.config.latency.sample_ms(self._rng) / 1000.0
        if fault is not None:
            self.stats.faults[fault.kind] += 1
            if fault.kind == "reset":
                return None
            if fault.kind == "timeout":
                await asyncio.sleep(fault.hang_s)
            elif fault.kind in ("429", "quota"):
                return self._fault_response(fault, api)
            else:
                if latency_s > 0:
                    await asyncio.sleep(latency_s)
                return self._fault_response(fault, api, _caller_key(req, api))
        status, payload = self._answer(api, body, req.headers.get("x-sim-item-id"))
        if self.config.echo_key and status == 200:
            _echo_into(payload, api, self.config.echo_key, _caller_key(req, api))
        if self.config.per_output_token_ms > 0:
            usage = payload.get("usage") or {}
            out = usage.get("completion_tokens", usage.get("output_tokens", 0))
            latency_s += out * self.config.per_output_token_ms / 1000.0
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        return _json(status, payload, limit_headers)

    def _rate_limited(
        self, api: str, wait_s: float, headers: list[tuple[str, str]]
    ) -> HttpResponse:
        response = self._fault_response(Fault("429", retry_after_s=None), api)
        response.headers.extend(
            [
                ("retry-after", str(max(1, math.ceil(wait_s)))),
                ("retry-after-ms", str(max(1, math.ceil(wait_s * 1000)))),
                *headers,
            ]
        )
        return response

    def _answer(
        self, api: str, body: dict[str, Any], item_id: str | None
    ) -> tuple[int, dict[str, Any]]:
        model = body["model"]
        messages = body["messages"]
        stop = body.get("stop") if api == "openai" else body.get("stop_sequences")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if api == "openai":
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
            want = bool(body.get("logprobs"))
            answer = self.answerer.answer(
                model,
                messages,
                max_tokens=max_tokens,
                stop=stops,
                logprobs=want,
                top_logprobs=int(body.get("top_logprobs") or 0),
                item_id=item_id,
            )
            n_in = input_tokens(messages)
            cached = self.answerer.cached_tokens(messages, "", n_in)
            return 200, openai_completion(model, answer, n_in, cached, with_logprobs=want)
        system = anthropic_system_text_or_empty(body.get("system"))
        answer = self.answerer.answer(
            model, messages, max_tokens=body["max_tokens"], stop=stops, item_id=item_id
        )
        n_in = input_tokens(messages, system)
        cached = self.answerer.cached_tokens(messages, system, n_in)
        return 200, anthropic_message(model, answer, n_in, cached)

    def _run_item(self, api: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            body = (
                validate_openai_chat(body) if api == "openai" else validate_anthropic_messages(body)
            )
            return self._answer(api, body, None)
        except WireError as exc:
            return exc.status, exc.body


def _caller_key(req: HttpRequest, api: str) -> str:
    if api == "anthropic":
        return req.headers.get("x-api-key", "")
    auth = req.headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else ""


def echoed(key: str) -> str:
    """The ways a hostile provider repeats a key: as sent, upper-cased, glued to letters, and
    without its first three characters (no `sk-` prefix)."""
    return f"{key} / {key.upper()} / x{key}y / {key[3:]}"


def _echo_into(payload: dict[str, Any], api: str, where: tuple[str, ...], key: str) -> None:
    if not key:
        return
    if "answer" in where:
        if api == "openai":
            message = payload["choices"][0]["message"]
            message["content"] = f"{message.get('content') or ''} [{echoed(key)}]"
        else:
            for block in payload.get("content", []):
                if block.get("type") == "text":
                    block["text"] = f"{block['text']} [{echoed(key)}]"
                    break
    if "model" in where:
        payload["model"] = f"{payload.get('model')}-{key}"
