"""`llmroute train | score | calibrate | eval`: the routing core's file I/O and commands.

    llmroute train --data F.jsonl [--data G.jsonl ...] --router NAME --out DIR [--strong M --weak M]
    llmroute train --router cascade --data F.jsonl --out DIR [--strong S --weak W]
    llmroute score --router DIR --data F.jsonl --out S.jsonl
    llmroute calibrate --router DIR --data F.jsonl [--strong-fraction 0.3] [--quality-ratio 0.95]
        [--budget-usd 0.002] [--budget-fraction 0.5] [--quality-target 0.8] [--prices P.json]
    llmroute eval --router DIR --data F.jsonl [--json] [--plot P.png] [--prices prices.json] [--all]
    llmroute eval --transfer --data F.jsonl [--data G.jsonl ...] [--router DIR] [--json]

Datasets are JSONL, one record a line: {"id", "prompt" | "messages", "scores": {model: 0..1},
"costs"?: {model: usd}, "tags"?: {...}, "answers"?: {model: text}}. `--router default` trains the
recommended router; `--router cascade` trains an answer scorer for the cascade policy (prompt +
the cheap model's answer -> escalate?) from the rows' `answers`. `score` writes one line per
record: {"id", "score", "predicted"?}, higher score = more need of the strong model (for a
cascade scorer: P(the cheap answer is not good enough)); routers add every model's predicted
quality (`predicted`), the input of N-model policies.

`eval` leaves out the records the artifact was trained on (so on the training file it scores the
held-out split) and warns when the data is the training data; `--all` scores every record.
`eval --transfer` is leave-one-domain-out validation (`routers.transfer`): MMLU subject groups,
other benchmarks and each extra file are domains; it trains the router kind of `--router` (the
default router without it) on all but one and reports each held-out domain and the worst.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from routers import answer_scorer as cascade
from routers.artifact import Artifact, load_artifact, save, update_meta
from routers.base import FloatArray, strong_need
from routers.calibration import (
    score_quantiles,
    threshold_for_quality,
    threshold_for_strong_fraction,
)
from routers.dataset import Record, data_sha256, item_keys, record_from_obj, split_by_id
from routers.embedding import EMBEDDINGS
from routers.errors import RoutingError
from routers.evaluation import EvalOptions, cost_matrix, evaluate
from routers.features import HashingParams
from routers.learned import FeatureRouter
from routers.metrics import two_model_report
from routers.multi import lambda_curve, lambda_for_budget, lambda_for_quality
from routers.policy import ModelPrice
from routers.semantic import SemanticConfig, semantic_config_from_obj
from routers.training import (
    ROUTER_NAMES,
    TrainOptions,
    default_features,
    default_router,
    label_matrix,
    train,
    trained_features,
)
from routers.transfer import fit_with, group_by_domain, leave_one_domain_out
from worker.cli import (
    FRACTION,
    POSITIVE,
    Stages,
    Subparsers,
    UserError,
    finite,
    next_hint,
    number_in,
)
from worker.jsonl import JsonlError, read_jsonl

__all__ = ["read_prices", "read_records", "register"]


def read_records(
    paths: Sequence[Path], *, include_system: bool = False, include_history: bool = False
) -> list[Record]:
    records: list[Record] = []
    for path in paths:
        try:
            for lineno, obj in read_jsonl(path):
                if not isinstance(obj, dict):
                    raise UserError(f"{path}:{lineno}: a record must be a JSON object")
                try:
                    records.append(
                        record_from_obj(
                            obj, include_system=include_system, include_history=include_history
                        )
                    )
                except RoutingError as exc:
                    raise UserError(f"{path}:{lineno}: {exc}") from exc
        except JsonlError as exc:
            raise UserError(f"{path}:{exc.lineno}: {exc.problem}") from None
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    if not records:
        raise UserError("no records in " + ", ".join(str(p) for p in paths))
    return records


def read_prices(path: Path | None) -> dict[str, ModelPrice]:
    """{"model": {"input_per_mtok": 10.0, "output_per_mtok": 30.0}, ...}"""
    if path is None:
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        table = {
            str(m): ModelPrice(float(p["input_per_mtok"]), float(p["output_per_mtok"]))
            for m, p in obj.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"bad price table {path}: {exc!r}") from exc
    for model, price in table.items():
        for value in (price.input_per_mtok, price.output_per_mtok):
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"bad price table {path}: {model!r} has price {value}")
    return table


def _write_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, allow_nan=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


# --- train ----------------------------------------------------------------------------------


def _calibration(
    scores: Sequence[float], qs: Sequence[float], qw: Sequence[float]
) -> dict[str, float]:
    out = {
        f"strong_fraction_{f:.2f}": threshold_for_strong_fraction(scores, f)
        for f in (0.1, 0.2, 0.3, 0.5)
    }
    out["quality_95pct"] = threshold_for_quality(scores, qs, qw, 0.95)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    progress = Stages("train")
    if args.semantic_config is not None:  # a bad config is refused before the data is read
        _semantic_config(args.semantic_config)
    progress.begin("reading " + ", ".join(str(p) for p in args.data))
    records = read_records(
        args.data, include_system=args.include_system, include_history=args.include_history
    )
    progress.end(f"{len(records):,} records")
    name = default_router(records) if args.router == "default" else args.router
    if name == cascade.CASCADE_KIND:
        return _train_cascade(args, records)
    semantic = _semantic_config(args.semantic_config) if name == "semantic" else None
    options = TrainOptions(
        router=name,
        strong=args.strong,
        weak=args.weak,
        semantic=semantic,
        features=_features(args.static_embedding),
    )
    held = split_by_id([r.id for r in records], args.holdout, args.split_salt)
    fit = [r for r, h in zip(records, held, strict=True) if not h]
    heldout = [r for r, h in zip(records, held, strict=True) if h]
    started = time.perf_counter()
    progress.begin(f"training {name} on {len(fit):,} prompts ({len(heldout):,} held out)")
    router = train(fit, options)
    progress.end()
    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {"train_seconds": round(seconds, 3), "n_train": len(fit)}
    calibration: dict[str, float] = {}
    quantiles: list[float] = []
    if heldout:
        progress.begin(f"evaluating and calibrating on {len(heldout):,} held-out prompts")
        result = evaluate(router, heldout)
        metrics["heldout"] = {k: v for k, v in result["two_model"].items() if k != "curve"}
        y = label_matrix(heldout, router.models)
        s, w = router.models.index(router.strong), router.models.index(router.weak)
        ok = ~(np.isnan(y[:, s]) | np.isnan(y[:, w]))
        if ok.any():
            sc = strong_need(router, router.predict([r.text for r in heldout]))[ok]
            calibration = _calibration(sc.tolist(), y[ok, s].tolist(), y[ok, w].tolist())
            quantiles = score_quantiles(sc)
        progress.end()
    save(
        router,
        args.out,
        data_sha256=data_sha256(fit),
        metrics=metrics,
        calibration=calibration,
        split={"holdout": args.holdout, "salt": args.split_salt},
        train_keys=np.asarray(item_keys(fit), dtype=np.uint64),
    )
    if quantiles:
        update_meta(args.out, {"score_quantiles": quantiles})
    summary = {
        "router": router.name,
        "version": router.version,
        "out": str(args.out),
        "models": list(router.models),
        "strong": router.strong,
        "weak": router.weak,
        **metrics,
        "calibration": calibration,
    }
    if isinstance(router, FeatureRouter) and router.familiarity is not None:
        # what `unfamiliar` is measured against: "" = every prompt, or the small sources together
        summary["unfamiliar_sources"] = [
            {"source": m.source, "rows": m.rows} for m in router.familiarity.sources
        ]
    _write_json(finite(summary))
    next_hint(f"set [router].artifact = {str(args.out)!r} and `llmroute run --config FILE`")
    return 0


def _semantic_config(path: str | None) -> SemanticConfig:
    """The semantic router's categories: `path` (JSON), or the bundled default."""
    if path is None:
        text = resources.files("routers").joinpath("data/semantic_default.json").read_text()
    else:
        text = Path(path).read_bytes().decode("utf-8", "replace")
    try:
        return semantic_config_from_obj(json.loads(text))
    except ValueError as exc:  # not JSON, or not of the config's shape
        raise UserError(f"bad --semantic-config {path}: {exc}") from None


