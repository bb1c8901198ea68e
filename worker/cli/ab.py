"""`llmroute ab report`: compare A/B arms from the decisions, responses and feedback topics.

    llmroute ab report --config worker.toml [--by arm|router_version|policy] [--baseline ARM]
        [--confidence 0.95] [--scale stars=1:5] [--source user] [--json]

The arm of a request is the `arm` its decision recorded (`--by router_version` or `policy`
compares those instead, e.g. before and after a promotion). Per arm: n, cost per request,
quality (mean normalised feedback on the answer the user got), error rate, latency p50/p99, each
with a confidence interval, and the differences from the baseline arm (`routers.ab`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from typing import Any

from routers.ab import arm_samples, compare_arms
from routers.outcomes import label_scores, merge_answered
from worker.cli import Subparsers, UserError
from worker.cli.dataset import add_score_args, read_outcomes, score_rules_from_args
from worker.cli.kafka_args import add_kafka_args

__all__ = ["register", "report"]


async def report(args: argparse.Namespace) -> dict[str, Any]:
    rules = score_rules_from_args(args)
    got = await read_outcomes(args)
    answered = merge_answered(got.parts())
    scores, stats = label_scores(answered, got.labels(), rules)
    samples, unassigned = arm_samples(answered, scores, by=args.by)
    try:
        result = compare_arms(samples, args.baseline, args.confidence, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    result["by"] = args.by
    result["requests_without_arm"] = unassigned
    result["feedback"] = {k: v for k, v in stats.to_dict().items() if k.startswith("labels")}
    return result


def _text(result: dict[str, Any]) -> str:
    def fmt(i: dict[str, Any], scale: float = 1.0, digits: int = 4) -> str:
        if i["estimate"] is None:
            return "-"
        est = f"{i['estimate'] * scale:.{digits}f}"
        if i["low"] is None:
            return est
        return f"{est} [{i['low'] * scale:.{digits}f}, {i['high'] * scale:.{digits}f}]"

    lines = [f"arms by {result['by']} (baseline {result['baseline']}, {result['confidence']:.0%})"]
    for name, a in result["arms"].items():
        lines.append(
            f"{name}: n={a['n']} cost/req ${fmt(a['cost_per_request_usd'], digits=6)} "
            f"quality {fmt(a['quality'])} (n={a['quality']['n']}) "
            f"errors {fmt(a['error_rate'])} p50 {fmt(a['latency_p50_ms'], digits=1)} ms "
            f"p99 {fmt(a['latency_p99_ms'], digits=1)} ms"
        )
    for name, d in result["vs_baseline"].items():
        lines.append(
            f"{name} - {result['baseline']}: cost {fmt(d['cost_per_request_usd'], digits=6)}"
            f"{' *' if d['cost_significant'] else ''}, quality {fmt(d['quality'])}"
            f"{' *' if d['quality_significant'] else ''}"
        )
    return "\n".join(lines) + "\n"


def cmd_report(args: argparse.Namespace) -> int:
    if not 0.5 <= args.confidence < 1.0 or math.isnan(args.confidence):
        raise UserError("--confidence must be in [0.5, 1)")
    result = asyncio.run(report(args))
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2, allow_nan=False) + "\n")
    else:
        sys.stdout.write(_text(result))
    return 0


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("ab", help="A/B experiments: compare arms with confidence intervals")
    inner = p.add_subparsers(dest="ab_command", required=True, metavar="ACTION")
    r = inner.add_parser("report", help="per-arm cost, quality and latency, with intervals")
    add_kafka_args(r, ("decisions", "responses", "feedback"), read_timeout=True)
    add_score_args(r)
    r.add_argument("--by", choices=("arm", "router_version", "policy"), default="arm")
    r.add_argument("--baseline", help="the arm others are compared with (default: the largest)")
    r.add_argument("--confidence", type=float, default=0.95)
    r.add_argument("--seed", type=int, default=0, help="bootstrap seed (latency intervals)")
    r.add_argument("--json", action="store_true", help="print the full report as JSON")
    r.set_defaults(handler=cmd_report)
