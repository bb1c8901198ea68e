"""`llmroute judge`: LLM-as-judge feedback for the answers that have none.

    llmroute judge --config worker.toml --judge-model gpt-4o [--pairwise-model M] [--limit N]
        [--rubric FILE] [--pair-rubric FILE] [--name judge] [--concurrency 8] [--dry-run]

Reads decisions, responses and feedback from the topics, judges every answered request whose
answer has no feedback yet (so a rerun does not judge twice), and publishes one feedback event per
verdict to the feedback topic. `--pairwise-model M` also asks M for its own answer to each prompt
and publishes the pairwise result for both models. The rubrics and the parsing:
`worker.training.judge`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

import schemas
from worker.cli import COUNT, Subparsers, UserError
from worker.cli.dataset import read_outcomes
from worker.cli.kafka_args import add_kafka_args, connection_from_args
from worker.providers.client import ClientSettings, ModelClient
from worker.training.judge import (
    PAIR_RUBRIC,
    SINGLE_RUBRIC,
    Judge,
    JudgeSettings,
    judge_pending,
    unjudged,
)

__all__ = ["register"]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    if args.config is None:
        raise UserError("llmroute judge needs --config (the model catalogue and Kafka)")
    from worker import config as config_mod

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        raise UserError(str(exc)) from None
    conn = connection_from_args(args)
    kafka, topics = conn.kafka, conn.topics
    rubric = _template(args.rubric) if args.rubric else SINGLE_RUBRIC
    pair_rubric = _template(args.pair_rubric) if args.pair_rubric else PAIR_RUBRIC
    try:
        settings = JudgeSettings(
            model=args.judge_model, rubric=rubric, pair_rubric=pair_rubric, name=args.name
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    catalogue = cfg.models
    for m in (args.judge_model, args.pairwise_model):
        if m is not None and m not in catalogue:
            raise UserError(f"model {m!r} is not in the catalogue")
    got = await read_outcomes(args)
    pending = unjudged(got.decisions, got.responses, got.labels())
    if args.limit is not None:
        pending = pending[: args.limit]
    started = time.perf_counter()
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **kafka.common_kwargs())
    try:
        await producer.start()

        async def publish(event: schemas.Feedback) -> None:
            if args.dry_run:
                return
            key = (event.request_id or "").encode()
            await producer.send_and_wait(topics.feedback, schemas.encode(event), key=key)

        async with ModelClient(catalogue, ClientSettings()) as client:
            judge = Judge(client, settings)
            stats = await judge_pending(
                judge,
                pending,
                publish,
                pairwise_model=args.pairwise_model,
                concurrency=args.concurrency,
            )
    finally:
        await producer.stop()
    if args.dry_run:
        stats["published"] = 0
    return {
        "pending": len(pending),
        **stats,
        "seconds": round(time.perf_counter() - started, 3),
    }


def cmd_judge(args: argparse.Namespace) -> int:
    summary = asyncio.run(_run(args))
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


def _template(path: Path) -> str:
    """A rubric file's text (an unreadable file is the user's to fix, in one line)."""
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from None


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("judge", help="LLM-as-judge feedback for answers that have none")
    add_kafka_args(p, ("decisions", "responses", "feedback"), read_timeout=True)
    p.add_argument("--judge-model", required=True, help="catalogue model that judges")
    p.add_argument("--rubric", type=Path, help="single-answer rubric template file")
    p.add_argument("--pair-rubric", type=Path, help="pairwise rubric template file")
    p.add_argument("--pairwise-model", help="also answer with this model and compare the two")
    p.add_argument("--name", default="judge", help="feedback name of the scores")
    p.add_argument("--limit", type=COUNT, help="judge at most this many answers")
    p.add_argument("--concurrency", type=COUNT, default=8)
    p.add_argument("--dry-run", action="store_true", help="judge but publish nothing")
    p.set_defaults(handler=cmd_judge)
