"""`llmroute`: the command line. Each command group lives in its own module and adds its
subcommands through `register(subparsers)`; this module only wires them together."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute subcommands, in the order `llmroute --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "worker.routing_cli",
    "worker.provider_cli",
    "worker.run_cli",
    "worker.ops_cli",
    "worker.demo",
    "worker.dataset_cli",
    "worker.judge",
    "worker.retrain_cli",
    "worker.ab_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmroute",
        description="Route LLM requests from Kafka to the cheapest model that will answer well.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.handler(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
