"""``llmroute sim-provider``: run the local provider simulator until interrupted
(`worker.sim.serve`)."""

from __future__ import annotations

import argparse
import asyncio

from worker.cli import COUNT, FRACTION, PORT, Subparsers, UserError, number_in
from worker.sim import Dataset, Fault, Latency, RateLimit, SimConfig
from worker.sim.serve import serve_until_stopped


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "sim-provider",
        help="run the local OpenAI/Anthropic provider simulator",
        description=(
            "A local HTTP server speaking OpenAI Chat Completions/Files/Batches and Anthropic "
            "Messages/Message Batches. OpenAI base_url: http://127.0.0.1:PORT/v1; Anthropic "
            "base_url: http://127.0.0.1:PORT. See worker/sim/config.py for --latency/--fault."
        ),
    )
    p.add_argument("--port", type=PORT, default=8089, help="TCP port on 127.0.0.1 (0: any free)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--data", help="routing-dataset JSONL to replay (answers follow its scores)")
    p.add_argument(
        "--latency", default="fixed:0", help="fixed:MS | uniform:LO:HI | lognormal:MEDIAN:SIGMA"
    )
    p.add_argument("--fault", action="append", default=[], help="e.g. 429:0.1, 500@1,2, reset:0.01")
    p.add_argument(
        "--per-token-ms",
        type=number_in(0.0, 60_000.0),
        default=0.0,
        help="added per output token",
    )
    p.add_argument("--rpm", type=COUNT, help="requests per minute; beyond: 429 + x-ratelimit-*")
    p.add_argument("--tpm", type=COUNT, help="tokens per minute (prompt + max_tokens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--default-accuracy", type=FRACTION, default=0.7)
    p.add_argument(
        "--alias", action="append", default=[], help="MODEL=DATASET_MODEL (replay another's labels)"
    )
    p.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    aliases = dict(SimConfig().aliases)
    for item in args.alias:
        model, sep, target = item.partition("=")
        if not sep:
            raise ValueError(f"bad --alias {item!r}: use MODEL=DATASET_MODEL")
        aliases[model] = target
    return SimConfig(
        latency=Latency.parse(args.latency),
        faults=tuple(Fault.parse(f) for f in args.fault),
        seed=args.seed,
        default_accuracy=args.default_accuracy,
        aliases=aliases,
        per_output_token_ms=args.per_token_ms,
        rate_limit=RateLimit(args.rpm, args.tpm) if args.rpm or args.tpm else None,
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        raise UserError(str(exc), "llmroute sim-provider --help") from None
    try:
        dataset = Dataset.from_jsonl(args.data) if args.data else None
    except OSError as exc:
        raise UserError(f"cannot read {args.data}: {exc.strerror}") from None
    except ValueError as exc:  # not UTF-8, not JSON, or a row it cannot use
        raise UserError(f"bad dataset {args.data}: {exc}") from None
    asyncio.run(serve_until_stopped(config, dataset, host=args.host, port=args.port))
    return 0
