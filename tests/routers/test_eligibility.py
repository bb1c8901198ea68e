"""The one eligibility rule (routers.eligibility), as properties over random tenants and requests:
a request never reaches a model outside what every party allows, within every budget."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from routers.eligibility import Limits, eligible, narrow
from routers.errors import NoEligibleModelError
from routers.policy import PolicyOptions, decide

MODELS = ("cheap", "mid", "strong", "other")
model_sets = st.frozensets(st.sampled_from(MODELS))
budgets = st.one_of(st.none(), st.floats(0.0, 0.2, allow_nan=False))


@st.composite
def parties(draw, source: str) -> Limits:
    return Limits(
        source,
        draw(st.one_of(st.none(), model_sets)),
        draw(model_sets),
        draw(budgets),
    )


@st.composite
def costs(draw) -> dict[str, float]:
    out = {}
    for m in MODELS:
        if draw(st.booleans()) or m != "other":  # "other" sometimes has no known cost
            out[m] = draw(st.floats(0.0, 0.1, allow_nan=False))
    return out


def _allows(party: Limits, model: str, cost: float) -> bool:
    return (
        (party.allowed is None or model in party.allowed)
        and model not in party.denied
        and (party.max_cost_usd is None or cost <= party.max_cost_usd)
    )


@settings(max_examples=500, deadline=None)
@given(model_sets, parties("tenant"), parties("request"), costs())
def test_eligible_is_exactly_what_every_party_allows(routable, tenant, request, bounds):
    got = eligible(routable, (tenant, request), bounds)
    for m in routable:
        cost = bounds.get(m, math.inf)
        expected = all(_allows(p, m, cost) for p in (tenant, request))
        assert (m in got) == expected
    assert got.models <= routable
    # every routable model is either eligible or excluded with a reason naming a party
    assert {m for m, _ in got.excluded} == routable - got.models
    for _, why in got.excluded:
        assert "tenant" in why or "request" in why
    if not got:
        assert got.why_none().startswith("no eligible model")


@settings(max_examples=300, deadline=None)
@given(model_sets, parties("tenant"), parties("request"), parties("request"), costs())
def test_a_request_only_narrows(routable, tenant, request, more, bounds):
    """Adding a party (a narrower request) never adds a model; a request alone never widens
    the tenant's set, whatever it asks (an empty allow-list included)."""
    alone = eligible(routable, (tenant,), bounds)
    narrowed = eligible(routable, (tenant, request), bounds)
    assert narrowed.models <= alone.models
    assert eligible(routable, (tenant, request, more), bounds).models <= narrowed.models


@settings(max_examples=300, deadline=None)
@given(parties("policy"), costs(), st.dictionaries(st.sampled_from(MODELS), st.floats(0, 1)))
def test_decide_chooses_only_from_the_eligible_set(policy, bounds, predicted):
    options = PolicyOptions(
        allow=policy.allowed, deny=policy.denied, max_cost_usd=policy.max_cost_usd
    )
    expected = eligible(predicted, (policy,), bounds)
    try:
        d = decide(predicted, bounds, options)
    except NoEligibleModelError as exc:
        assert not expected
        assert str(exc) == expected.why_none()
        return
    assert d.model in expected.models
    assert d.eligible == expected.models


def test_empty_allow_list_allows_nothing_and_says_who():
    got = eligible(
        ["a", "b"], (Limits("tenant", frozenset({"a"})), Limits("request", frozenset())), {}
    )
    assert not got
    assert got.why_none() == (
        "no eligible model: a not allowed by the request; b not allowed by the tenant"
    )


# ---------------------------------------------------------------- a request narrows its tenant


def test_a_request_narrows_its_tenant_and_overrides_only_what_the_tenant_allows() -> None:
    tenant = Limits.of("tenant", ["a", "b"], [], 0.01)
    request = Limits.of("request", ["b", "c"], ["x"], 0.02)
    narrowed = narrow(
        tenant,
        request,
        asked=(("policy", "p"), ("threshold", 0.3), ("strong_fraction", None), ("mode", "batch")),
        allow_overrides={"threshold"},
        max_latency_ms=(2000.0, 500.0),
    )
    assert narrowed.limits == (tenant, request)
    assert narrowed.overrides == {"threshold": 0.3}
    assert narrowed.notes == (
        "override 'policy' not allowed for tenant; ignored",
        "override 'mode' not allowed for tenant; ignored",
    )
    assert narrowed.max_latency_ms == 500.0
    # both parties apply: c is the tenant's to refuse, a the request's, the budget the lower
    allowed = eligible(["a", "b", "c"], narrowed.limits, {"a": 0.0, "b": 0.015, "c": 0.0})
    assert allowed.models == frozenset()
    assert dict(allowed.excluded) == {
        "a": "not allowed by the request",
        "b": "may cost up to $0.015000 > the tenant's budget $0.010000",
        "c": "not allowed by the tenant",
    }


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.none(), st.sets(st.sampled_from("abcd"))),
    st.one_of(st.none(), st.sets(st.sampled_from("abcd"))),
    st.sets(st.sampled_from("abcd")),
)
def test_a_request_never_widens_its_tenant(tenant_allows, request_allows, request_denies) -> None:
    narrowed = narrow(
        Limits.of("tenant", tenant_allows, (), None),
        Limits.of("request", request_allows, request_denies, None),
        asked=(),
        allow_overrides=(),
    )
    allowed = eligible("abcd", narrowed.limits, dict.fromkeys("abcd", 0.0))
    assert tenant_allows is None or allowed.models <= tenant_allows
    assert not allowed.models & request_denies