def _cascade_calibration(good: FloatArray, qs: FloatArray, qw: FloatArray) -> dict[str, float]:
    """Thresholds on P(good enough) (accept iff >= threshold): about a fraction f of the cheap
    answers escalated, and the fewest escalations reaching 95% of always-strong quality."""
    escalate = 1.0 - good
    out = {
        f"escalate_fraction_{f:.2f}": 1.0 - threshold_for_strong_fraction(escalate, f)
        for f in (0.1, 0.2, 0.3, 0.5)
    }
    out["quality_95pct"] = 1.0 - threshold_for_quality(escalate, qs, qw, 0.95)
    return out


def _train_cascade(args: argparse.Namespace, records: list[Record]) -> int:
    held = split_by_id([r.id for r in records], args.holdout, args.split_salt)
    fit = [r for r, h in zip(records, held, strict=True) if not h]
    heldout = [r for r, h in zip(records, held, strict=True) if h]
    started = time.perf_counter()
    scorer = cascade.train_answer_scorer(fit, strong=args.strong, weak=args.weak)
    rows = cascade.answered_rows(fit, scorer.weak)
    metrics: dict[str, Any] = {
        "train_seconds": round(time.perf_counter() - started, 3),
        "n_train": len(rows),
        "n_skipped_without_cheap_answer": len(fit) - len(rows),
    }
    calibration: dict[str, float] = {}
    test = [r for r in cascade.answered_rows(heldout, scorer.weak) if scorer.strong in r.scores]
    if test:
        good = scorer.good_probability(
            [r.text for r in test], [r.answers[scorer.weak] for r in test]
        )
        qs = np.array([r.scores[scorer.strong] for r in test])
        qw = np.array([r.scores[scorer.weak] for r in test])
        report = two_model_report(1.0 - good, qs, qw)
        metrics["heldout"] = report.summary()
        calibration = _cascade_calibration(good, qs, qw)
    cascade.save_answer_scorer(
        scorer,
        args.out,
        data_sha256=cascade.cascade_data_sha256(rows, scorer.weak),
        metrics=metrics,
        calibration=calibration,
    )
    summary = {
        "router": scorer.name,
        "version": scorer.version,
        "out": str(args.out),
        "strong": scorer.strong,
        "weak": scorer.weak,
        **metrics,
        "calibration": calibration,
    }
    _write_json(finite(summary))
    return 0


