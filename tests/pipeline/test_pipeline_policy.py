"""Tenant policies and per-request overrides, resolved by the worker's RoutingCore."""

from __future__ import annotations

from pathlib import Path

import pytest

from routers.artifact import load_artifact
from routers.calibration import threshold_from_quantiles
from routers.learned import assess
from schemas import RoutingOptions
from tests.worker.support import (
    ROWS,
    request_event,
    train_artifact,
    worker_config,
)
from worker.config.models import ANTHROPIC_MODEL, STRONG_MODEL, WEAK_MODEL
from worker.errors import RequestRejected
from worker.pipeline.routing import RoutingCore

TOPICS = {"requests": "unit.requests"}


def _core(artifact: Path, **sections: object) -> RoutingCore:
    config = worker_config("127.0.0.1:1", TOPICS, artifact, "http://127.0.0.1:1", **sections)
    return RoutingCore(config, load_artifact(artifact), config.models)


def test_threshold_from_quantiles_interpolates() -> None:
    q = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert threshold_from_quantiles(q, 0.5) == 0.5
    assert threshold_from_quantiles(q, 0.0) == 1.0
    assert threshold_from_quantiles(q, 1.0) == 0.0
    assert threshold_from_quantiles(q, 0.125) == pytest.approx(0.875)


def test_strong_fraction_override_maps_to_the_calibrated_quantile(artifact: Path) -> None:
    core = _core(artifact)
    quantiles = core.artifact.meta["score_quantiles"]
    req = request_event(ROWS[0], 1, routing=RoutingOptions(strong_fraction=0.2))
    resolved = core.resolve(req)
    assert resolved.options.threshold == pytest.approx(threshold_from_quantiles(quantiles, 0.2))
    assert not resolved.notes


def test_a_request_only_narrows_its_tenant(artifact: Path) -> None:
    core = _core(
        artifact,
        tenants={
            "acme": {
                "allowed_models": [STRONG_MODEL, WEAK_MODEL],
                "max_cost_usd": 0.5,
                "allow_overrides": ["allowed_models", "max_cost_usd"],
            }
        },
    )
    req = request_event(
        ROWS[0],
        1,
        routing=RoutingOptions(
            allowed_models=[WEAK_MODEL, ANTHROPIC_MODEL],
            max_cost_usd=2.0,
            threshold=0.9,
            denied_models=[STRONG_MODEL],
        ),
    )
    resolved = core.resolve(req)
    allowed = core.eligible(req, resolved)
    assert allowed.models == frozenset({WEAK_MODEL})  # the tenant never allowed haiku
    assert dict(allowed.excluded)[STRONG_MODEL] == "not allowed by the request"
    assert allowed.budget_usd == 0.5  # the lower budget wins
    assert resolved.options.threshold != 0.9  # threshold is not an allowed override here
    assert any("threshold" in note for note in resolved.notes)
    decision = core.decide(req, resolved)
    assert decision.model == WEAK_MODEL
    assert "not allowed for tenant" in decision.reason


def test_unknown_policy_and_impossible_budget_are_rejected(artifact: Path) -> None:
    core = _core(artifact)
    with pytest.raises(RequestRejected, match="unknown routing policy"):
        core.resolve(request_event(ROWS[0], 1, routing=RoutingOptions(policy="nope")))
    req = request_event(ROWS[0], 2, routing=RoutingOptions(max_cost_usd=0.0))
    with pytest.raises(RequestRejected, match="no eligible model"):
        core.decide(req, core.resolve(req))


def test_fallback_chain_starts_with_the_choice_and_respects_the_deny_list(artifact: Path) -> None:
    core = _core(artifact)
    req = request_event(ROWS[3], 3, routing=RoutingOptions(denied_models=[ANTHROPIC_MODEL]))
    resolved = core.resolve(req)
    decision = core.decide(req, resolved)
    chain = core.fallback_chain(decision, resolved.options)
    assert chain[0] == decision.model
    assert ANTHROPIC_MODEL not in chain
    assert set(chain) == {STRONG_MODEL, WEAK_MODEL}


def test_a_threshold_policy_needs_a_calibrated_artifact(tmp_path: Path) -> None:
    import json

    path = train_artifact(tmp_path / "r", ROWS)
    meta = json.loads((path / "meta.json").read_text())
    meta["calibration"] = {}
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no calibrated threshold"):
        _core(path, policies={"default": {"kind": "threshold"}})


