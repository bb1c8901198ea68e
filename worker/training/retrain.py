"""Retraining: train a new router version from outcomes, evaluate it against the current one on a
held-out slice, and promote it in the registry (`worker.training.registry`) only if it is at least
as good at the cost target; `publish_reload` tells running members (a `reload_router` Control
event). `llmroute retrain` (`worker.cli.retrain`) is the command.

The candidate is trained on the records outside the held-out slice (id hash, `split_salt`)
with the current router's strong and weak models (a model's mean score in routed traffic says
more about where the router sent it than about the model). Both routers are judged on the
held-out records that have both models scored (`routers.promotion`). The candidate's
strong-fraction thresholds and score quantiles are calibrated on every outcome record's prompt
(`calibrate_on="all"`, the default: they need no labels, and a held-out slice of ~150 prompts
set a 50% target at 60% in bench/retraining_bench.py) or on the held-out prompts only; its
`quality_95pct` threshold on the records with both models scored; a threshold that would be
infinite (JSON has none) is left out.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from aiokafka import AIOKafkaProducer

import schemas
from routers.artifact import Artifact, load_artifact
from routers.base import FloatArray, Router
from routers.calibration import (
    score_quantiles,
    threshold_for_quality,
    threshold_for_strong_fraction,
)
from routers.dataset import Record, data_sha256, split_by_id
from routers.promotion import (
    CostTarget,
    PromotionVerdict,
    TargetResult,
    decide,
    evaluate_at_target,
)
from routers.training import (
    DEFAULT_ROUTER,
    TrainOptions,
    label_matrix,
    train,
    trained_features,
)
from worker.config.kafka import KafkaSettings
from worker.training.registry import Registry

__all__ = ["RetrainOptions", "publish_reload", "retrain"]


@dataclass(frozen=True, slots=True)
class RetrainOptions:
    router: str = DEFAULT_ROUTER
    target: CostTarget = field(default_factory=lambda: CostTarget("quality_ratio", 0.95))
    holdout: float = 0.2
    split_salt: str = "retrain"
    tolerance: float = 0.0
    min_eval: int = 50
    strong: str | None = None  # default: the current router's
    weak: str | None = None
    keep_rejected: bool = False  # also save a candidate that was not promoted
    # prompts the strong-fraction thresholds are calibrated on: every outcome record ("all":
    # the traffic's own prompt mix, incl. the training rows) or the held-out slice only
    calibrate_on: Literal["all", "heldout"] = "all"


# ---------------------------------------------------------------- evaluation


def _need(router: Router, records: Sequence[Record], strong: str, weak: str) -> FloatArray:
    predicted = router.predict([r.text for r in records])
    out: FloatArray = (
        predicted[:, router.models.index(strong)] - predicted[:, router.models.index(weak)]
    )
    return out


def _costs(
    records: Sequence[Record], strong: str, weak: str
) -> tuple[FloatArray, FloatArray] | None:
    if all(strong in r.costs and weak in r.costs for r in records):
        return (
            np.array([r.costs[strong] for r in records]),
            np.array([r.costs[weak] for r in records]),
        )
    return None


def _evaluate(
    router: Router, records: Sequence[Record], strong: str, weak: str, target: CostTarget
) -> TargetResult:
    y = label_matrix(records, (strong, weak))
    costs = _costs(records, strong, weak)
    return evaluate_at_target(
        _need(router, records, strong, weak),
        y[:, 0],
        y[:, 1],
        target,
        costs[0] if costs else None,
        costs[1] if costs else None,
    )


def retrain(
    records: Sequence[Record],
    registry: Path,
    options: RetrainOptions,
    current: Path | None = None,
    base_records: Sequence[Record] = (),
) -> dict[str, Any]:
    """Train, evaluate, maybe promote (the I/O is the registry folder). Returns the report;
    `report["promoted"]` says whether CURRENT now names the new version. `base_records` (e.g.
    the benchmark data the first router learnt from) are added to the training set only: the
    held-out slice comes from `records` alone, so the decision is about the new traffic."""
    current = current if current is not None else Registry(registry).current()
    now: Artifact | None = load_artifact(current) if current is not None else None
    strong = options.strong or (now.router.strong if now else None)
    weak = options.weak or (now.router.weak if now else None)
    held = split_by_id([r.id for r in records], options.holdout, options.split_salt)
    fit = [r for r, h in zip(records, held, strict=True) if not h] + list(base_records)
    heldout = [r for r, h in zip(records, held, strict=True) if h]
    # a successor of the same kind keeps the current router's features
    features = None
    if now is not None and now.router.name == options.router:
        features = trained_features(now.router)
    candidate = train(
        fit, TrainOptions(router=options.router, strong=strong, weak=weak, features=features)
    )
    strong, weak = candidate.strong, candidate.weak
    both = [r for r in heldout if strong in r.scores and weak in r.scores]
    report: dict[str, Any] = {
        "n_records": len(records),
        "n_train": len(fit),
        "n_heldout": len(heldout),
        "n_eval": len(both),
        "strong": strong,
        "weak": weak,
        "candidate_version": candidate.version,
        "current": str(current) if current else None,
        "current_version": now.router.version if now else None,
    }
    verdict: PromotionVerdict
    if not both:
        verdict = PromotionVerdict(
            False, "no held-out record has both models scored", options.target, None, None
        )
    else:
        mine = _evaluate(candidate, both, strong, weak, options.target)
        theirs = None
        if now is not None:
            if strong not in now.router.models or weak not in now.router.models:
                raise ValueError(
                    f"the current router ({now.router.models}) does not score {strong} and {weak}"
                )
            theirs = _evaluate(now.router, both, strong, weak, options.target)
        verdict = decide(
            mine, theirs, options.target, tolerance=options.tolerance, min_records=options.min_eval
        )
    report["verdict"] = verdict.to_dict()
    report["promoted"] = False
    if verdict.promote or options.keep_rejected:
        calibration: dict[str, float] = {}
        quantiles: list[float] = []
        prompts = records if options.calibrate_on == "all" else heldout
        if prompts:
            # strong-call fractions need no labels: every prompt of the traffic counts
            need_all = _need(candidate, prompts, strong, weak)
            fractions = {0.1, 0.2, 0.3, 0.5}
            if options.target.kind == "strong_fraction":
                fractions.add(options.target.value)
            calibration = {
                f"strong_fraction_{f:.2f}": threshold_for_strong_fraction(need_all, f)
                for f in sorted(fractions)
            }
            quantiles = score_quantiles(need_all)
        if both:
            y = label_matrix(both, (strong, weak))
            need = _need(candidate, both, strong, weak)
            calibration["quality_95pct"] = threshold_for_quality(need, y[:, 0], y[:, 1], 0.95)
        # JSON has no infinity (a fraction too small for the slice, or no strong call needed
        # for the quality): leave such keys out rather than write nulls
        calibration = {k: v for k, v in calibration.items() if math.isfinite(v)}
        metrics = {
            "n_train": len(fit),
            "promotion": verdict.to_dict(),
            "previous_version": report["current_version"],
        }
        version, path = Registry(registry).add(
            candidate,
            data_hash=data_sha256(fit),
            metrics=metrics,
            calibration=calibration,
            quantiles=quantiles,
        )
        report["version"] = version
        report["artifact_path"] = str(path.resolve())
        if verdict.promote:
            Registry(registry).promote(version)
            report["promoted"] = True
    return report


# ---------------------------------------------------------------- control event


async def publish_reload(
    kafka: KafkaSettings, topic: str, artifact_path: str, version: str, reason: str
) -> schemas.Control:
    event = schemas.Control(
        schema_version=1,
        command_id=f"reload-{version}-{uuid.uuid4().hex[:8]}",
        action="reload_router",
        issued_at=datetime.now(UTC),
        artifact_path=artifact_path,
        router_version=version,
        reason=reason[:500],
    )
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **kafka.common_kwargs())
    try:
        await producer.start()
        await producer.send_and_wait(topic, schemas.encode(event), key=b"reload_router")
    finally:
        await producer.stop()
    return event
