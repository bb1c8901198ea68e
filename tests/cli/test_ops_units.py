"""The operator tools' pure parts: input lines, pacing, progress, filters, replay plans."""

from __future__ import annotations

import argparse
import base64
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

import schemas
from worker.cli import UserError
from worker.cli.kafka_args import load_connection
from worker.cli.ops.common import Pacer, Progress, parse_range
from worker.cli.ops.dlq import REPLAY_HEADER, Selection, plan
from worker.cli.ops.produce import InvalidLine, RequestDefaults, request_from_line
from worker.cli.ops.status import batch_job_counts, in_flight_from_text, lag_of
from worker.cli.ops.tail import Filters, format_event
from worker.kafka.deadletter import dead_letter

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DEFAULTS = RequestDefaults(tenant="acme", id_prefix="t-", policy="cheap", max_tokens=32)


# ---------------------------------------------------------------- produce: input lines


def test_plain_text_line_becomes_a_request() -> None:
    r = request_from_line("What is 2+2?\n", 7, DEFAULTS, NOW)
    assert r.request_id == "t-000007"
    assert r.tenant == "acme"
    assert r.messages[0].role == "user" and r.messages[0].content == "What is 2+2?"
    assert r.routing.policy == "cheap" and r.params.max_tokens == 32
    assert r.created_at == NOW


def test_dataset_row_and_json_string_become_requests() -> None:
    row = json.dumps({"id": "q1", "prompt": "Name a prime", "scores": {"a": 1.0}})
    assert request_from_line(row, 0, DEFAULTS, NOW).messages[0].content == "Name a prime"
    assert request_from_line('"quoted prompt"', 1, DEFAULTS, NOW).messages[0].content == (
        "quoted prompt"
    )


def test_partial_event_is_completed_and_validated() -> None:
    line = json.dumps(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tenant": "beta",
            "routing": {"strong_fraction": 0.2},
        }
    )
    r = request_from_line(line, 3, DEFAULTS, NOW)
    assert (r.request_id, r.tenant, r.routing.strong_fraction) == ("t-000003", "beta", 0.2)
    full = schemas.encode(r).decode()
    assert request_from_line(full, 99, DEFAULTS, NOW) == r  # a complete event is kept as is


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"messages": [{"role": "robot", "content": "x"}]}', "role"),
        ("{not json", "not JSON"),
        ('{"id": 1}', "`messages`"),
        ('""', "empty prompt"),
        ('{"messages": [{"role": "user", "content": "x"}], "temperature": 1}', "temperature"),
        # valid JSON escaping half a surrogate pair: no UTF-8 event can carry it
        ('"half \\ud800 pair"', "lone surrogate"),
        ('{"prompt": "half \\udc00 pair"}', "lone surrogate"),
        ('{"messages": [{"role": "user", "content": "x \\ud800"}]}', "lone surrogate"),
        # bytes that are not UTF-8, as the file reader hands them over (surrogateescape)
        ("caf\udce9 au lait", "not UTF-8"),
    ],
)
def test_invalid_lines_name_the_problem(line: str, fragment: str) -> None:
    with pytest.raises(InvalidLine, match=fragment):
        request_from_line(line, 0, DEFAULTS, NOW)


# ---------------------------------------------------------------- pacing and progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pacer_spaces_sends_and_never_bursts_after_a_stall() -> None:
    clock = Clock()
    pacer = Pacer(4.0, clock)  # one send every 0.25 s
    assert [pacer.delay() for _ in range(3)] == [0.0, 0.25, 0.5]
    clock.now += 10.0  # a long stall: the next send goes now, the one after waits a full slot
    assert pacer.delay() == 0.0
    assert pacer.delay() == 0.25
    assert Pacer(None, clock).delay() == 0.0
    with pytest.raises(ValueError):
        Pacer(0, clock)


def test_progress_renders_a_bar_and_a_count() -> None:
    stream = io.StringIO()
    clock = Clock()
    bar = Progress(stream, label="produce", total=200, enabled=True, clock=clock)
    assert bar.render(50, 2.0, width=10) == "produce [##........] 50/200  25.0%     25.0/s"
    assert Progress(stream, label="p", total=None, enabled=True).render(8, 4.0) == (
        "p 8 sent      2.0/s"
    )
    clock.now += 1
    bar.close(200)
    assert "200/200 100.0%" in stream.getvalue()  # not a terminal: whole lines
    quiet = io.StringIO()
    Progress(quiet, label="p", total=3, enabled=False).close(3)
    assert quiet.getvalue() == ""


