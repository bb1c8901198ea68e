"""The worker's cascade with a learned answer scorer or a grader model, through the real
pipeline, the real provider client and the provider simulator over HTTP on 127.0.0.1."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from routers.answer_scorer import save_answer_scorer, train_answer_scorer
from routers.artifact import load_artifact, save
from routers.dataset import record_from_obj
from routers.training import TrainOptions, train
from tests.routers import synth
from tests.worker.support import ROWS, request_event, worker_config
from worker.config import ConfigError
from worker.config.models import ANTHROPIC_MODEL, STRONG_MODEL, WEAK_MODEL, Catalogue
from worker.kafka.records import RecordInfo
from worker.pipeline.cascade import load_answer_scorers
from worker.pipeline.core import Pipeline
from worker.pipeline.routing import RoutingCore
from worker.providers.client import ModelClient
from worker.providers.types import Usage
from worker.sim import Simulator
from worker.training.judge import Judge, JudgeSettings

TOPICS = {"requests": "unit.requests"}
N = 12


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recs = [record_from_obj(r) for r in synth.answered_records(200, seed=4)]
    path = tmp_path_factory.mktemp("scorer") / "cascade"
    save_answer_scorer(train_answer_scorer(recs), path, calibration={"quality_95pct": 0.37})
    return path


def _record(i: int) -> RecordInfo:
    return RecordInfo(TOPICS["requests"], 0, i, None, [], None)


async def _answers(artifact: Path, sim: Simulator, policy: dict[str, object], **sections: object):
    config = worker_config(
        "127.0.0.1:1", TOPICS, artifact, sim.base_url, policies={"default": policy}, **sections
    )
    catalogue = config.models
    core = RoutingCore(config, load_artifact(artifact), catalogue)
    async with ModelClient(catalogue) as client:
        pipeline = Pipeline(core, client, answer_scorers=load_answer_scorers(config))
        out = []
        for i in range(N):
            handled = await pipeline.handle(request_event(ROWS[i], i), _record(i))
            out.append(handled.response)
    return out, catalogue


def _cheap_cost(catalogue: Catalogue, model: str, response) -> float:
    usage = Usage(
        input_tokens=response.usage.input_tokens, output_tokens=response.usage.output_tokens
    )
    return catalogue.models[model].cost_usd(usage)


@pytest.mark.parametrize(("threshold", "escalated"), [(0.0, False), (1.0, True)])
async def test_learned_scorer_decides_and_its_verdict_is_in_the_reason(
    artifact: Path, sim: Simulator, scorer_dir: Path, threshold: float, escalated: bool
) -> None:
    # router threshold 1.0: every request starts on the cheap model and takes the cascade
    policy = {
        "kind": "cascade",
        "threshold": 1.0,
        "cascade_scorer": str(scorer_dir),
        "cascade_threshold": threshold,
    }
    responses, _ = await _answers(artifact, sim, policy)
    for r in responses:
        assert r.status == "ok" and r.decision is not None
        assert "cascade learned scorer:" in r.decision.reason
        statuses = [(a.model, a.status) for a in r.attempts]
        if escalated:  # P(good) < 1 always
            assert statuses == [(WEAK_MODEL, "escalated"), (STRONG_MODEL, "ok")]
            assert "escalate" in r.decision.reason
        else:
            assert statuses == [(WEAK_MODEL, "ok")]
            assert "accept" in r.decision.reason


async def test_learned_scorer_threshold_defaults_to_its_calibration(
    artifact: Path, scorer_dir: Path, sim: Simulator
) -> None:
    config = worker_config(
        "127.0.0.1:1",
        TOPICS,
        artifact,
        sim.base_url,
        policies={
            "default": {"kind": "cascade", "threshold": 1.0, "cascade_scorer": str(scorer_dir)}
        },
    )
    loaded = load_answer_scorers(config)
    assert loaded[str(scorer_dir)].default_threshold == 0.37
    responses, _ = await _answers(
        artifact, sim, {"kind": "cascade", "threshold": 1.0, "cascade_scorer": str(scorer_dir)}
    )
    for r in responses:
        assert r.decision is not None and "0.370" in r.decision.reason


async def test_grader_model_decides_and_its_call_is_paid_for(
    artifact: Path, sim: Simulator
) -> None:
    policy = {
        "kind": "cascade",
        "threshold": 1.0,
        "cascade_grader": ANTHROPIC_MODEL,
        "cascade_threshold": 0.5,
    }
    before = sim.stats.completions
    responses, catalogue = await _answers(artifact, sim, policy)
    escalations = 0
    for r in responses:
        assert r.decision is not None
        m = re.search(r"cascade grader: (accept|escalate).*rated it (\d+)", r.decision.reason)
        assert m is not None, r.decision.reason
        score = (int(m.group(2)) - 1) / 9
        assert (m.group(1) == "accept") == (score >= 0.5)
        if m.group(1) == "escalate":
            escalations += 1
            assert [a.status for a in r.attempts] == ["escalated", "ok"]
            # the strong answer, the unused cheap answer and the grader's call
            assert r.cost_usd > _cheap_cost(catalogue, STRONG_MODEL, r)
        else:
            assert [(a.model, a.status) for a in r.attempts] == [(WEAK_MODEL, "ok")]
            assert r.cost_usd > _cheap_cost(catalogue, WEAK_MODEL, r)  # + the grader's call
            assert math.isfinite(r.cost_usd)
    # one cheap call and one grader call per request, one strong call per escalation
    assert sim.stats.completions - before == 2 * N + escalations
    assert 0 < escalations < N  # the simulated grader tells right answers from wrong ones


async def test_a_grader_the_tenant_may_not_use_never_sees_its_prompt(
    artifact: Path, sim: Simulator
) -> None:
    """The grader is a model the request reaches (it reads the prompt and the answer): one the
    tenant denies is not called; the cascade falls back to its answer rules and says why."""
    policy = {"kind": "cascade", "threshold": 1.0, "cascade_grader": ANTHROPIC_MODEL}
    tenants = {"acme": {"denied_models": [ANTHROPIC_MODEL]}}
    before = sim.stats.completions
    responses, _ = await _answers(artifact, sim, policy, tenants=tenants)
    escalations = 0
    for r in responses:
        assert r.decision is not None
        assert f"grader {ANTHROPIC_MODEL} not eligible" in r.decision.reason, r.decision.reason
        assert ANTHROPIC_MODEL not in [a.model for a in r.attempts]
        escalations += [a.status for a in r.attempts] == ["escalated", "ok"]
    # one cheap call per request and one strong call per escalation: no grader call
    assert sim.stats.completions - before == N + escalations


def test_a_policy_takes_a_scorer_or_a_grader_and_a_known_grader(
    artifact: Path, scorer_dir: Path
) -> None:
    both = {"kind": "cascade", "cascade_scorer": str(scorer_dir), "cascade_grader": WEAK_MODEL}
    with pytest.raises(ConfigError, match="not both"):
        worker_config(
            "127.0.0.1:1", TOPICS, artifact, "http://127.0.0.1:1", policies={"default": both}
        )
    with pytest.raises(ConfigError, match="unknown model"):
        worker_config(
            "127.0.0.1:1",
            TOPICS,
            artifact,
            "http://127.0.0.1:1",
            policies={"default": {"kind": "cascade", "cascade_grader": "nope"}},
        )


@pytest.mark.parametrize("denied", [False, True])
async def test_a_shadow_judge_the_tenant_may_not_use_never_sees_its_prompt(
    artifact: Path, sim: Simulator, denied: bool
) -> None:
    """The shadow judge reads the prompt and both answers: a tenant that denies the judge's
    model gets its shadow calls (to an eligible model) but no verdicts."""
    judge_model = ANTHROPIC_MODEL
    tenants = {"acme": {"denied_models": [judge_model] if denied else []}}
    config = worker_config(
        "127.0.0.1:1",
        TOPICS,
        artifact,
        sim.base_url,
        shadow={"sample": 1.0, "model": "other", "judge_model": judge_model},
        tenants=tenants,
    )
    catalogue = config.models
    core = RoutingCore(config, load_artifact(artifact), catalogue)
    published: list[tuple[object, list[object]]] = []

    async def sink(response: object, decision: object, feedback: list[object]) -> None:
        published.append((response, feedback))

    async with ModelClient(catalogue) as client:
        judge = Judge(client, JudgeSettings(model=judge_model))
        pipeline = Pipeline(core, client, shadow_sink=sink, shadow_judge=judge)
        for i in range(N):
            await pipeline.handle(request_event(ROWS[i], i), _record(i))
        await pipeline.close_shadow(30.0)
    assert len(published) == N  # the shadow calls themselves go to eligible models
    verdicts = [f for _, feedback in published for f in feedback]
    if denied:
        assert verdicts == [] and pipeline.shadow_stats["judge_cost_usd"] == 0.0
    else:
        assert verdicts and pipeline.shadow_stats["judge_cost_usd"] > 0.0


@pytest.fixture(scope="module")
def three_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pooled router over the simulator's three models; the Anthropic one scores worst, so
    it is the router's weak model and the Mixtral one is not."""
    rows = [
        {**r, "scores": {**r["scores"], ANTHROPIC_MODEL: 0.5 * r["scores"][WEAK_MODEL]}}
        for r in ROWS
    ]
    router = train([record_from_obj(r) for r in rows], TrainOptions(router="pooled"))
    assert router.weak == ANTHROPIC_MODEL
    return save(router, tmp_path_factory.mktemp("three") / "router")


