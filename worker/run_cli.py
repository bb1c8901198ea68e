"""`llmroute run --config FILE`: one member of the routing worker's consumer group."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from typing import Any

from worker import config as config_mod
from worker.logs import setup_logging


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run", help="run one worker (a consumer-group member) until SIGTERM"
    )
    p.add_argument("--config", required=True, help="TOML configuration file")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from worker.app import serve

    setup_logging(args.log_level)  # JSON lines on stderr, API keys redacted
    # thousands of concurrent calls allocate many short-lived objects: with CPython's default
    # gen-0 threshold (700) collection took ~30% of client CPU (bench/provider_bench.py)
    gc.set_threshold(50_000, 50, 100)
    try:
        config = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"llmroute run: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(config))
