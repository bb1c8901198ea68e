"""Datasets from Langfuse: the public read API (observations v2, scores v3) over real HTTP."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from routers.outcomes import ScoreRules, build_dataset, merge_answered
from schemas.trace import request_key, request_trace_id
from tests.training.langfuse_api import LangfuseApi, generation, score
from worker.__main__ import main
from worker.providers.types import Secret
from worker.training.outcome_sources import (
    LangfuseApiError,
    LangfuseQuery,
    LangfuseSource,
    answered_from_observations,
    labels_from_scores,
)

PK, SK = "pk-lf-test-1234", "sk-lf-very-secret-5678"
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
T1, T2, T3 = request_trace_id("r1"), request_trace_id("r2"), request_trace_id("r3")


def _api(**kw) -> LangfuseApi:
    routed = {"router": "classifier", "router_version": "v0001-x", "arm": "candidate"}
    api = LangfuseApi(PK, SK, **kw)
    api.observations = [
        # r1: the weak model failed, the fallback (strong) answered the user
        generation(
            T1,
            n=1,
            model=WEAK,
            prompt="Prove it.",
            output="",
            level="ERROR",
            metadata={**routed, "routed_model": WEAK, "request_id": "r1"},
        ),
        generation(
            T1,
            n=2,
            model=STRONG,
            prompt="Prove it.",
            output="QED",
            cost=0.02,
            metadata={**routed, "routed_model": WEAK, "request_id": "r1"},
        ),
        # r2: weak answered; a shadow call to the strong model never reached the user
        generation(
            T2,
            n=1,
            model=WEAK,
            prompt="Say hi.",
            output="hi",
            metadata={"routed_model": WEAK, "router_version": "v0001-x"},
        ),
        generation(
            T2, n=2, model=STRONG, prompt="Say hi.", output="Hello!", metadata={"shadow": True}
        ),
        # r3: prompts masked
        generation(
            T3,
            n=1,
            model=WEAK,
            prompt="[masked]",
            output="[masked]",
            metadata={"routed_model": WEAK},
        ),
    ]
    api.scores = [
        score(
            "s1",
            T1,
            "thumb",
            True,
            data_type="BOOLEAN",
            metadata={"source": "user", "request_id": "r1"},
        ),
        score("s2", T2, "judge", 0.0, data_type="NUMERIC", metadata={"source": "judge"}),
        score(
            "s3",
            T2,
            "judge",
            1.0,
            data_type="NUMERIC",
            metadata={"source": "judge", "model": STRONG},
        ),
        score("s4", T2, "verdict", "good", data_type="CATEGORICAL", source="ANNOTATION"),
        score("s5", T3, "thumb", True, data_type="BOOLEAN"),
        {
            **score("s6", T1, "session_rating", 1.0, data_type="NUMERIC"),
            "subject": {"kind": "session", "id": "sess-1"},
        },
    ]
    return api


async def test_outcomes_from_langfuse_pages_retries_and_joins():
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    with _api(throttle=1) as api:
        query = LangfuseQuery(observation_page=2, score_page=2)
        async with LangfuseSource(api.base_url, Secret(PK), Secret(SK), sleep=sleep) as source:
            parts, labels = await source.outcomes(query)
    assert sleeps == [0.0]  # one 429, retried after its Retry-After
    obs = [s for s in api.seen if s.path.endswith("/observations")]
    sc = [s for s in api.seen if s.path.endswith("/scores")]
    assert len([s for s in obs if s.query.get("cursor")]) >= 2  # 5 observations, 2 a page
    assert len([s for s in sc if s.query.get("cursor")]) >= 2
    assert all(s.query["type"] == "GENERATION" for s in obs)
    merged = merge_answered(parts)
    # keyed by tenant (Langfuse's userId) and request id (from metadata when there is one)
    answered_by_id = {a.request_id: a for a in merged.values()}
    assert set(merged) == {request_key(a.tenant, a.request_id) for a in merged.values()}
    assert set(answered_by_id) == {"r1", T2, T3}
    assert answered_by_id["r1"].model == STRONG and answered_by_id["r1"].routed_model == WEAK
    assert answered_by_id["r1"].arm == "candidate" and answered_by_id["r1"].cost_usd == 0.02
    assert answered_by_id[T2].model == WEAK and answered_by_id[T2].shadow_model == STRONG
    assert answered_by_id[T3].prompt is None and answered_by_id[T3].prompt_masked
    answered = merged
    assert {lab.source for lab in labels} == {"user", "judge"}
    rows, stats = build_dataset(answered, labels, ScoreRules())
    by_id = {r["id"]: r for r in rows}
    assert by_id["r1"]["scores"] == {STRONG: 1.0}
    assert by_id["r1"]["prompt"] == "Prove it."
    # judge 0.0 and the annotation "good" (1.0) on the weak answer; 1.0 on the shadow answer
    assert by_id[T2]["scores"] == {STRONG: 1.0, WEAK: 0.5}
    assert stats.skipped_masked == 1
    assert len(labels) == 5  # the session score is about no single answer


async def test_wrong_key_is_an_error_that_never_shows_the_key():
    with _api() as api:
        source = LangfuseSource(api.base_url, Secret(PK), Secret("sk-wrong-secret-000"))
        async with source:
            with pytest.raises(LangfuseApiError) as caught:
                await source.observations(LangfuseQuery())
        assert caught.value.status == 401
        for text in (str(caught.value), repr(source)):
            assert "sk-wrong-secret-000" not in text and PK not in text


def test_dataset_build_command_from_langfuse(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LF_PK", PK)
    monkeypatch.setenv("LF_SK", SK)
    out = tmp_path / "data.jsonl"
    with _api() as api:
        rc = main(
            [
                "dataset",
                "build",
                "--from-langfuse",
                "--langfuse-host",
                api.base_url,
                "--langfuse-public-key-env",
                "LF_PK",
                "--langfuse-secret-key-env",
                "LF_SK",
                "--out",
                str(out),
                "--source",
                "judge",
            ]
        )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert SK not in captured.out + captured.err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [T2]  # only judge feedback kept
    assert rows[0]["scores"] == {STRONG: 1.0, WEAK: 0.0}
    summary = json.loads(captured.out)
    assert summary["source"] == "langfuse" and summary["labels_filtered"] == 3


def test_dataset_build_command_needs_the_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LANGFUSE_PUBLIC_KEY", raising=False)
    rc = main(
        [
            "dataset",
            "build",
            "--from-langfuse",
            "--langfuse-host",
            "http://127.0.0.1:9",
            "--out",
            str(tmp_path / "x.jsonl"),
        ]
    )
    assert rc == 2
    assert "LANGFUSE_PUBLIC_KEY" in capsys.readouterr().err


def test_metadata_reads_plain_values_and_the_older_json_quoted_ones() -> None:
    from worker.training.outcome_sources import answered_from_observations

    plain = generation(
        T1,
        n=1,
        model=WEAK,
        prompt="p",
        output="o",
        metadata={"router_version": "2026.1", "cache_hit": False, "arm": "a"},
    )
    quoted = generation(
        T2, n=1, model=WEAK, prompt="p", output="o", metadata={"router_version": "v1", "arm": "b"}
    )
    quoted["metadata"] = {k: json.dumps(v) for k, v in quoted["metadata"].items()}
    by_trace = {a.router_version: a for a in answered_from_observations([plain, quoted])}
    assert set(by_trace) == {"2026.1", "v1"}  # "2026.1" stays a string
    assert by_trace["2026.1"].cache_hit is False and by_trace["2026.1"].arm == "a"
    assert by_trace["v1"].arm == "b"


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


# a sign-in page in front of the server (200, HTML), and JSON of other shapes
@pytest.mark.parametrize("body", [b"<!doctype html><body>Sign in</body>", b"[1, 2]", b'"text"'])
async def test_an_answer_that_is_not_a_json_object_is_an_error_that_says_so(body):
    class Handler(_Quiet):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        async with LangfuseSource(base, Secret(PK), Secret(SK)) as source:
            with pytest.raises(LangfuseApiError, match="not a JSON object") as caught:
                await source.scores(LangfuseQuery())
        assert SK not in str(caught.value)
    finally:
        server.shutdown()
        server.server_close()


def test_records_of_unexpected_shapes_are_skipped_or_read_not_a_crash():
    # fields the API documents as objects, arriving as other JSON types
    observations = [
        {"traceId": "t1", "type": "GENERATION", "metadata": ["not", "a", "map"], "input": 5},
        {"traceId": "t2", "type": "GENERATION", "metadata": "text", "model": 7, "input": None},
        {"traceId": "t3", "startTime": 12, "endTime": [], "metadata": None, "totalCost": "1"},
    ]
    answered = answered_from_observations(observations)
    assert sorted(a.request_id for a in answered) == ["t1", "t2", "t3"]
    scores = [
        {"subject": "trace", "traceId": "t1", "value": 1.0, "metadata": ["x"]},
        {"subject": {"kind": "trace", "id": "t2"}, "value": {"nested": 1}},
        {"subject": None, "traceId": "t3", "value": "good", "metadata": "m", "timestamp": 5},
        "not a score",
    ]
    labels = labels_from_scores(scores)
    assert [(lab.trace_id, lab.value) for lab in labels] == [("t1", 1.0), ("t3", "good")]