# ---------------------------------------------------------------- tail: filters and lines


def _response(**fields: object) -> schemas.RouteResponse:
    base: dict[str, object] = {
        "schema_version": 1,
        "request_id": "r-1",
        "tenant": "acme",
        "status": "ok",
        "model": "small",
        "provider": "openai",
        "message": schemas.OutputMessage(content="Four.\nDone."),
        "finish_reason": "stop",
        "usage": schemas.Usage(input_tokens=3, output_tokens=2),
        "cost_usd": 0.000012,
        "latency_ms": 512.4,
        "decision": None,
        "attempts": [],
        "error": None,
        "trace_id": None,
        "created_at": NOW,
    }
    base.update(fields)
    return schemas.RouteResponse(**base)  # type: ignore[arg-type]


def _decision() -> schemas.RoutingDecision:
    info = schemas.DecisionInfo(
        router="classifier",
        router_version="1",
        policy="default",
        model="big",
        score=0.81,
        threshold=0.5,
        candidates=[],
        reason="score 0.81 >= 0.50: strong",
    )
    return schemas.RoutingDecision(
        schema_version=1,
        request_id="r-2",
        tenant="beta",
        decision=info,
        trace_id=None,
        created_at=NOW,
    )


def test_filters_match_on_each_field() -> None:
    ok, err = _response(), _response(status="error", model=None, request_id="r-9")
    assert Filters().match(ok) and Filters().match(_decision())
    assert Filters(tenant="acme").match(ok) and not Filters(tenant="beta").match(ok)
    assert Filters(model="small").match(ok) and not Filters(model="big").match(ok)
    assert Filters(status="error").match(err) and not Filters(status="error").match(ok)
    assert Filters(request_id="r-9").match(err) and not Filters(request_id="r-9").match(ok)
    assert Filters(model="big").match(_decision())
    assert not Filters(status="ok").match(_decision())  # --status selects responses only


def test_format_lines() -> None:
    line = format_event(_response())
    assert line == ("03:04:05 ok    r-1 tenant=acme model=small cost=$0.000012 512ms 'Four. Done.'")
    error = _response(
        status="error",
        model=None,
        message=None,
        error=schemas.ErrorInfo(type="ProviderTimeoutError", message="deadline", retriable=True),
    )
    expected = "model=- cost=$0.000012 512ms ProviderTimeoutError: deadline"
    assert format_event(error).endswith(expected)
    assert format_event(_decision()) == (
        "03:04:05 r-2 tenant=beta model=big policy=default score=0.810 threshold=0.500 "
        "score 0.81 >= 0.50: strong"
    )


# ---------------------------------------------------------------- status


def test_lag_counts_from_the_commit_or_the_first_retained_offset() -> None:
    assert lag_of(0, 100, 40) == 60
    assert lag_of(0, 100, None) == 100
    assert lag_of(30, 100, None) == 70  # never committed: from the first retained offset
    assert lag_of(30, 100, 10) == 70  # committed offset already deleted by retention
    assert lag_of(0, 100, 100) == 0


def test_in_flight_is_read_from_the_worker_exposition() -> None:
    from prometheus_client import generate_latest

    from worker.metrics import WorkerMetrics

    metrics = WorkerMetrics()
    metrics.in_flight.set(17)
    assert in_flight_from_text(generate_latest(metrics.registry).decode()) == 17.0
    with pytest.raises(ValueError, match="llmroute_in_flight_requests"):
        in_flight_from_text("# HELP x y\n# TYPE x gauge\nx 1\n")


def _job(job_id: str, status: str) -> bytes:
    return schemas.encode(
        schemas.BatchJob(
            schema_version=1,
            job_id=job_id,
            provider="openai",
            model="m",
            status=status,
            items=[],
            created_at=NOW,
            updated_at=NOW,
        )  # type: ignore[arg-type]
    )


def test_batch_jobs_latest_value_per_key_without_tombstones() -> None:
    latest = {
        b"a": _job("a", "submitted"),
        b"b": None,
        b"c": _job("c", "in_progress"),
        b"d": _job("d", "submitted"),
        b"e": b"{}",
    }
    assert batch_job_counts(latest) == {"in_progress": 1, "submitted": 2, "undecodable": 1}


# ---------------------------------------------------------------- dlq replay plans


def _letter(value: bytes, error_type: str = "InvalidEvent", offset: int = 5) -> bytes:
    letter = dead_letter(
        topic="llm.requests",
        partition=2,
        offset=offset,
        key=b"k-1",
        value=value,
        headers=[("traceparent", b"00-abc")],
        error_type=error_type,
        reason="bad",
    )
    return schemas.encode(letter)