async def test_a_cheap_model_other_than_the_routers_weak_one_is_checked_too(
    three_models: Path, sim: Simulator, scorer_dir: Path
) -> None:
    # `cheap` names another of the router's models than its weak one: its answers are checked
    # by the scorer as the weak model's would be (scorer threshold 1.0: every one escalates)
    policy = {
        "kind": "cascade",
        "threshold": 1.0,
        "cheap": WEAK_MODEL,
        "cascade_scorer": str(scorer_dir),
        "cascade_threshold": 1.0,
    }
    responses, _ = await _answers(three_models, sim, policy)
    for r in responses:
        assert r.status == "ok" and r.decision is not None
        statuses = [(a.model, a.status) for a in r.attempts]
        assert statuses == [(WEAK_MODEL, "escalated"), (STRONG_MODEL, "ok")], r.decision
        assert "cascade learned scorer:" in r.decision.reason


@pytest.mark.parametrize("role", ["cheap", "strong"])
def test_a_cascade_model_the_router_does_not_cover_is_refused_at_start(
    artifact: Path, sim: Simulator, role: str
) -> None:
    # the two-model router knows nothing of the Anthropic model: naming it as the cascade's
    # cheap (or strong) model would silently route around it, so the worker does not start
    policy = {"kind": "cascade", "threshold": 0.5, role: ANTHROPIC_MODEL}
    config = worker_config(
        "127.0.0.1:1", TOPICS, artifact, sim.base_url, policies={"default": policy}
    )
    with pytest.raises(ValueError, match=f"{role}.*{ANTHROPIC_MODEL}.*not one of the router"):
        RoutingCore(config, load_artifact(artifact), config.models)