# --- score ----------------------------------------------------------------------------------


def _score_cascade(args: argparse.Namespace) -> int:
    scorer, _ = cascade.load_answer_scorer(args.router)
    records = read_records(args.data)
    missing = [r.id for r in records if scorer.weak not in r.answers]
    if missing:
        raise UserError(
            f"{len(missing)} record(s) carry no answer of the cheap model {scorer.weak!r} "
            f"(`answers`), e.g. {missing[:3]}: a cascade scorer scores the cheap answer"
        )
    escalate = scorer.escalate_score(
        [r.text for r in records], [r.answers[scorer.weak] for r in records]
    )
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as fh:
        for r, s in zip(records, escalate.tolist(), strict=True):
            fh.write(json.dumps({"id": r.id, "score": s}) + "\n")
    _write_json(
        {"router": scorer.name, "version": scorer.version, "n": len(records), "out": str(out_path)}
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    if cascade.is_answer_scorer(args.router):
        return _score_cascade(args)
    artifact = load_artifact(args.router)
    router = artifact.router
    records = read_records(args.data)
    predicted = router.predict([r.text for r in records])
    need = strong_need(router, predicted)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as fh:
        for i, r in enumerate(records):
            line = {
                "id": r.id,
                "score": float(need[i]),
                "predicted": {m: float(predicted[i, j]) for j, m in enumerate(router.models)},
            }
            fh.write(json.dumps(line) + "\n")
    _write_json(
        {"router": router.name, "version": router.version, "n": len(records), "out": str(out_path)}
    )
    return 0


# --- calibrate ------------------------------------------------------------------------------


def _budget_lambdas(
    args: argparse.Namespace, router: Any, records: list[Record], predicted: FloatArray
) -> tuple[dict[str, float], list[list[float]]]:
    """N models: the lambda (cost weight per USD) meeting each budget or quality target on
    these records, and the lambda curve stored in the artifact."""
    asked = (args.budget_usd or []) + (args.budget_fraction or []) + (args.quality_target or [])
    if not asked:
        return {}, []
    cost = cost_matrix(records, router.models, read_prices(args.prices))
    if np.isnan(cost).any(axis=1).all():
        raise UserError("budgets need every model's cost: `costs` in the rows or --prices")
    curve = lambda_curve(predicted, cost)
    out: dict[str, float] = {}
    for usd in args.budget_usd or []:
        out[f"lambda_budget_usd_{usd:g}"] = lambda_for_budget(curve, usd)
    if args.budget_fraction:
        y = label_matrix(records, router.models)
        quality = np.nanmean(y, axis=0) if not np.isnan(y).all() else predicted.mean(axis=0)
        best = int(np.nanargmax(quality))
        best_cost = float(np.nanmean(cost[:, best]))
        for f in args.budget_fraction:
            out[f"lambda_budget_fraction_{f:.2f}"] = lambda_for_budget(curve, f * best_cost)
    for q in args.quality_target or []:
        out[f"lambda_quality_{q:.3f}"] = lambda_for_quality(curve, q)
    table = [[p.cost_weight_per_usd, p.mean_cost_usd, p.mean_predicted_quality] for p in curve]
    return out, table


def cmd_calibrate(args: argparse.Namespace) -> int:
    artifact = load_artifact(args.router)
    router = artifact.router
    records = read_records(args.data)
    y = label_matrix(records, router.models)
    s, w = router.models.index(router.strong), router.models.index(router.weak)
    predicted = router.predict([r.text for r in records])
    need = strong_need(router, predicted)
    fractions = args.strong_fraction or []
    thresholds = {
        f"strong_fraction_{f:.2f}": threshold_for_strong_fraction(need, f) for f in fractions
    }
    labelled = ~(np.isnan(y[:, s]) | np.isnan(y[:, w]))
    for ratio in args.quality_ratio or []:
        if not labelled.any():
            raise UserError(
                "--quality-ratio needs records with scores for the strong and weak model"
            )
        thresholds[f"quality_{round(ratio * 100)}pct"] = threshold_for_quality(
            need[labelled], y[labelled, s], y[labelled, w], ratio
        )
    lambdas, curve = _budget_lambdas(args, router, records, predicted)
    thresholds.update(lambdas)
    if not thresholds:
        raise UserError(
            "give at least one --strong-fraction, --quality-ratio, --budget-usd, "
            "--budget-fraction or --quality-target"
        )
    calibration = {**artifact.calibration, **thresholds}
    if not args.dry_run:
        fields: dict[str, Any] = {
            "calibration": calibration,
            "score_quantiles": score_quantiles(need),
        }
        if curve:
            fields["lambda_curve"] = curve
        update_meta(args.router, fields)
    _write_json(finite({"router": str(args.router), "n": len(records), "thresholds": thresholds}))
    return 0


# --- eval -----------------------------------------------------------------------------------


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_model = result.get("n_model")
    fig, axes = plt.subplots(1, 2 if n_model else 1, figsize=(11 if n_model else 6, 4.5))
    ax = axes[0] if n_model else axes
    curve = result["two_model"]["curve"]
    xs = [p["strong_fraction"] for p in curve]
    ax.plot(
        xs,
        [p["pgr"] for p in curve],
        label=f"{result['router']} (APGR {result['two_model']['apgr']:.3f})",
    )
    oracle = result.get("oracle", {})
    if oracle.get("curve"):
        ax.plot(
            [p["strong_fraction"] for p in oracle["curve"]],
            [p["pgr"] for p in oracle["curve"]],
            ":",
            color="green",
            label=f"oracle (APGR {oracle['apgr']:.3f})",
        )
    deployed = result.get("deployed") or {}
    if deployed.get("pgr") is not None:
        ax.plot(
            [deployed["strong_fraction"]],
            [deployed["pgr"]],
            "o",
            color="red",
            label=f"deployed (threshold {deployed['threshold']:.3f})",
        )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random (APGR 0.500)")
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_xlabel("strong-model calls (fraction)")
    ax.set_ylabel("performance gap recovered")
    ax.set_title(f"{result['strong']} vs {result['weak']}", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    if n_model:
        ax2 = axes[1]
        pts = n_model["points"]
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], ".", alpha=0.4, label="router")
        par = n_model["pareto"]
        ax2.plot(
            [p[0] for p in par],
            [p[1] for p in par],
            "-",
            label=f"Pareto (AIQ {n_model['aiq']:.3f})",
        )
        for m, (c, q) in n_model["single_models"].items():
            ax2.plot([c], [q], "s")
            ax2.annotate(m.split("/")[-1], (c, q), fontsize=7)
        ax2.set_xlabel("mean cost per prompt (USD)")
        ax2.set_ylabel("mean quality")
        ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _unseen(artifact: Artifact, records: list[Record], use_all: bool) -> list[Record]:
    """The records to evaluate on: those the router was not trained on, unless `use_all`.
    Warns (stderr) when the figures would be in-sample."""
    trained = data_sha256(records) == artifact.meta.get("data_sha256")
    keys = artifact.train_keys
    seen = (
        np.isin(np.asarray(item_keys(records), dtype=np.uint64), keys)
        if keys is not None
        else np.zeros(len(records), dtype=bool)
    )
    if use_all or not seen.any():
        if trained or seen.all():
            _warn("these records are the router's training data: the figures are in-sample")
        elif seen.any():
            _warn(f"{int(seen.sum())} of {len(records)} records were trained on (in-sample)")
        elif keys is None and artifact.meta.get("split") is None:
            _warn("the artifact does not record its training items: cannot tell unseen data")
        return records
    unseen = [r for r, s in zip(records, seen, strict=True) if not s]
    if not unseen:
        raise UserError(
            "every record was trained on (the artifact has no held-out items of this data); "
            "pass --all to score them anyway (in-sample), or give unseen data"
        )
    _warn(
        f"scoring the {len(unseen)} of {len(records)} records the router was not trained on "
        "(its held-out split); --all scores every record"
    )
    return unseen


