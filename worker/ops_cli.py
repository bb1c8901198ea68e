"""The operator's commands (implementations in `worker/ops/`):

    llmroute produce [FILE|-] [--rate N] [--limit N] [--tenant T]      feed the request topic
    llmroute tail [responses|decisions] [--tenant T --model M --status S] [--json]
    llmroute status [--group G] [--metrics-url URL ...] [--json]      lag, members, in flight
    llmroute dlq replay [--dry-run] [--error-type E] [--offsets A:B]   re-drive dead letters

Each takes `--config FILE` (the worker's TOML: its [kafka] section, TLS/SASL included, and its
[topics]) and/or `--bootstrap HOST:PORT` (default $KAFKA_BOOTSTRAP).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from worker.ops import dlq, produce, status, tail
from worker.ops.common import Connection, OpsError, add_connection_args, connection_from_args

_Runner = Callable[[argparse.Namespace, Connection], int]


def register(sub: Any) -> None:
    commands: tuple[tuple[str, Any, _Runner], ...] = (
        ("produce", produce, produce.run),
        ("tail", tail, tail.run),
        ("status", status, status.run),
        ("dlq replay", dlq, dlq.run),
    )
    for name, module, runner in commands:
        parser = module.register(sub, add_connection_args)
        parser.set_defaults(handler=_handler(name, runner))


def _handler(name: str, runner: _Runner) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        try:
            return runner(args, connection_from_args(args))
        except OpsError as exc:
            print(f"llmroute {name}: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130

    return handle
