"""`llmroute retrain`: train a router version from outcomes and promote it if it is as good.

    llmroute retrain --data outcomes.jsonl --registry routers/ [--current DIR]
        [--quality-ratio 0.95 | --strong-fraction 0.3] [--tolerance 0] [--min-eval 50]
        [--publish --config worker.toml]

The registry (a folder of versioned artifacts and a `CURRENT` file naming the promoted one) is
`worker.training.registry`; training, the comparison and promotion are `worker.training.retrain`.
With `--publish`, a promotion also publishes a `reload_router` Control event (artifact path and
version) to the control topic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from routers.errors import RoutingError
from routers.promotion import CostTarget
from routers.training import DEFAULT_ROUTER, ROUTER_NAMES
from worker.cli import COUNT, FRACTION, Stages, Subparsers, UserError, finite, next_hint, number_in
from worker.cli.kafka_args import add_kafka_args, connection_from_args
from worker.cli.routing import read_records
from worker.training.retrain import RetrainOptions, publish_reload, retrain

__all__ = ["register"]


def cmd_retrain(args: argparse.Namespace) -> int:
    if args.strong_fraction is not None and args.quality_ratio is not None:
        raise UserError("give --strong-fraction or --quality-ratio, not both")
    try:
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
            conn = connection_from_args(args)
            event = asyncio.run(
                publish_reload(
                    conn.kafka,
                    conn.topics.control,
                    report["artifact_path"],
                    report["version"],
                    report["verdict"]["reason"],
                )
            )
            report["control_command_id"] = event.command_id
    except (RoutingError, ValueError) as exc:  # the data, or the registry (RegistryError)
        raise UserError(str(exc)) from None
    sys.stdout.write(json.dumps(finite(report), indent=2, allow_nan=False) + "\n")
    if report["promoted"] and not args.publish:
        next_hint("members with router.watch_s > 0 load it; or rerun with --publish --config FILE")
    return 0


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "retrain", help="train a router version from outcomes; promote it if it is as good"
    )
    p.add_argument("--data", type=Path, action="append", required=True, help="dataset JSONL")
    p.add_argument("--registry", type=Path, required=True, help="folder of router versions")
    p.add_argument("--current", type=Path, help="artifact to beat (default: the registry's)")
    p.add_argument("--router", default="default", choices=("default", *ROUTER_NAMES))
    p.add_argument("--strong", help="strong model (default: the current router's)")
    p.add_argument("--weak", help="weak model (default: the current router's)")
    p.add_argument("--holdout", type=FRACTION, default=0.2, help="held-out fraction (id hash)")
    p.add_argument("--split-salt", default="retrain")
    p.add_argument("--strong-fraction", type=FRACTION, help="cost target: this strong-call share")
    p.add_argument(
        "--quality-ratio",
        type=number_in(0.0, 1.0, low_open=True),
        help="cost target: this share of always-strong quality",
    )
    p.add_argument(
        "--tolerance",
        type=FRACTION,
        default=0.0,
        help="allowed shortfall at the target",
    )
    p.add_argument("--min-eval", type=COUNT, default=50, help="held-out records needed to decide")
    p.add_argument("--keep-rejected", action="store_true", help="save rejected candidates too")
    p.add_argument(
        "--calibrate-on",
        choices=("all", "heldout"),
        default="all",
        help="prompts for the strong-fraction thresholds: every outcome record (default; ~5x "
        "more prompts than the held-out slice, so the deployed share lands nearer the target) "
        "or the held-out slice only",
    )
    p.add_argument("--publish", action="store_true", help="publish reload_router on promotion")
    add_kafka_args(p, ("control",), read_timeout=True)
    p.set_defaults(handler=cmd_retrain)