def _warn(message: str) -> None:
    sys.stderr.write(f"llmroute eval: warning: {message}\n")


def _operating_point(artifact: Artifact, records: list[Record], threshold: float) -> dict[str, Any]:
    """Where the worker's default threshold (the artifact's calibrated one) lands on this data."""
    router = artifact.router
    y = label_matrix(records, router.models)
    s, w = router.models.index(router.strong), router.models.index(router.weak)
    ok = ~(np.isnan(y[:, s]) | np.isnan(y[:, w]))
    if not ok.any():
        return {"threshold": threshold}
    need = strong_need(router, router.predict([r.text for r in records]))[ok]
    strong = need >= threshold
    qs, qw = y[ok, s], y[ok, w]
    quality = float(np.where(strong, qs, qw).mean())
    gap = float(qs.mean() - qw.mean())
    return {
        "threshold": threshold,
        "strong_fraction": float(strong.mean()),
        "quality": quality,
        "pgr": (quality - float(qw.mean())) / gap if gap != 0 else None,
    }


def _transfer(args: argparse.Namespace) -> int:
    sources: dict[str, list[Record]] = {}
    for path in args.data:
        sources.setdefault(path.stem, []).extend(read_records([path]))
    domains = group_by_domain(sources)
    options = TrainOptions(strong=args.strong, weak=args.weak)
    if args.router is not None:
        artifact = load_artifact(args.router)
        router = artifact.router
        if router.name not in ROUTER_NAMES:
            raise UserError(f"cannot retrain a {router.name!r} router for transfer validation")
        options = TrainOptions(
            router=router.name,
            strong=args.strong or router.strong,
            weak=args.weak or router.weak,
            # the folds are trained on the artifact's own features (its embedding, hash sizes)
            features=trained_features(router),
        )
    # strong/weak fixed for every fold: the defaults (best / worst mean) of all the data
    probe = [r for recs in domains.values() for r in recs]
    models = sorted({m for r in probe for m in r.scores})
    y = label_matrix(probe, models)
    means = np.nanmean(y, axis=0)
    strong = options.strong or models[int(np.argmax(means))]
    weak = options.weak or models[int(np.argmin(means))]
    options = dataclasses.replace(options, strong=strong, weak=weak)
    try:
        report = leave_one_domain_out(domains, fit_with(options), strong, weak)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    features = options.features or default_features(options.router)
    result = {
        "router": options.router,
        "strong": strong,
        "weak": weak,
        "static_embedding": features.static_embedding or None,
        **report.summary(),
    }
    if args.json:
        _write_json(finite(result))
        return 0
    for d in report.domains:
        share = f"  unfamiliar {d.unfamiliar_share:.0%}" if d.unfamiliar_share is not None else ""
        sys.stdout.write(
            f"held out {d.domain:<22} n={d.n_test:<5} APGR {d.apgr:.3f}  CPT(50%) {d.cpt50:.1%}  "
            f"CPS95 {d.cps95:.1%}{share}\n"
        )
    worst = report.worst
    sys.stdout.write(
        f"worst: APGR {worst['apgr']:.3f} ({worst['apgr_domain']}), "
        f"CPT(50%) {worst['cpt50']:.1%} ({worst['cpt50_domain']}), "
        f"CPS95 {worst['cps95']:.1%} ({worst['cps95_domain']})\n"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.transfer:
        return _transfer(args)
    if args.router is None:
        raise UserError("--router is required (except with --transfer)")
    progress = Stages("eval")
    artifact = load_artifact(args.router)
    records = _unseen(artifact, read_records(args.data), args.all)
    progress.begin(f"evaluating {artifact.router.version} on {len(records):,} prompts")
    result = evaluate(
        artifact.router,
        records,
        read_prices(args.prices),
        EvalOptions(strong=args.strong, weak=args.weak),
    )
    progress.end()
    result = finite(result)
    deployed = artifact.calibration.get("default", artifact.calibration.get("quality_95pct"))
    if deployed is not None:
        result["deployed"] = _operating_point(artifact, records, deployed)
    if args.plot is not None:
        _plot(result, Path(args.plot))
        result["plot"] = str(args.plot)
    if args.json:
        _write_json(result)
    else:
        t = result["two_model"]
        o = result["oracle"]
        sys.stdout.write(
            f"{result['router']} {result['router_version']} on {result['n_two_model']} prompts: "
            f"weak {t['weak_quality']:.3f}, strong {t['strong_quality']:.3f}; "
            f"APGR {t['apgr']:.3f} (random 0.500, oracle {o['apgr']:.3f}), "
            f"CPT(50%) {t['cpt50']:.1%}, CPT(80%) {t['cpt80']:.1%}, "
            f"strong calls for 95% quality {t['strong_fraction_for_95pct']:.1%}\n"
        )
    return 0


# --- wiring ---------------------------------------------------------------------------------


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A routing error (bad data, an unreadable artifact) is the user's to fix."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except RoutingError as exc:
            raise UserError(str(exc)) from None

    return run


def _features(static_embedding: str) -> HashingParams | None:
    """`--static-embedding`: None (the router's default features), or hashing features with
    this embedding ("none": without one)."""
    if static_embedding == "default":
        return None
    return HashingParams(static_embedding="" if static_embedding == "none" else static_embedding)


def register(subparsers: Subparsers) -> None:
    """Add the routing commands to the `llmroute` parser."""
    p = subparsers.add_parser("train", help="train a router from dataset JSONL files")
    p.add_argument("--data", type=Path, action="append", required=True, help="dataset JSONL")
    p.add_argument(
        "--router", default="default", choices=("default", *ROUTER_NAMES, cascade.CASCADE_KIND)
    )
    p.add_argument("--out", type=Path, required=True, help="artifact folder to write")
    p.add_argument("--strong", help="strong model (default: best mean score)")
    p.add_argument(
        "--weak", help="weak (cheap) model (default: cheapest by the rows' costs, else worst mean)"
    )
    p.add_argument(
        "--holdout",
        type=FRACTION,
        default=0.0,
        help="fraction of items (by id hash) held out for metrics and calibration",
    )
    p.add_argument("--split-salt", default="heldout", help="salt of the id-hash split")
    p.add_argument("--semantic-config", type=Path, help="categories JSON for --router semantic")
    p.add_argument("--include-system", action="store_true", help="score system prompts too")
    p.add_argument("--include-history", action="store_true", help="score earlier turns too")
    p.add_argument(
        "--static-embedding",
        default="default",
        choices=("default", "none", *EMBEDDINGS),
        help="a static word embedding in the features (default: the router's own; pooled "
        "uses one, the others do not)",
    )
    p.set_defaults(handler=_guard(cmd_train))

    p = subparsers.add_parser(
        "score", help="write each prompt's strong-need (or escalation) score and predictions"
    )
    p.add_argument("--router", type=Path, required=True, help="artifact folder")
    p.add_argument("--data", type=Path, action="append", required=True)
    p.add_argument("--out", type=Path, required=True, help="output JSONL")
    p.set_defaults(handler=_guard(cmd_score))

    p = subparsers.add_parser(
        "calibrate", help="store thresholds for target strong fractions/quality"
    )
    p.add_argument("--router", type=Path, required=True, help="artifact folder (updated)")
    p.add_argument("--data", type=Path, action="append", required=True)
    p.add_argument(
        "--strong-fraction",
        type=FRACTION,
        action="append",
        help="target fraction of strong calls (repeatable)",
    )
    p.add_argument(
        "--quality-ratio",
        type=number_in(0.0, 1.0, low_open=True),
        action="append",
        help="target quality as a fraction of always-strong (repeatable)",
    )
    p.add_argument(
        "--budget-usd",
        type=number_in(0.0, math.inf),
        action="append",
        help="N models: the lambda whose mean cost per request is within this USD (repeatable)",
    )
    p.add_argument(
        "--budget-fraction",
        type=POSITIVE,
        action="append",
        help="N models: budget as a fraction of the best model's mean cost (repeatable)",
    )
    p.add_argument(
        "--quality-target",
        type=FRACTION,
        action="append",
        help="N models: the cheapest lambda whose mean predicted quality reaches it (repeatable)",
    )
    p.add_argument("--prices", type=Path, help="price table JSON when rows carry no costs")
    p.add_argument("--dry-run", action="store_true", help="print, do not write the artifact")
    p.set_defaults(handler=_guard(cmd_calibrate))

    p = subparsers.add_parser("eval", help="evaluate a router on labelled data")
    p.add_argument("--router", type=Path, help="artifact folder (optional with --transfer)")
    p.add_argument("--data", type=Path, action="append", required=True)
    p.add_argument("--strong", help="strong model (default: the router's)")
    p.add_argument("--weak", help="weak model (default: the router's)")
    p.add_argument("--prices", type=Path, help="price table JSON for cost and N-model figures")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--plot", type=Path, help="write a PNG of the PGR curve (and Pareto front)")
    p.add_argument("--all", action="store_true", help="score every record, also those trained on")
    p.add_argument(
        "--transfer",
        action="store_true",
        help="leave-one-domain-out validation: retrain holding out each domain in turn",
    )
    p.set_defaults(handler=_guard(cmd_eval))
