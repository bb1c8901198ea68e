"""`llmroute dataset build`: a routing dataset (JSONL) from the worker's outcomes.

    llmroute dataset build --config worker.toml --out data.jsonl [--aggregate mean|latest]
        [--scale stars=1:5] [--source user --source task] [--prefer user,task,judge]
    llmroute dataset build --bootstrap 127.0.0.1:19092 --out data.jsonl     # default topic names
    llmroute dataset build --from-langfuse --langfuse-host https://cloud.langfuse.com --out d.jsonl

Kafka: reads `llm.decisions`, `llm.responses` and `llm.feedback` (names from the config's
`[topics]`, or the flags) from their beginnings to their current ends. Langfuse: reads
generations and scores through the public API with the key pair named by
`--langfuse-public-key-env` / `--langfuse-secret-key-env` (default LANGFUSE_PUBLIC_KEY /
LANGFUSE_SECRET_KEY). The join and scoring rules are `routers.outcomes`; the command prints what
it kept and skipped as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from routers.outcomes import Answered, Label, ScoreRules
from worker.cli import Stages, Subparsers, UserError, next_hint
from worker.cli.kafka_args import add_kafka_args, connection_from_args
from worker.providers.types import Secret
from worker.training.dataset import build_rows, write_jsonl
from worker.training.outcome_sources import (
    KafkaOutcomes,
    LangfuseApiError,
    LangfuseQuery,
    LangfuseSource,
    read_kafka_outcomes,
)

__all__ = ["add_score_args", "read_outcomes", "register", "score_rules_from_args"]


def add_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--aggregate",
        choices=("mean", "latest"),
        default="mean",
        help="several feedbacks for one answer: their mean, or the latest",
    )
    p.add_argument(
        "--scale",
        action="append",
        default=[],
        metavar="NAME=WORST:BEST",
        help="numeric feedback NAME on this scale, e.g. stars=1:5 (repeatable)",
    )
    p.add_argument(
        "--source",
        action="append",
        choices=("user", "task", "judge", "system"),
        help="use only feedback from these sources (repeatable; default all)",
    )
    p.add_argument("--name", action="append", help="use only feedback with these names")
    p.add_argument(
        "--prefer",
        default="",
        help="comma-separated source ranking, e.g. user,task,judge: per answer only the "
        "best-ranked source present counts",
    )


def score_rules_from_args(args: argparse.Namespace) -> ScoreRules:
    scales: dict[str, tuple[float, float]] = {}
    for spec in args.scale:
        name, sep, rng = spec.partition("=")
        worst, sep2, best = rng.partition(":")
        try:
            if not (sep and sep2 and name):
                raise ValueError
            scales[name] = (float(worst), float(best))
        except ValueError:
            raise UserError(f"bad --scale {spec!r}: use NAME=WORST:BEST") from None
    try:
        return ScoreRules(
            aggregate=args.aggregate,
            scales=scales,
            names=frozenset(args.name) if args.name else None,
            sources=frozenset(args.source) if args.source else None,
            source_priority=tuple(s for s in args.prefer.split(",") if s),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


async def read_outcomes(args: argparse.Namespace) -> KafkaOutcomes:
    """Decisions, responses and feedback from the topics `add_kafka_args`'s flags name."""
    conn = connection_from_args(args)
    return await read_kafka_outcomes(
        conn.kafka,
        decisions=conn.topics.decisions,
        responses=conn.topics.responses,
        feedback=conn.topics.feedback,
        idle_timeout_s=args.read_timeout_s,
    )


async def _from_kafka(
    args: argparse.Namespace,
) -> tuple[list[Answered], list[Label], dict[str, Any]]:
    got = await read_outcomes(args)
    info = {
        "source": "kafka",
        "decisions": len(got.decisions),
        "responses": len(got.responses),
        "feedback": len(got.feedback),
        "invalid_records": got.invalid,
    }
    return got.parts(), got.labels(), info


async def _from_langfuse(
    args: argparse.Namespace,
) -> tuple[list[Answered], list[Label], dict[str, Any]]:
    host = (
        args.langfuse_host or os.environ.get("LANGFUSE_HOST") or os.environ.get("LANGFUSE_BASE_URL")
    )
    if not host:
        raise UserError("give --langfuse-host (or set LANGFUSE_HOST)")
    keys = []
    for env in (args.langfuse_public_key_env, args.langfuse_secret_key_env):
        value = os.environ.get(env)
        if not value:
            raise UserError(f"environment variable {env} (a Langfuse key) is not set")
        keys.append(Secret(value))
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            raise UserError(f"bad --since {args.since!r}: use ISO 8601") from None
    query = LangfuseQuery(from_time=since, environment=args.langfuse_environment)
    try:
        async with LangfuseSource(host, keys[0], keys[1]) as source:
            parts, labels = await source.outcomes(query)
    except LangfuseApiError as exc:
        raise UserError(str(exc)) from None
    return parts, labels, {"source": "langfuse", "generations": len(parts), "scores": len(labels)}


def cmd_build(args: argparse.Namespace) -> int:
    rules = score_rules_from_args(args)
    reader = _from_langfuse if args.from_langfuse else _from_kafka
    progress = Stages("dataset build")
    progress.begin(
        "reading " + ("Langfuse" if args.from_langfuse else "decisions, responses, feedback")
    )
    parts, labels, info = asyncio.run(reader(args))
    progress.end()
    progress.begin("joining and scoring")
    rows, stats, dropped = build_rows(parts, labels, rules, args.min_models)
    write_jsonl(rows, args.out)
    progress.end(f"{len(rows):,} rows written to {args.out}")
    summary = {
        **info,
        **stats.to_dict(),
        "dropped_min_models": dropped,
        "written": len(rows),
        "out": str(args.out),
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    next_hint(f"llmroute retrain --data {args.out} --registry DIR [--publish --config FILE]")
    return 0


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "dataset", help="build routing datasets from outcomes (Kafka or Langfuse)"
    )
    inner = p.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    b = inner.add_parser("build", help="join decisions, responses and feedback into JSONL")
    add_kafka_args(b, ("decisions", "responses", "feedback"), read_timeout=True)
    add_score_args(b)
    b.add_argument("--out", type=Path, required=True, help="dataset JSONL to write")
    b.add_argument(
        "--min-models",
        type=int,
        default=1,
        choices=(1, 2),
        help="keep records with at least this many models scored (2: only pairs)",
    )
    b.add_argument("--from-langfuse", action="store_true", help="read Langfuse, not Kafka")
    b.add_argument("--langfuse-host", help="Langfuse base URL (default: $LANGFUSE_HOST)")
    b.add_argument("--langfuse-public-key-env", default="LANGFUSE_PUBLIC_KEY")
    b.add_argument("--langfuse-secret-key-env", default="LANGFUSE_SECRET_KEY")
    b.add_argument("--langfuse-environment", help="only this Langfuse environment")
    b.add_argument("--since", help="only outcomes from this time on (ISO 8601)")
    b.set_defaults(handler=cmd_build)
