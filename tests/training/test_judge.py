"""The LLM judge against the provider simulator over HTTP, and its parsers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import schemas
from routers.outcomes import Label
from schemas.trace import request_trace_id
from tests.worker.support import ROWS, SIM_KEYS, replay_dataset
from worker.config.models import STRONG_MODEL, WEAK_MODEL, simulator_catalogue
from worker.providers.client import ModelClient
from worker.providers.types import CompletionRequest
from worker.sim import SimConfig, Simulator, grade
from worker.training.judge import (
    PAIR_RUBRIC,
    Judge,
    JudgeSettings,
    Pending,
    judge_pending,
    parse_preference,
    parse_rating,
    unjudged,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Fine work. Rating: [[8]]", 8.0),
        ("first [[3]] then, on reflection, [[7]]", 7.0),
        ("[[ 6.5 ]]", 6.5),
        ("[[9/10]]", 9.0),
        ("Score: 4", 4.0),
        ("**Rating:** 10", 10.0),
        ("I would give it 7/10.", 7.0),
        ("7 out of 10", 7.0),
        ("8", 8.0),
        ("Rating: [[11]]", None),  # off the scale
        ("The answer mentions 3 facts and 2 errors.", None),  # no rating, no guess
        ("", None),
    ],
)
def test_parse_rating(text, expected):
    assert parse_rating(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A is more precise. [[A]]", "A"),
        ("[[b]]", "B"),
        ("They are equal: [[C]]", "tie"),
        ("[[tie]]", "tie"),
        ("Final verdict: B", "B"),
        ("Assistant A is better", "A"),
        ("both fine", None),
    ],
)
def test_parse_preference(text, expected):
    assert parse_preference(text) == expected


def test_rubrics_need_their_placeholders():
    with pytest.raises(ValueError, match="answer"):
        JudgeSettings(model="m", rubric="Rate this: {question}")
    with pytest.raises(ValueError, match="answer_b"):
        JudgeSettings(model="m", pair_rubric=PAIR_RUBRIC.replace("{answer_b}", "x"))


ITEMS = [r for r in ROWS if "prompt" in r][:40]


async def _answers(client: ModelClient, prompt: str) -> dict[str, str]:
    out = {}
    for model in (STRONG_MODEL, WEAK_MODEL):
        done = await client.complete(CompletionRequest.from_prompt(prompt), [model])
        out[model] = done.result.text
    return out


@pytest.mark.parametrize(
    ("accuracy", "position_bias"),
    [(1.0, 1.0), (0.0, 0.0), (1.0, 0.0)],
    ids=["always-right-always-first", "always-wrong-never-first", "always-right-never-first"],
)
async def test_judge_scores_and_pairs_against_the_simulator(
    sim_keys: None, accuracy: float, position_bias: float
):
    """The judge's parsing and order handling, with a simulated judge whose errors are certain.

    With an always-right (or always-wrong) judge every count below is exact, whatever prompts the
    data holds: no statistical bound on a handful of samples.
    """
    config = SimConfig(seed=1, judge_accuracy=accuracy, judge_position_bias=position_bias)
    async with (
        Simulator(config, replay_dataset()) as sim,
        ModelClient(simulator_catalogue(sim.base_url), env=SIM_KEYS) as client,
    ):
        judge = Judge(client, JudgeSettings(model=STRONG_MODEL))
        agree = total = 0
        uneven_right = uneven = 0
        even_first = even = 0
        for row in ITEMS:
            prompt = row["prompt"]
            answers = await _answers(client, prompt)
            truth = {m: grade(a, prompt) for m, a in answers.items()}
            assert None not in truth.values()
            for model, answer in answers.items():
                verdict = await judge.score(prompt, answer)
                assert verdict.score is not None and 0.0 <= verdict.score <= 1.0
                total += 1
                agree += (verdict.score >= 0.5) == truth[model]
            s, w = answers[STRONG_MODEL], answers[WEAK_MODEL]
            pair = await judge.compare(prompt, s, w)
            mirrored = await judge.compare(prompt, w, s)
            flip = {"a": "b", "b": "a", "tie": "tie", None: None}
            assert mirrored.winner == flip[pair.winner]  # order of the arguments never matters
            if truth[STRONG_MODEL] != truth[WEAK_MODEL]:
                uneven += 1
                uneven_right += pair.winner == ("a" if truth[STRONG_MODEL] else "b")
            else:
                even += 1
                # asking both orders cancels the position bias: an even pair is a tie
                assert pair.winner == "tie"
                # one order alone shows the bias
                text, _ = await judge._ask(
                    PAIR_RUBRIC.replace("{question}", prompt)
                    .replace("{answer_a}", s)
                    .replace("{answer_b}", w)
                )
                even_first += parse_preference(text) == "A"
    assert uneven > 0 and even > 0, (uneven, even)  # ITEMS hold both kinds of pair
    assert agree == (total if accuracy == 1.0 else 0), (agree, total)
    assert uneven_right == (uneven if accuracy == 1.0 else 0), (uneven_right, uneven)
    assert even_first == (even if position_bias == 1.0 else 0), (even_first, even)


async def test_judge_pending_publishes_feedback_events(sim: Simulator):
    rows = ITEMS[:6]
    catalogue = simulator_catalogue(sim.base_url)
    published: list[schemas.Feedback] = []

    async def publish(event: schemas.Feedback) -> None:
        published.append(event)

    async with ModelClient(catalogue, env=SIM_KEYS) as client:
        judge = Judge(client, JudgeSettings(model=STRONG_MODEL))
        pending = []
        for i, row in enumerate(rows):
            answer = (await _answers(client, row["prompt"]))[WEAK_MODEL]
            pending.append(Pending(f"req-{i}", row["prompt"], WEAK_MODEL, answer))
        stats = await judge_pending(judge, pending[:3], publish)
        pair_stats = await judge_pending(judge, pending[3:], publish, pairwise_model=STRONG_MODEL)
    assert stats["judged"] == 3 and stats["published"] == 3
    assert pair_stats["judged"] == 3 and pair_stats["published"] == 6
    assert pair_stats["judge_cost_usd"] > 0
    singles = [e for e in published if e.name == "judge"]
    pairs = [e for e in published if e.name == "judge_pairwise"]
    assert {e.request_id for e in singles} == {"req-0", "req-1", "req-2"}
    assert all(e.source == "judge" and e.model == WEAK_MODEL for e in singles)
    assert all(e.trace_id == request_trace_id(e.request_id or "") for e in published)
    by_request: dict[str, dict[str, float]] = {}
    for e in pairs:
        by_request.setdefault(e.request_id or "", {})[e.model or ""] = float(e.value)
    for values in by_request.values():  # a win for one is a loss for the other
        assert set(values) == {WEAK_MODEL, STRONG_MODEL}
        assert sum(values.values()) == pytest.approx(1.0)
    for e in published:  # every event keeps the feedback contract
        assert schemas.decode(schemas.encode(e), schemas.Feedback) == e


def _decision(rid: str, prompt: str | None, model: str) -> schemas.RoutingDecision:
    info = schemas.DecisionInfo(
        router="classifier",
        router_version="v1",
        policy="default",
        model=model,
        score=0.1,
        threshold=0.3,
        candidates=[],
        reason="test",
    )
    return schemas.RoutingDecision(
        schema_version=1,
        request_id=rid,
        tenant="acme",
        decision=info,
        trace_id=request_trace_id(rid),
        created_at=datetime.now(UTC),
        prompt=prompt,
        prompt_sha256="a" * 64,
    )


def _response(rid: str, model: str | None, text: str = "ans") -> schemas.RouteResponse:
    ok = model is not None
    return schemas.RouteResponse(
        schema_version=1,
        request_id=rid,
        tenant="acme",
        status="ok" if ok else "error",
        model=model,
        provider="openai" if ok else None,
        message=schemas.OutputMessage(content=text) if ok else None,
        finish_reason="stop" if ok else None,
        usage=schemas.Usage(),
        cost_usd=0.001,
        latency_ms=5.0,
        decision=None,
        attempts=[],
        error=None if ok else schemas.ErrorInfo(type="InternalError", message="x", retriable=False),
        trace_id=request_trace_id(rid),
        created_at=datetime.now(UTC),
    )


def test_unjudged_skips_answers_with_feedback_masked_prompts_and_errors():
    decisions = [_decision(f"r{i}", None if i == 2 else f"q{i}", WEAK_MODEL) for i in range(5)]
    models = [WEAK_MODEL, STRONG_MODEL, WEAK_MODEL, None, WEAK_MODEL]
    responses = [_response(f"r{i}", m) for i, m in enumerate(models)]
    labels = [
        Label("thumb", True, "user", request_id="r0"),
        Label("judge", 0.2, "judge", trace_id=request_trace_id("r4"), model=STRONG_MODEL),  # shadow
    ]
    pending = unjudged(decisions, responses, labels)
    assert [(p.request_id, p.model) for p in pending] == [("r1", STRONG_MODEL), ("r4", WEAK_MODEL)]
