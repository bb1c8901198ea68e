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
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

import schemas
from routers.outcomes import Answered, BuildStats, Label, ScoreRules, build_dataset, merge_answered
from worker import config as config_mod
from worker.cli import Stages, next_hint
from worker.config.kafka import KafkaSettings, TopicSettings
from worker.providers.types import Secret
from worker.training.outcome_sources import (
    LangfuseApiError,
    LangfuseQuery,
    LangfuseSource,
    read_kafka_outcomes,
)

__all__ = [
    "CommandError",
    "add_kafka_args",
    "build_rows",
    "kafka_from_args",
    "register",
    "score_rules_from_args",
    "write_jsonl",
]


class CommandError(Exception):
    """A user-facing problem with a command's input; printed without a traceback."""


# ---------------------------------------------------------------- shared flags


def add_kafka_args(p: argparse.ArgumentParser, topics: Sequence[str]) -> None:
    """--config or --bootstrap, and one --NAME-topic flag per topic the command reads."""
    p.add_argument("--config", type=Path, help="worker TOML config ([kafka] and [topics])")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (without --config)")
    for name in topics:
        flag = name.replace("_", "-")
        p.add_argument(f"--{flag}-topic", dest=f"{name}_topic", help=f"the {name} topic")
    p.add_argument(
        "--read-timeout-s", type=float, default=30.0, help="give up when a read stalls this long"
    )


def kafka_from_args(args: argparse.Namespace) -> tuple[KafkaSettings, TopicSettings]:
    if args.config is not None:
        try:
            cfg = config_mod.load(args.config)
        except config_mod.ConfigError as exc:
            raise CommandError(str(exc)) from None
        kafka, topics = cfg.kafka, cfg.topics
    else:
        kafka, topics = KafkaSettings(), TopicSettings()
    if args.bootstrap:
        kafka = msgspec.structs.replace(kafka, bootstrap_servers=args.bootstrap)
    overrides = {
        name[: -len("_topic")]: value
        for name, value in vars(args).items()
        if name.endswith("_topic") and value
    }
    if overrides:
        topics = msgspec.structs.replace(topics, **overrides)
    return kafka, topics


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
            raise CommandError(f"bad --scale {spec!r}: use NAME=WORST:BEST") from None
    try:
        return ScoreRules(
            aggregate=args.aggregate,
            scales=scales,
            names=frozenset(args.name) if args.name else None,
            sources=frozenset(args.source) if args.source else None,
            source_priority=tuple(s for s in args.prefer.split(",") if s),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


# ---------------------------------------------------------------- the command


def build_rows(
    parts: Sequence[Answered], labels: Sequence[Label], rules: ScoreRules, min_models: int = 1
) -> tuple[list[dict[str, Any]], BuildStats, int]:
    """Join and score; returns (rows, stats, rows dropped for having < `min_models` scores)."""
    rows, stats = build_dataset(merge_answered(parts), labels, rules)
    kept = [r for r in rows if len(r["scores"]) >= min_models]
    return kept, stats, len(rows) - len(kept)


def write_jsonl(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            schemas.decode(json.dumps(row), schemas.DatasetRecord)  # the contract holds
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


async def _from_kafka(
    args: argparse.Namespace,
) -> tuple[list[Answered], list[Label], dict[str, Any]]:
    kafka, topics = kafka_from_args(args)
    got = await read_kafka_outcomes(
        kafka,
        decisions=topics.decisions,
        responses=topics.responses,
        feedback=topics.feedback,
        idle_timeout_s=args.read_timeout_s,
    )
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
        raise CommandError("give --langfuse-host (or set LANGFUSE_HOST)")
    keys = []
    for env in (args.langfuse_public_key_env, args.langfuse_secret_key_env):
        value = os.environ.get(env)
        if not value:
            raise CommandError(f"environment variable {env} (a Langfuse key) is not set")
        keys.append(Secret(value))
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            raise CommandError(f"bad --since {args.since!r}: use ISO 8601") from None
    query = LangfuseQuery(from_time=since, environment=args.langfuse_environment)
    try:
        async with LangfuseSource(host, keys[0], keys[1]) as source:
            parts, labels = await source.outcomes(query)
    except LangfuseApiError as exc:
        raise CommandError(str(exc)) from None
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


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            rc: int = fn(args)
        except CommandError as exc:
            sys.stderr.write(f"llmroute {args.command}: error: {exc}\n")
            return 2
        return rc

    return run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dataset", help="build routing datasets from outcomes (Kafka or Langfuse)")
    inner = p.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    b = inner.add_parser("build", help="join decisions, responses and feedback into JSONL")
    add_kafka_args(b, ("decisions", "responses", "feedback"))
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
    b.set_defaults(handler=_guard(cmd_build))
