"""`llmroute retrain`: train a new router version from outcomes, evaluate it against the current
one on a held-out slice, and promote it only if it is at least as good at the cost target.

    llmroute retrain --data outcomes.jsonl --registry routers/ [--current DIR]
        [--quality-ratio 0.95 | --strong-fraction 0.3] [--tolerance 0] [--min-eval 50]
        [--publish --config worker.toml]

The registry is a folder of versioned artifacts and a `CURRENT` file naming the promoted one:

    routers/CURRENT                       one line: v0003-classifier-1a2b3c4d5e6f
    routers/v0003-classifier-1a2b3c4d5e6f/meta.json, arrays.npz    (meta.version = folder name)

A version is `v{N}-{router}-{data hash}` with N one above the highest in the folder; a new
artifact is written to a temporary folder and renamed into place (a clash with a concurrent
retrain picks the next N), and `CURRENT` is replaced atomically (written aside, then
`os.replace`), so a reader sees the old or the new version, never a half-written one. With
`--publish`, a promotion also publishes a `reload_router` Control event (artifact path and
version) to `llm.control`.

The candidate is trained on the records outside the held-out slice (id hash, `--split-salt`)
with the current router's strong and weak models (a model's mean score in routed traffic says
more about where the router sent it than about the model). Both routers are judged on the
held-out records that have both models scored (`routers.promotion`). The candidate's
strong-fraction thresholds and score quantiles are calibrated on every outcome record's prompt
(`--calibrate-on all`, the default: they need no labels, and a held-out slice of ~150 prompts
set a 50% target at 60% in bench/loop_bench.py) or on the held-out prompts only; its
`quality_95pct` threshold on the records with both models scored; a threshold that would be
infinite (JSON has none) is left out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from aiokafka import AIOKafkaProducer

import schemas
from routers.artifact import Artifact, load_artifact, save, update_meta
from routers.base import FloatArray, Router
from routers.calibration import (
    score_quantiles,
    threshold_for_quality,
    threshold_for_strong_fraction,
)
from routers.dataset import Record, data_sha256, split_by_id
from routers.errors import RoutingError
from routers.promotion import (
    CostTarget,
    PromotionVerdict,
    TargetResult,
    decide,
    evaluate_at_target,
    next_version,
)
from routers.training import DEFAULT_ROUTER, ROUTER_NAMES, TrainOptions, label_matrix, train
from worker.cli import Stages, next_hint
from worker.cli.dataset import CommandError, add_kafka_args, kafka_from_args
from worker.cli.routing import CliError, read_records
from worker.config.kafka import KafkaSettings

__all__ = [
    "CURRENT",
    "RetrainOptions",
    "current_artifact",
    "publish_reload",
    "register",
    "retrain",
    "save_version",
    "set_current",
]

CURRENT = "CURRENT"


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


# ---------------------------------------------------------------- registry


def current_artifact(registry: Path) -> Path | None:
    """The promoted artifact's folder, or None when nothing was promoted yet."""
    try:
        name = (registry / CURRENT).read_text("utf-8").strip()
    except FileNotFoundError:
        return None
    return registry / name if name else None


def set_current(registry: Path, version: str) -> None:
    """Point CURRENT at `version`, atomically."""
    if not (registry / version / "meta.json").is_file():
        raise CommandError(f"{registry / version} is not an artifact")
    tmp = registry / f".{CURRENT}.{uuid.uuid4().hex}"
    tmp.write_text(version + "\n", encoding="utf-8")
    os.replace(tmp, registry / CURRENT)