VALID = schemas.encode(
    schemas.RouteRequest(
        schema_version=1,
        request_id="k-1",
        tenant="acme",
        created_at=NOW,
        messages=[schemas.Message(role="user", content="hi")],
    )
)


def test_plan_replays_original_bytes_key_and_headers() -> None:
    item = plan("llm.requests.dlq", 0, 12, _letter(VALID), Selection())
    assert item.action == "replay" and item.why == ""
    assert (item.target, item.key, item.value) == ("llm.requests", b"k-1", VALID)
    assert item.headers == [("traceparent", b"00-abc"), (REPLAY_HEADER, b"llm.requests.dlq:0:12")]
    assert item.source == "llm.requests:2@5"
    assert plan("d", 0, 1, _letter(VALID), Selection(), to_topic="other").target == "other"


def test_plan_tells_apart_what_is_skipped_and_why() -> None:
    bad = _letter(b'{"oops": 1}')
    # by default a letter today's decoder still refuses is skipped: re-sending it would only
    # dead-letter it again (the DLQ doubled); --include-invalid sends it with a warning
    skipped = plan("d", 0, 1, bad, Selection())
    assert (skipped.action, skipped.why[:14]) == ("skip", "still invalid:")
    forced = plan("d", 0, 1, bad, Selection(only_valid=False))
    assert forced.action == "replay" and forced.why.startswith("still invalid today")
    cases = [
        (Selection(error_types=frozenset({"OversizedEvent"})), "error type not selected"),
        (Selection(dlq_offsets=(2, None)), "outside --offsets"),
        (Selection(source_partitions=frozenset({0})), "source partition not selected"),
        (Selection(source_offsets=(6, 9)), "outside --source-offsets"),
    ]
    for selection, why in cases:
        item = plan("d", 0, 1, _letter(VALID), selection)
        assert (item.action, item.why) == ("skip", why)
    assert plan("d", 0, 1, None, Selection()).why == "tombstone"
    assert plan("d", 0, 1, b"not json", Selection()).why.startswith("not a dead letter")
    broken = json.loads(_letter(VALID))
    broken["original_value_b64"] = "%%%"
    assert plan("d", 0, 1, json.dumps(broken).encode(), Selection()).action == "skip"
    assert base64.b64decode(json.loads(_letter(VALID))["original_value_b64"]) == VALID


def test_parse_range() -> None:
    assert parse_range("3:9") == (3, 9)
    assert parse_range("3:") == (3, None)
    assert parse_range(":9") == (0, 9)
    assert parse_range("4") == (4, 5)
    for bad in ("x:1", "9:3", "-1:2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_range(bad)


# ---------------------------------------------------------------- connection


def test_connection_reads_the_worker_config_kafka_and_topics(tmp_path: Path) -> None:
    example = ROOT / "deploy" / "config" / "worker.example.toml"
    conn = load_connection(str(example), None, {"KAFKA_BOOTSTRAP": "ignored:1"})
    assert conn.kafka.bootstrap_servers == "127.0.0.1:19092"  # the config names one
    assert conn.topics.dlq == "llm.requests.dlq"
    assert load_connection(str(example), "b:9", {}).kafka.bootstrap_servers == "b:9"
    assert load_connection(None, None, {"KAFKA_BOOTSTRAP": "e:1"}).kafka.bootstrap_servers == (
        "e:1"
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka]\nbootstrap = 'x'\n")
    with pytest.raises(UserError, match="bootstrap"):
        load_connection(str(bad), None, {})


def test_a_letter_is_judged_by_its_source_topic_s_event() -> None:
    feedback = schemas.encode(
        schemas.Feedback(
            schema_version=1,
            request_id="r-1",
            name="thumbs",
            value=True,
            source="user",
            created_at=NOW,
        )
    )
    letter = schemas.encode(
        dead_letter(
            topic="fb",
            partition=0,
            offset=3,
            key=None,
            value=feedback,
            headers=[],
            error_type="ScoreRejected",
            reason="401",
        )
    )
    events = {"fb": schemas.Feedback, "req": schemas.RouteRequest}
    item = plan("fb.dlq", 0, 0, letter, Selection(), events=events)
    assert (item.action, item.why, item.target) == ("replay", "", "fb")
    assert plan("d", 0, 1, _letter(feedback), Selection()).why.startswith("still invalid:")
