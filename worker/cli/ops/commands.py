"""The operator's commands (implementations in `worker/cli/ops/`):

    llmroute produce [FILE|-] [--rate N] [--limit N] [--tenant T]      feed the request topic
    llmroute tail [responses|decisions|...] [--topic T] [--tenant T --model M --status S] [--json]
    llmroute status [--group G] [--metrics-url URL ...] [--json]      lag, members, in flight
    llmroute dlq list | show | purge | replay                          dead letters

Each takes `--config FILE` (the worker's TOML: its [kafka] section, TLS/SASL included, and its
[topics]) and/or `--bootstrap HOST:PORT` (default $KAFKA_BOOTSTRAP). Each checks that a broker
answers before doing anything else: an unreachable broker is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from worker.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError
from worker.cli.ops import dlq, produce, status, tail
from worker.cli.ops.common import (
    Connection,
    add_connection_args,
    connection_from_args,
    reach,
)

_Runner = Callable[[argparse.Namespace, Connection], int]


def register(sub: Any) -> None:
    commands: tuple[tuple[str, Any], ...] = (
        ("produce", produce),
        ("tail", tail),
        ("status", status),
    )
    for name, module in commands:
        parser = module.register(sub, add_connection_args)
        parser.set_defaults(handler=_handler(name, module.run))
    for name, parser, runner in dlq.register_all(sub, add_connection_args):
        parser.set_defaults(handler=_handler(f"dlq {name}", runner))


def _handler(name: str, runner: _Runner) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        try:
            conn = connection_from_args(args)
            asyncio.run(reach(conn.kafka))
            return runner(args, conn)
        except UserError as exc:
            print(exc.line(f"llmroute {name}"), file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED

    return handle
