"""End to end through the real tools: Kafka's console producer (every codec, keys, a traceparent
header) -> `llmroute run` -> Kafka's console consumer, exactly once, `kafka-consumer-groups` lag 0;
the worker's spans exported over OTLP/HTTP to a real OpenTelemetry Collector and read back from
its file exporter.

One worker run serves every case (module fixture); each codec is its own test case. A codec the
worker cannot decode yet (aiokafka needs a library for snappy, lz4 and zstd) is neither produced
nor run: its case is skipped naming the missing library, and runs once the library is installed.

Set LLMROUTE_REAL_TOOLS_JSON to a path to have the figures (tool versions, sent, accepted, spans
received vs expected) written there (bench/real_tools.py does).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import codec as aiokafka_codec

import schemas
from schemas.trace import request_key, trace_id_hex
from tests.integration.real_tools import (
    OtelCollector,
    free_port,
    kafka_tool,
    tool_version,
)
from tests.kafka_support import create_topics, unique_topic
from tests.worker.support import (
    ROOT,
    ROWS,
    SIM_KEYS,
    poll_until,
    replay_dataset,
    request_event,
    worker_config_data,
)
from worker.sim import SimConfig, Simulator

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
# what aiokafka needs to decode each codec (`aiokafka.codec`): the library to install
CODEC_LIBRARY = {
    "none": (lambda: True, ""),
    "gzip": (aiokafka_codec.has_gzip, "gzip (standard library)"),
    "snappy": (aiokafka_codec.has_snappy, "cramjam or python-snappy"),
    "lz4": (aiokafka_codec.has_lz4, "lz4 or cramjam"),
    "zstd": (aiokafka_codec.has_zstd, "zstandard or cramjam"),
}
OK_PER_CODEC = 6
ERRORS = 2  # requests whose deadline has passed: error responses, sent uncompressed
BATCH = 4  # batch-mode requests (the simulator's Batch API), sent uncompressed
BATCH_SETTINGS = {"flush_age_s": 0.5, "poll_initial_s": 0.2, "poll_max_s": 0.5}
KIND_INTERNAL, KIND_CLIENT, KIND_CONSUMER = 1, 3, 5
STATUS_ERROR = 2
TOPIC_NAMES = (
    "responses",
    "decisions",
    "dlq",
    "feedback_dlq",
    "done",
    "feedback",
    "batch_jobs",
    "control",
    "shadow",
    "cache",
)


def _decodable(codec: str) -> bool:
    return bool(CODEC_LIBRARY[codec][0]())


def _producer_traceparent(request_id: str) -> tuple[str, str, str]:
    """A producer-side trace context per request: (traceparent, trace id, span id)."""
    trace_id = trace_id_hex(f"producer:{request_id}")
    span_id = trace_id[:16]
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _line(event: schemas.RouteRequest) -> bytes:
    traceparent, _, _ = _producer_traceparent(event.request_id)
    value = schemas.encode(event).decode()
    assert "\t" not in value and "\n" not in value
    return f"traceparent:{traceparent}\t{event.request_id}\t{value}\n".encode()


def _parse_consumed(out: str) -> list[tuple[dict[str, str], str, str]]:
    """Console consumer lines printed with headers and key: (headers, key, value)."""
    rows = []
    for line in out.splitlines():
        if not line.strip():
            continue
        headers_text, key, value = line.split("\t", 2)
        headers = {}
        for pair in headers_text.split(","):
            if ":" in pair:
                k, v = pair.split(":", 1)
                headers[k] = v
        rows.append((headers, key, value))
    return rows


class Run:
    """What one worker run, fed by the console producer, left behind."""

    def __init__(self) -> None:
        self.sent: dict[str, list[str]] = {}  # codec -> request ids
        self.errors: list[str] = []
        self.batch: list[str] = []
        self.consumed: list[tuple[dict[str, str], str, str]] = []
        self.lag_rows: list[dict[str, str]] = []
        self.spans: list[Any] = []
        self.versions: dict[str, str] = {}
        self.responses: dict[str, schemas.RouteResponse] = {}


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, artifact: Path) -> Run:
    return asyncio.run(_run(kafka_bootstrap, tmp_path_factory.mktemp("real-tools"), artifact))


async def _run(bootstrap: str, tmp: Path, artifact: Path) -> Run:
    result = Run()
    result.versions = {
        "kafka console producer": tool_version("console-producer"),
        "kafka console consumer": tool_version("console-consumer"),
        "kafka-consumer-groups": tool_version("consumer-groups"),
    }
    collector = OtelCollector(tmp).start()
    result.versions["otelcol (ocb)"] = collector.version()
    saved = {k: os.environ.get(k) for k in SIM_KEYS}
    os.environ.update(SIM_KEYS)  # the simulator checks the keys the worker sends
    try:
        async with Simulator(SimConfig(seed=1), replay_dataset()) as sim:
            requests = unique_topic("real-tools")
            await create_topics(bootstrap, [requests], partitions=2)
            topics = {name: f"{requests}.{name}" for name in TOPIC_NAMES}
            topics["requests"] = requests
            n = 0
            for codec in CODECS:
                if not _decodable(codec):
                    continue
                events = [
                    request_event(ROWS[(n + i) % len(ROWS)], n + i) for i in range(OK_PER_CODEC)
                ]
                n += OK_PER_CODEC
                if codec == "none":
                    past = datetime.now(UTC) - timedelta(minutes=5)
                    errors = [request_event(ROWS[0], 900 + i, deadline=past) for i in range(ERRORS)]
                    result.errors = [e.request_id for e in errors]
                    batch_mode = schemas.RoutingOptions(mode="batch")
                    batch = [
                        request_event(ROWS[i], 800 + i, routing=batch_mode) for i in range(BATCH)
                    ]
                    result.batch = [e.request_id for e in batch]
                    events += errors + batch
                result.sent[codec] = [
                    e.request_id
                    for e in events
                    if e.deadline is None and e.request_id not in result.batch
                ]
                kafka_tool(
                    "console-producer",
                    "--bootstrap-server",
                    bootstrap,
                    "--topic",
                    topics["requests"],
                    "--compression-codec",
                    codec,
                    "--property",
                    "parse.key=true",
                    "--property",
                    "parse.headers=true",
                    "--batch-size",
                    "100",
                    "--sync",
                    stdin=b"".join(_line(e) for e in events),
                )
            total = sum(len(v) for v in result.sent.values()) + len(result.errors + result.batch)
            port = free_port()
            data = worker_config_data(
                bootstrap,
                topics,
                artifact,
                sim.base_url,
                metrics={"enabled": True, "port": port},
                batch=BATCH_SETTINGS,
                telemetry={
                    "otlp_endpoint": collector.endpoint,
                    "export": {"schedule_delay_ms": 200},
                },
            )
            config_path = tmp / "worker.json"
            config_path.write_text(json.dumps(data))
            llmroute = Path(sys.executable).with_name("llmroute")
            log_path = tmp / "worker.log"
            worker = _spawn([str(llmroute), "run", "--config", str(config_path)], log_path)
            try:
                out = await asyncio.to_thread(
                    kafka_tool,
                    "console-consumer",
                    "--bootstrap-server",
                    bootstrap,
                    "--topic",
                    topics["responses"],
                    "--from-beginning",
                    "--max-messages",
                    str(total),
                    "--timeout-ms",
                    "120000",
                    "--property",
                    "print.key=true",
                    "--property",
                    "print.headers=true",
                    timeout_s=180,
                )
                assert len(_parse_consumed(out)) == total, log_path.read_text()[-3000:]
                # the worker commits its offsets; then it drains and stops on SIGTERM
                await poll_until(lambda: _ready(port), 30)
                await asyncio.sleep(1.0)
            finally:
                worker.send_signal(signal.SIGTERM)
                rc = await asyncio.to_thread(worker.wait, 60)
            assert rc == 0, log_path.read_text()[-3000:]
            # every response, once: read the whole topic again, now that nothing writes to it
            out = await asyncio.to_thread(
                kafka_tool,
                "console-consumer",
                "--bootstrap-server",
                bootstrap,
                "--topic",
                topics["responses"],
                "--from-beginning",
                "--timeout-ms",
                "8000",
                "--property",
                "print.key=true",
                "--property",
                "print.headers=true",
            )
            result.consumed = _parse_consumed(out)
            for _, key, value in result.consumed:
                result.responses[key] = schemas.decode(value.encode(), schemas.RouteResponse)
            described = await asyncio.to_thread(
                kafka_tool,
                "consumer-groups",
                "--bootstrap-server",
                bootstrap,
                "--describe",
                "--group",
                data["kafka"]["group_id"],
            )
            result.lag_rows = _table(described)
    finally:
        collector.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result.spans = collector.spans()
    _report(result)
    return result


def _spawn(cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **SIM_KEYS}, stdout=log, stderr=subprocess.STDOUT
        )


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _table(text: str) -> list[dict[str, str]]:
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    header = next(i for i, cols in enumerate(lines) if cols[:2] == ["GROUP", "TOPIC"])
    names = lines[header]
    return [dict(zip(names, cols, strict=False)) for cols in lines[header + 1 :]]


def _expected_spans(run: Run) -> int:
    ok = sum(len(v) for v in run.sent.values())
    # process + route + chat per answer; process per error; process + route at a batch
    # submission, then `batch answer` + chat when the job ends
    return 3 * ok + len(run.errors) + 4 * len(run.batch)


def _report(run: Run) -> None:
    path = os.environ.get("LLMROUTE_REAL_TOOLS_JSON")
    if not path:
        return
    names = Counter(s.name.split(" ")[0] for s in run.spans)
    keys = Counter(key for _, key, _ in run.consumed)
    figures = {
        "versions": run.versions,
        "kafka": {
            "sent_by_codec": {c: len(ids) for c, ids in run.sent.items()},
            "not_run_codecs": {c: CODEC_LIBRARY[c][1] for c in CODECS if not _decodable(c)},
            "error_requests_sent": len(run.errors),
            "batch_requests_sent": len(run.batch),
            "responses_read": len(run.consumed),
            "distinct_responses": len(keys),
            "lag": {r.get("PARTITION", "?"): r.get("LAG", "?") for r in run.lag_rows},
        },
        "otel_collector": {
            "spans_expected": _expected_spans(run),
            "spans_received": len(run.spans),
            "by_kind_of_span": dict(names),
        },
    }
    Path(path).write_text(json.dumps(figures, indent=2) + "\n")


# ---------------------------------------------------------------- Kafka's own clients


@pytest.mark.parametrize("codec", CODECS)
def test_console_producer_to_llmroute_to_console_consumer_exactly_once(run: Run, codec: str):
    if not _decodable(codec):
        pytest.skip(f"the worker cannot decode {codec} yet: install {CODEC_LIBRARY[codec][1]}")
    keys = Counter(key for _, key, _ in run.consumed)
    for request_id in run.sent[codec]:
        assert keys[request_id] == 1, (request_id, keys[request_id])
        response = run.responses[request_id]
        assert response.status == "ok" and response.request_id == request_id


def test_nothing_but_the_requests_was_answered_and_errors_are_answered_too(run: Run):
    keys = Counter(key for _, key, _ in run.consumed)
    wanted = {r for ids in run.sent.values() for r in ids} | set(run.errors) | set(run.batch)
    assert set(keys) == wanted and set(keys.values()) == {1}
    for request_id in run.errors:
        assert run.responses[request_id].status == "error"
        assert run.responses[request_id].error is not None
        assert run.responses[request_id].error.type == "DeadlineExceeded"


def test_every_response_carries_the_traceparent_of_its_request(run: Run):
    # the request's `process` span, or for a batch request the answer's span (it answers)
    roots = {s.trace_id: s for s in run.spans if s.name.startswith("process")}
    roots |= {s.trace_id: s for s in run.spans if s.name.startswith("batch answer")}
    for headers, key, _ in run.consumed:
        version, trace_id, span_id, flags = headers["traceparent"].split("-")
        assert version == "00" and flags == "01"
        assert trace_id == run.responses[key].trace_id == trace_id_hex(request_key("acme", key))
        assert roots[trace_id].span_id == span_id  # the consumer continues the trace


def test_kafka_consumer_groups_shows_lag_zero(run: Run):
    assert run.lag_rows, "kafka-consumer-groups described no partition"
    assert {r["LAG"] for r in run.lag_rows} == {"0"}
    assert len(run.lag_rows) == 2  # both partitions of the request topic


# ---------------------------------------------------------------- the OpenTelemetry Collector


def test_the_collector_received_every_span(run: Run):
    assert len(run.spans) == _expected_spans(run)
    assert {s.scope for s in run.spans} == {"llmroute.worker"}
    assert {s.resource["service.name"] for s in run.spans} == {"llmroute-worker"}


def test_ok_requests_have_the_promised_structure(run: Run):
    by_trace: dict[str, list[Any]] = {}
    for s in run.spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    for request_id in (r for ids in run.sent.values() for r in ids):
        spans = {
            s.name.split(" ")[0]: s for s in by_trace[trace_id_hex(request_key("acme", request_id))]
        }
        root, route, chat = spans["process"], spans["route"], spans["chat"]
        _, producer_trace, producer_span = _producer_traceparent(request_id)
        assert root.kind == KIND_CONSUMER and root.parent_span_id == ""
        assert root.links == [(producer_trace, producer_span)]
        assert root.attributes["messaging.system"] == "kafka"
        assert root.attributes["messaging.kafka.message.key"] == request_id
        assert root.attributes["langfuse.trace.metadata.request_id"] == request_id
        assert "user" in root.attributes["langfuse.trace.input"]  # the routed prompt
        assert route.kind == KIND_INTERNAL and route.parent_span_id == root.span_id
        assert chat.kind == KIND_CLIENT and chat.parent_span_id == root.span_id
        model = route.attributes["llm_router.model"]
        assert chat.name == f"chat {model}"
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0
        assert chat.attributes["gen_ai.usage.output_tokens"] > 0
        assert chat.attributes["llm_router.cost_usd"] == pytest.approx(
            run.responses[request_id].cost_usd
        )
        assert json.loads(chat.attributes["langfuse.observation.cost_details"])["total"] > 0


def test_error_requests_are_error_spans(run: Run):
    for request_id in run.errors:
        [root] = [
            s for s in run.spans if s.trace_id == trace_id_hex(request_key("acme", request_id))
        ]
        assert root.kind == KIND_CONSUMER and root.status_code == STATUS_ERROR
        assert root.attributes["error.type"] == "DeadlineExceeded"
        assert root.attributes["llm_router.status"] == "error"


def test_batch_requests_answer_with_their_decision_and_linked_spans(run: Run):
    assert run.batch
    for request_id in run.batch:
        response = run.responses[request_id]
        assert response.mode == "batch" and response.status == "ok"
        assert response.decision is not None and response.decision.model == response.model
        spans = [
            s for s in run.spans if s.trace_id == trace_id_hex(request_key("acme", request_id))
        ]
        by_name = {s.name.split(" ")[0]: s for s in spans}
        submission, answer = by_name["process"], by_name["batch"]
        assert submission.attributes["llm_router.status"] == "batched"
        assert by_name["route"].parent_span_id == submission.span_id
        assert answer.parent_span_id == "" and answer.kind == KIND_CONSUMER
        assert answer.links == [(submission.trace_id, submission.span_id)]
        assert by_name["chat"].parent_span_id == answer.span_id
        assert by_name["chat"].attributes["llm_router.cost_usd"] == pytest.approx(response.cost_usd)
        assert answer.attributes["llm_router.batch.job_id"]