def save_version(
    router: Router,
    registry: Path,
    *,
    data_hash: str,
    metrics: dict[str, Any],
    calibration: dict[str, float],
    quantiles: list[float],
) -> tuple[str, Path]:
    """Write the router as the registry's next version; returns (version, folder)."""
    registry.mkdir(parents=True, exist_ok=True)
    tmp = registry / f".tmp-{uuid.uuid4().hex}"
    save(router, tmp, data_sha256=data_hash, metrics=metrics, calibration=calibration)
    if quantiles:
        update_meta(tmp, {"score_quantiles": quantiles})
    for _ in range(100):
        version = next_version((p.name for p in registry.iterdir()), router.version)
        update_meta(tmp, {"version": version, "trained_version": router.version})
        try:
            (registry / version).mkdir()  # reserves the name: fails if another retrain took it
        except FileExistsError:
            continue
        os.rename(tmp, registry / version)  # replaces the empty reserved folder
        return version, registry / version
    raise CommandError(f"could not find a free version name in {registry}")


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
    current = current if current is not None else current_artifact(registry)
    now: Artifact | None = load_artifact(current) if current is not None else None
    strong = options.strong or (now.router.strong if now else None)
    weak = options.weak or (now.router.weak if now else None)
    held = split_by_id([r.id for r in records], options.holdout, options.split_salt)
    fit = [r for r, h in zip(records, held, strict=True) if not h] + list(base_records)
    heldout = [r for r, h in zip(records, held, strict=True) if h]
    candidate = train(fit, TrainOptions(router=options.router, strong=strong, weak=weak))
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
                raise CommandError(
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
        version, path = save_version(
            candidate,
            registry,
            data_hash=data_sha256(fit),
            metrics=metrics,
            calibration=calibration,
            quantiles=quantiles,
        )
        report["version"] = version
        report["artifact_path"] = str(path.resolve())
        if verdict.promote:
            set_current(registry, version)
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
    await producer.start()
    try:
        await producer.send_and_wait(topic, schemas.encode(event), key=b"reload_router")
    finally:
        await producer.stop()
    return event


# ---------------------------------------------------------------- the command


def cmd_retrain(args: argparse.Namespace) -> int:
    try:
        if args.strong_fraction is not None and args.quality_ratio is not None:
            raise CommandError("give --strong-fraction or --quality-ratio, not both")
        target = (
            CostTarget("strong_fraction", args.strong_fraction)
            if args.strong_fraction is not None
            else CostTarget("quality_ratio", args.quality_ratio or 0.95)
        )
        options = RetrainOptions(
            router=DEFAULT_ROUTER if args.router == "default" else args.router,
            target=target,
            holdout=args.holdout,
            split_salt=args.split_salt,
            tolerance=args.tolerance,
            min_eval=args.min_eval,
            strong=args.strong,
            weak=args.weak,
            keep_rejected=args.keep_rejected,
            calibrate_on=args.calibrate_on,
        )
        progress = Stages("retrain")
        progress.begin("reading " + ", ".join(str(p) for p in args.data))
        records = read_records(args.data)
        progress.end(f"{len(records):,} records")
        progress.begin("training a candidate and comparing it with the current router")
        report = retrain(records, args.registry, options, args.current)
        progress.end("promoted" if report["promoted"] else "not promoted")
        if report["promoted"] and args.publish:
            kafka, topics = kafka_from_args(args)
            event = asyncio.run(
                publish_reload(
                    kafka,
                    topics.control,
                    report["artifact_path"],
                    report["version"],
                    report["verdict"]["reason"],
                )
            )
            report["control_command_id"] = event.command_id
    except (CommandError, CliError, RoutingError, ValueError) as exc:
        sys.stderr.write(f"llmroute retrain: error: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
    if report["promoted"] and not args.publish:
        next_hint("members with router.watch_s > 0 load it; or rerun with --publish --config FILE")
    return 0


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "retrain", help="train a router version from outcomes; promote it if it is as good"
    )
    p.add_argument("--data", type=Path, action="append", required=True, help="dataset JSONL")
    p.add_argument("--registry", type=Path, required=True, help="folder of router versions")
    p.add_argument("--current", type=Path, help="artifact to beat (default: the registry's)")
    p.add_argument("--router", default="default", choices=("default", *ROUTER_NAMES))
    p.add_argument("--strong", help="strong model (default: the current router's)")
    p.add_argument("--weak", help="weak model (default: the current router's)")
    p.add_argument("--holdout", type=float, default=0.2, help="held-out fraction (id hash)")
    p.add_argument("--split-salt", default="retrain")
    p.add_argument("--strong-fraction", type=float, help="cost target: this strong-call share")
    p.add_argument(
        "--quality-ratio", type=float, help="cost target: this share of always-strong quality"
    )
    p.add_argument("--tolerance", type=float, default=0.0, help="allowed shortfall at the target")
    p.add_argument("--min-eval", type=int, default=50, help="held-out records needed to decide")
    p.add_argument("--keep-rejected", action="store_true", help="save rejected candidates too")
    p.add_argument(
        "--calibrate-on", choices=("all", "heldout"), default="all",
        help="prompts for the strong-fraction thresholds: every outcome record (default; ~5x "
        "more prompts than the held-out slice, so the deployed share lands nearer the target) "
        "or the held-out slice only",
    )  # fmt: skip
    p.add_argument("--publish", action="store_true", help="publish reload_router on promotion")
    add_kafka_args(p, ("control",))
    p.set_defaults(handler=cmd_retrain)
