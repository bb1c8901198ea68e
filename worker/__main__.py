"""`llmroute`: the command line. Each command group lives in its own module of `worker.cli` and
adds its subcommands through `register(subparsers)`; this module only wires them together and
prints a `UserError` as one line on stderr (see `worker.cli`)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from worker.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, Parser, UserError, version

# Modules that contribute subcommands, in the order `llmroute --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "worker.cli.routing",
    "worker.cli.sim",
    "worker.cli.run",
    "worker.cli.topics",
    "worker.cli.ops.produce",
    "worker.cli.ops.tail",
    "worker.cli.ops.status",
    "worker.cli.ops.dlq",
    "worker.cli.demo",
    "worker.cli.dataset",
    "worker.cli.judge",
    "worker.cli.retrain",
    "worker.cli.ab",
)

SHELLS = ("bash", "zsh", "tcsh")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="llmroute",
        description="Route LLM requests from Kafka to the cheapest model that will answer well.",
        epilog="Quickstart and the exit codes: README.md. `llmroute COMMAND --help` for each.",
    )
    parser.add_argument("--version", action="version", version=f"llmroute {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description='Load it in the current shell: eval "$(llmroute completion bash)"; or '
        "save it where your shell looks, e.g. ~/.local/share/bash-completion/completions/llmroute",
    )
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(handler=_completion)
    return parser


def _completion(args: argparse.Namespace) -> int:
    import shtab

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from aiokafka.errors import KafkaConnectionError

    from worker.cli.kafka_args import BROKER_HINT

    args = build_parser().parse_args(argv)
    # a command may name itself more precisely (`llmroute dlq show`) in its error line
    prog = getattr(args, "command_prog", None) or f"llmroute {args.command}"
    # aiokafka logs every failed connection attempt at ERROR, which Python prints when nothing
    # configured logging: a command reports the outcome itself (`run` sets up its own logs)
    kafka_log = logging.getLogger("aiokafka")
    quiet = not logging.getLogger().handlers and kafka_log.level == logging.NOTSET
    if quiet:
        kafka_log.setLevel(logging.CRITICAL)
    try:
        rc: int = args.handler(args)
    except UserError as exc:
        print(exc.line(prog), file=sys.stderr)
        return EXIT_USER_ERROR
    except KafkaConnectionError:  # commands without their own broker check (dataset, ab, ...)
        print(
            f"{prog}: cannot reach Kafka: no broker answered (hint: {BROKER_HINT})", file=sys.stderr
        )
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave: a fault to see whole
            raise
        print(f"{prog}: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        if quiet:
            kafka_log.setLevel(logging.NOTSET)
    return rc


if __name__ == "__main__":
    sys.exit(main())
