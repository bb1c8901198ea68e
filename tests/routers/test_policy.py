import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routers import errors
from routers.decision import Decision
from routers.policy import (
    STANDARD,
    CostTradeoff,
    Eligibility,
    ModelPrice,
    Policy,
    PolicyOptions,
    Situation,
    decide,
    estimate_cost_usd,
    estimate_input_tokens,
)

GOLDEN = json.loads((Path(__file__).parent / "golden_decisions.json").read_text())["cases"]


def _options(obj):
    return PolicyOptions(
        strong=obj.get("strong"),
        weak=obj.get("weak"),
        threshold=obj.get("threshold"),
        quality_target=obj.get("quality_target"),
        cost_weight_per_usd=obj.get("cost_weight_per_usd", 0.0),
        allow=frozenset(obj["allow"]) if "allow" in obj else None,
        deny=frozenset(obj.get("deny", ())),
        max_cost_usd=obj.get("max_cost_usd"),
        max_latency_ms=obj.get("max_latency_ms"),
        latency_weight_per_s=obj.get("latency_weight_per_s", 0.0),
        on_unfamiliar=obj.get("on_unfamiliar", "route"),
    )


@pytest.mark.parametrize("case", GOLDEN, ids=[c["name"] for c in GOLDEN])
def test_golden_decisions(case):
    options = _options(case["options"])
    expect = case["expect"]
    if "raises" in expect:
        with pytest.raises(getattr(errors, expect["raises"])):
            decide(case["predicted"], case["est_cost"], options)
        return
    unfamiliar = case.get("unfamiliar")
    d = decide(
        case["predicted"],
        case["est_cost"],
        options,
        router="r",
        router_version="v1",
        est_latency_ms=case.get("est_latency_ms"),
        unfamiliar=unfamiliar,
    )
    assert d.model == expect["model"]
    assert d.unfamiliar == unfamiliar
    if "reason_not_contains" in expect:
        assert expect["reason_not_contains"] not in d.reason
    assert d.policy == expect["policy"]
    if "score" in expect:
        assert d.score == pytest.approx(expect["score"])
    assert d.threshold == (options.threshold if d.policy == "threshold" else None)
    assert d.model in d.reason and "\n" not in d.reason
    assert expect.get("reason_contains", "") in d.reason
    assert {c.model for c in d.candidates} == set(case["predicted"])
    assert (d.router, d.router_version) == ("r", "v1")


MODELS = ["m0", "m1", "m2", "m3"]
quality = st.floats(0.0, 1.0, allow_nan=False)
cost = st.floats(0.0, 0.1, allow_nan=False)


@st.composite
def tables(draw):
    n = draw(st.integers(2, 4))
    models = MODELS[:n]
    return (
        {m: draw(quality) for m in models},
        {m: draw(cost) for m in models},
    )


@settings(max_examples=200, deadline=None)
@given(tables(), st.floats(-1, 1), st.floats(-1, 1))
def test_monotone_in_threshold(table, t1, t2):
    predicted, costs = table
    lo, hi = sorted((t1, t2))
    opts = PolicyOptions(strong="m0", weak="m1", threshold=lo)
    low = decide(predicted, costs, opts)
    high = decide(predicted, costs, PolicyOptions(strong="m0", weak="m1", threshold=hi))
    # raising the threshold never moves a prompt from weak to strong
    assert not (low.model == "m1" and high.model == "m0")


@settings(max_examples=200, deadline=None)
@given(
    tables(),
    st.one_of(st.none(), st.sets(st.sampled_from(MODELS))),
    st.sets(st.sampled_from(MODELS)),
    st.one_of(st.none(), cost),
    st.one_of(st.none(), quality),
    st.floats(0, 100),
    st.one_of(st.none(), st.floats(-1, 1)),
)
def test_choice_honours_allow_deny_and_budget(table, allow, deny, budget, target, lam, thr):
    predicted, costs = table
    opts = PolicyOptions(
        strong="m0",
        weak="m1",
        threshold=thr,
        quality_target=target,
        cost_weight_per_usd=lam,
        allow=None if allow is None else frozenset(allow),
        deny=frozenset(deny),
        max_cost_usd=budget,
    )
    eligible = {
        m
        for m in predicted
        if (allow is None or m in allow)
        and m not in deny
        and (budget is None or costs[m] <= budget)
    }
    if not eligible:
        with pytest.raises(errors.NoEligibleModelError):
            decide(predicted, costs, opts)
        return
    d = decide(predicted, costs, opts)
    assert d.model in eligible
    assert d.eligible == eligible
    if budget is not None:
        assert costs[d.model] <= budget