def test_batch_mode_comes_from_the_request_when_allowed_or_from_the_tenant(artifact: Path) -> None:
    core = _core(
        artifact,
        tenants={"strict": {"allow_overrides": []}, "lowprio": {"mode": "batch"}},
    )
    batch = RoutingOptions(mode="batch")
    assert core.resolve(request_event(ROWS[0], 1, routing=batch)).mode == "batch"
    assert core.resolve(request_event(ROWS[0], 2)).mode == "interactive"
    refused = core.resolve(request_event(ROWS[0], 3, tenant="strict", routing=batch))
    assert refused.mode == "interactive" and any("mode" in n for n in refused.notes)
    assert core.resolve(request_event(ROWS[0], 4, tenant="lowprio")).mode == "batch"


def test_an_arm_policy_replaces_the_tenant_policy(artifact: Path) -> None:
    core = _core(
        artifact,
        policies={
            "default": {"kind": "threshold", "strong_fraction": 0.5},
            "cheap": {"kind": "threshold", "strong_fraction": 0.05},
        },
    )
    req = request_event(ROWS[0], 1)
    base, arm = core.resolve(req), core.resolve(req, policy="cheap")
    assert (base.policy_name, arm.policy_name) == ("default", "cheap")
    assert base.options.threshold is not None and arm.options.threshold is not None
    assert arm.options.threshold > base.options.threshold


FOREIGN = (
    "def merge(a, b):\n    return {**a, **b}  # why does this drop keys? fix the bug\n"
    "SELECT name, COUNT(*) FROM orders o JOIN users u ON o.uid = u.id GROUP BY name;"
)


def test_every_decision_carries_unfamiliar_and_a_foreign_prompt_exceeds_1(artifact: Path) -> None:
    core = _core(artifact)
    familiar = request_event(ROWS[0], 1)
    decision = core.decide(familiar, core.resolve(familiar))
    assert decision.unfamiliar is not None and decision.unfamiliar >= 0.0
    foreign = request_event({"prompt": FOREIGN}, 2)
    far = core.decide(foreign, core.resolve(foreign))
    assert far.unfamiliar is not None and far.unfamiliar > 1.0
    assert "unfamiliar prompt" in far.reason and "routed as usual" in far.reason
    # the batched path (`Pipeline.prepare`'s assess) gives the same figure
    _, batched = assess(core.router, [FOREIGN])
    assert batched is not None and batched[0] == pytest.approx(far.unfamiliar)


@pytest.mark.parametrize(
    ("action", "model"), [("strong", STRONG_MODEL), ("weak", WEAK_MODEL), ("cascade", WEAK_MODEL)]
)
def test_on_unfamiliar_sends_the_prompt_where_the_policy_says(
    artifact: Path, action: str, model: str
) -> None:
    core = _core(artifact, policies={"default": {"kind": "threshold", "on_unfamiliar": action}})
    req = request_event({"prompt": FOREIGN}, 3)
    decision = core.decide(req, core.resolve(req))
    assert decision.model == model
    assert decision.policy == "unfamiliar"
    assert f"on_unfamiliar={action!r}" in decision.reason
    # a familiar prompt is routed by the threshold as before
    plain = request_event(ROWS[0], 4)
    assert core.decide(plain, core.resolve(plain)).policy == "threshold"


# ------------------------------------------------------------ issue 13: no escape


def _locked(artifact: Path) -> RoutingCore:
    return _core(
        artifact,
        tenants={"cheap": {"allowed_models": [WEAK_MODEL], "allow_overrides": []}},
    )


@pytest.mark.parametrize("asked", [[STRONG_MODEL], [], [ANTHROPIC_MODEL]])
def test_a_request_cannot_widen_its_tenants_allow_list(artifact: Path, asked: list[str]) -> None:
    """The intersection of the tenant's and the request's allow-lists is empty: nothing is
    eligible (it used to mean "no restriction" and the strong model answered)."""
    core = _locked(artifact)
    req = request_event(ROWS[0], 1, tenant="cheap", routing=RoutingOptions(allowed_models=asked))
    with pytest.raises(RequestRejected, match="no eligible model") as caught:
        core.decide(req, core.resolve(req))
    assert WEAK_MODEL in str(caught.value) and "not allowed by the request" in str(caught.value)


def test_every_model_a_request_can_reach_comes_from_the_eligible_set(artifact: Path) -> None:
    core = _locked(artifact)
    for i, row in enumerate(ROWS[:50]):
        req = request_event(row, i, tenant="cheap")
        resolved = core.resolve(req)
        decision = core.decide(req, resolved)
        assert decision.eligible == frozenset({WEAK_MODEL})
        assert core.fallback_chain(decision, resolved.options) == [WEAK_MODEL]
