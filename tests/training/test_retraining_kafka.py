"""Retraining on a real broker: outcomes on the topics -> judge -> dataset -> A/B report,
and a promotion announced on the control topic."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

import schemas
from schemas.trace import request_trace_id
from tests.conftest import TopicFactory
from tests.routers.synth import records, write_jsonl
from tests.training.test_judge import ITEMS
from tests.worker.support import SIM_KEYS, produce, read_all, worker_config_data
from worker.__main__ import main
from worker.config.models import STRONG_MODEL, WEAK_MODEL, simulator_catalogue
from worker.providers.client import ModelClient
from worker.providers.types import CompletionRequest
from worker.sim import Simulator

pytestmark = pytest.mark.kafka

N = 24


async def _topics(new_topic: TopicFactory) -> dict[str, str]:
    base = await new_topic("retrain", partitions=1)
    names = {
        "requests": base,
        "decisions": await new_topic("retrain-dec", partitions=3),
        "responses": await new_topic("retrain-resp", partitions=3),
        "feedback": await new_topic("retrain-fb", partitions=2),
        "control": await new_topic("retrain-ctl", partitions=1),
    }
    return {**names, "dlq": f"{base}.dlq", "done": f"{base}.done", "batch_jobs": f"{base}.bj"}


def _events(i: int, prompt: str, model: str, answer: str, arm: str):
    rid = f"retrain-{i:03d}"
    now = datetime.now(UTC)
    info = schemas.DecisionInfo(
        router="classifier",
        router_version=f"v-{arm}",
        policy="default",
        model=model,
        score=0.1,
        threshold=0.3,
        candidates=[],
        reason="test",
        arm=arm,
    )
    decision = schemas.RoutingDecision(
        schema_version=1,
        request_id=rid,
        tenant="acme",
        decision=info,
        trace_id=request_trace_id(rid),
        created_at=now,
        prompt=prompt,
        prompt_sha256="a" * 64,
    )
    response = schemas.RouteResponse(
        schema_version=1,
        request_id=rid,
        tenant="acme",
        status="ok",
        model=model,
        provider="openai",
        message=schemas.OutputMessage(content=answer),
        finish_reason="stop",
        usage=schemas.Usage(input_tokens=50, output_tokens=20),
        cost_usd=0.01 if model == STRONG_MODEL else 0.001,
        latency_ms=100.0 + i,
        decision=info,
        attempts=[],
        error=None,
        trace_id=request_trace_id(rid),
        created_at=now,
    )
    return rid, decision, response


async def test_judge_then_dataset_then_ab_report(
    kafka_bootstrap: str, new_topic: TopicFactory, sim: Simulator, tmp_path, capsys
):
    topics = await _topics(new_topic)
    config = tmp_path / "worker.json"
    config.write_text(
        json.dumps(worker_config_data(kafka_bootstrap, topics, tmp_path, sim.base_url))
    )
    decisions, responses, feedback = [], [], []
    async with ModelClient(simulator_catalogue(sim.base_url), env=SIM_KEYS) as client:
        for i, row in enumerate(ITEMS[:N]):
            arm = "a" if i % 2 else "b"
            model = STRONG_MODEL if arm == "a" else WEAK_MODEL
            done = await client.complete(CompletionRequest.from_prompt(row["prompt"]), [model])
            rid, d, r = _events(i, row["prompt"], model, done.result.text, arm)
            decisions.append((rid.encode(), schemas.encode(d)))
            responses.append((rid.encode(), schemas.encode(r)))
            if i < 8:  # users rated a third of the answers, by request id or by trace id
                by_trace = (
                    {"trace_id": request_trace_id(rid)} if i % 4 == 0 else {"request_id": rid}
                )
                f = schemas.Feedback(
                    schema_version=1,
                    name="thumb",
                    value=i % 3 != 0,
                    source="user",
                    created_at=datetime.now(UTC),
                    **by_trace,
                )
                feedback.append((rid.encode(), schemas.encode(f)))
    await produce(kafka_bootstrap, topics["decisions"], decisions)
    await produce(kafka_bootstrap, topics["responses"], responses)
    await produce(kafka_bootstrap, topics["feedback"], feedback)
    await produce(kafka_bootstrap, topics["feedback"], [(b"x", b"{not json")])  # skipped

    judge = ["judge", "--config", str(config), "--judge-model", STRONG_MODEL]
    assert await asyncio.to_thread(main, judge) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["pending"] == N - 8 and first["published"] == N - 8, first
    assert await asyncio.to_thread(main, judge) == 0  # a rerun finds nothing left to judge
    assert json.loads(capsys.readouterr().out)["pending"] == 0

    out = tmp_path / "data.jsonl"
    build = ["dataset", "build", "--config", str(config), "--out", str(out)]
    assert await asyncio.to_thread(main, build) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["invalid_records"] == {"decisions": 0, "responses": 0, "feedback": 1}
    assert summary["written"] == N and summary["labels_used"] == N
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["id"] for r in rows} == {f"retrain-{i:03d}" for i in range(N)}
    for r in rows:
        (model,) = r["scores"]  # one model scored: the one that answered
        assert model == r["tags"]["routed_model"]
        assert r["tags"]["arm"] in ("a", "b")

    prefer = [*build, "--source", "user"]
    assert await asyncio.to_thread(main, prefer) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 8

    report = ["ab", "report", "--config", str(config), "--json", "--baseline", "b"]
    assert await asyncio.to_thread(main, report) == 0
    ab = json.loads(capsys.readouterr().out)
    assert ab["baseline"] == "b" and set(ab["arms"]) == {"a", "b"}
    assert ab["arms"]["a"]["n"] == ab["arms"]["b"]["n"] == N // 2
    assert ab["arms"]["a"]["cost_per_request_usd"]["estimate"] == pytest.approx(0.01)
    assert ab["arms"]["a"]["quality"]["n"] == N // 2  # every answer has feedback now
    diff = ab["vs_baseline"]["a"]["cost_per_request_usd"]
    assert diff["estimate"] == pytest.approx(0.009) and ab["vs_baseline"]["a"]["cost_significant"]


async def test_promotion_publishes_reload_router(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path, capsys
):
    control = await new_topic("retrain-ctl", partitions=1)
    data = write_jsonl(tmp_path / "d.jsonl", records(400, seed=8))
    registry = tmp_path / "reg"
    argv = [
        "retrain",
        "--data",
        str(data),
        "--registry",
        str(registry),
        "--min-eval",
        "30",
        "--publish",
        "--bootstrap",
        kafka_bootstrap,
        "--control-topic",
        control,
    ]
    assert await asyncio.to_thread(main, argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["promoted"]
    (record,) = await read_all(kafka_bootstrap, control, expect=1, timeout_s=30)
    event = schemas.decode(record.value, schemas.Control)
    assert event.action == "reload_router"
    assert event.router_version == report["version"]
    assert event.artifact_path == report["artifact_path"]
    assert event.command_id == report["control_command_id"]