@settings(max_examples=100, deadline=None)
@given(tables(), quality)
def test_quality_target_picks_the_cheapest_that_reaches_it(table, target):
    predicted, costs = table
    d = decide(predicted, costs, PolicyOptions(quality_target=target))
    reaching = [m for m in predicted if predicted[m] >= target]
    if reaching:
        assert predicted[d.model] >= target
        assert costs[d.model] == min(costs[m] for m in reaching)
    else:
        assert predicted[d.model] == max(predicted.values())


latency = st.floats(1.0, 10_000.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    tables(),
    st.dictionaries(st.sampled_from(MODELS), latency),
    latency,
    st.one_of(st.none(), quality),
    st.one_of(st.none(), st.floats(-1, 1)),
    st.floats(0, 10),
)
def test_never_a_model_that_would_miss_the_latency_budget_when_one_meets_it(
    table, est_latency, budget, target, thr, weight
):
    predicted, costs = table
    est_latency = {m: v for m, v in est_latency.items() if m in predicted}
    opts = PolicyOptions(
        strong="m0",
        weak="m1",
        threshold=thr,
        quality_target=target,
        max_latency_ms=budget,
        latency_weight_per_s=weight,
        tight_latency_factor=1.0,
    )
    d = decide(predicted, costs, opts, est_latency_ms=est_latency)
    chosen = est_latency.get(d.model)
    if any(est_latency.get(m, 0.0) <= budget for m in predicted):
        assert chosen is None or chosen <= budget, d.reason
    else:  # every model would miss it: the fastest, and the reason says so
        assert d.policy == "latency_tight" and chosen == min(est_latency.values())


def test_tight_latency_factor_below_one_is_refused():
    with pytest.raises(ValueError, match="tight_latency_factor"):
        PolicyOptions(tight_latency_factor=0.5)


def test_cost_estimate():
    assert estimate_input_tokens("") == 0
    assert estimate_input_tokens("abcde") == 2
    price = ModelPrice(input_per_mtok=10.0, output_per_mtok=30.0)
    assert estimate_cost_usd(price, 1000, 100) == pytest.approx(0.013)
    assert math.isclose(estimate_cost_usd(price, 0, 0), 0.0)


# ---------------------------------------------------------------- composing policies


def test_a_composition_without_the_threshold_rule_ignores_the_threshold() -> None:
    predicted, costs = {"s": 0.9, "w": 0.5}, {"s": 0.01, "w": 0.001}
    opts = PolicyOptions(strong="s", weak="w", threshold=0.1, cost_weight_per_usd=100.0)
    assert decide(predicted, costs, opts).policy == "threshold"
    d = decide(predicted, costs, opts, policy=Eligibility(CostTradeoff()))
    # 0.9 - 100 x 0.01 = -0.1 < 0.5 - 100 x 0.001 = 0.4
    assert (d.model, d.policy, d.threshold) == ("w", "cost_tradeoff", None)


class _Pinned:
    """A wrapper of the kind a deployment might add: one model when it may be chosen, else
    whatever the wrapped policy decides, with a note."""

    def __init__(self, model: str, delegate: Policy) -> None:
        self.model, self.delegate = model, delegate

    def decide(self, situation: Situation) -> Decision:
        chosen = situation.by_name().get(self.model)
        if chosen is not None:
            return situation.decided(chosen, chosen.predicted_quality, "pinned", "pinned")
        return self.delegate.decide(situation.noted(f"{self.model} not eligible"))


@settings(max_examples=200, deadline=None)
@given(tables(), st.sets(st.sampled_from(MODELS)), st.sampled_from(MODELS))
def test_a_wrapper_inside_eligibility_never_escapes_the_allow_list(table, deny, pinned) -> None:
    predicted, costs = table
    opts = PolicyOptions(deny=frozenset(deny))
    policy = Eligibility(_Pinned(pinned, CostTradeoff()))
    if set(predicted) <= deny:
        with pytest.raises(errors.NoEligibleModelError):
            decide(predicted, costs, opts, policy=policy)
        return
    d = decide(predicted, costs, opts, policy=policy)
    assert d.model not in deny and d.eligible == set(predicted) - deny
    if pinned in predicted and pinned not in deny:
        assert (d.model, d.policy, d.reason) == (pinned, "pinned", "pinned")
    else:
        assert d.policy == "cost_tradeoff" and d.reason.endswith(f"; {pinned} not eligible")


def test_the_standard_composition_is_what_decide_applies() -> None:
    assert isinstance(STANDARD, Eligibility)
    predicted, costs = {"s": 0.9, "w": 0.5}, {"s": 0.01, "w": 0.001}
    opts = PolicyOptions(strong="s", weak="w", threshold=0.3)
    assert decide(predicted, costs, opts) == decide(predicted, costs, opts, policy=STANDARD)
