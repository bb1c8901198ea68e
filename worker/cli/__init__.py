"""`llmroute`'s commands, and what every one of them shares: the parser type, the one user-error
type, progress and hints.

    __init__.py    Parser, UserError, Stages, next_hint, version, the exit codes
    kafka_args.py  --config / --bootstrap / --NAME-topic: where a command finds Kafka
    routing.py     train, score, calibrate, eval          run.py       run (one member)
    sim.py         sim-provider                           topics.py    topics create
    ops/           produce, tail, status, dlq             demo.py      demo
    dataset.py     dataset build                          judge.py     judge
    retrain.py     retrain                                ab.py        ab report

Each command module adds its subcommands with `register(subparsers)` (`worker.__main__` lists the
modules) and sets `handler`, a function of the parsed arguments returning the exit status.

A user error (a missing file, a bad value, a broker that does not answer) ends a command with
one line on stderr and exit status 2:

    llmroute run: cannot reach Kafka at 127.0.0.1:19092 (hint: start one with `make kafka-up`)

Commands raise `UserError`, the only error type of the CLI, and `worker.__main__` prints it;
nothing else is printed, no traceback. `EXIT_USER_ERROR` is documented in the README. Like
`worker.config.ConfigError`, it is not a `worker.errors.WorkerError`: it never reaches the wire.

`Stages` prints what a long command is doing on stderr (stdout stays for the command's result):
a line when a stage starts and one with its duration when it ends
(`train: training classifier on 2,267 prompts ...`, `train: ... 59.2 s`).
`next_hint` prints the command a user most likely runs next.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any, NoReturn, TypeAlias

__all__ = [
    "COUNT",
    "EXIT_CHECK_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "FRACTION",
    "PORT",
    "POSITIVE",
    "Parser",
    "Stages",
    "Subparsers",
    "UserError",
    "count_from",
    "finite",
    "next_hint",
    "number_in",
    "version",
]

EXIT_CHECK_FAILED = 1  # `run --check` found a problem; a command's own failure
EXIT_USER_ERROR = 2  # bad usage, configuration, input file, unreachable broker
EXIT_INTERRUPTED = 130

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `register(subparsers)` of every command module takes."""


def number_in(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] ((low, high] with `low_open`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = (low < value if low_open else low <= value) and value <= high
        if not math.isfinite(value) or not inside:
            bound = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"{text} is not in {bound}")
        return value

    return parse


def count_from(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number >= low (and <= high)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is less than {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} is more than {high}")
        return value

    return parse


# argparse types of the bounds most flags share
PORT = count_from(0, 65_535)  # a TCP port (0: any free one)
COUNT = count_from(1)  # how many: at least one
FRACTION = number_in(0.0, 1.0)  # a share, in [0, 1]
POSITIVE = number_in(0.0, math.inf, low_open=True)  # a rate or a time: finite and above 0


class UserError(Exception):
    """A problem the user can fix; printed as one line with `hint`, never with a traceback."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def line(self, prog: str) -> str:
        return f"{prog}: {self}" + (f" (hint: {self.hint})" if self.hint else "")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and shows each option's default when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or action.option_strings == []
            or text == argparse.SUPPRESS
        ):
            return action.help
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` that shows defaults in --help and reports a usage error as one
    line with a hint (argparse prints the whole usage block first)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["formatter_class"] = _HelpFormatter
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (hint: {self.prog} --help)\n")
        raise SystemExit(EXIT_USER_ERROR)


class Stages:
    """What a long command is doing, stage by stage, on `stream` (stderr).

    progress = Stages("train")
    progress.begin(f"training on {n:,} prompts")
    ...
    progress.end()
    """

    def __init__(
        self,
        command: str,
        *,
        stream: IO[str] | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = command
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.clock = clock
        self.started = clock()
        self._begun = self.started

    def note(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"{self.command}: {text}\n")
            with contextlib.suppress(OSError, ValueError):
                self.stream.flush()

    def begin(self, text: str) -> None:
        """A stage starts: `train: training ... on 2,267 prompts ...` (a whole line, so an error
        printed before `end()` never lands in the middle of it)."""
        self._begun = self.clock()
        self.note(f"{text} ...")

    def end(self, text: str = "") -> None:
        """The stage ended: `train: ... 2,830 records, 0.1 s`."""
        self.note(f"... {text + ', ' if text else ''}{self.clock() - self._begun:.1f} s")


def version() -> str:
    """The installed package's version ("0+unknown" when run from an uninstalled tree)."""
    from importlib import metadata

    try:
        return metadata.version("llm-routing-worker")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def next_hint(command: str, stream: IO[str] | None = None) -> None:
    """`next: COMMAND` on stderr: the step a user most likely takes after this one (not when
    `LLMROUTE_NO_HINTS` is set, e.g. for a command run by another)."""
    if not os.environ.get("LLMROUTE_NO_HINTS"):
        (sys.stderr if stream is None else stream).write(f"next: {command}\n")


def finite(data: Any) -> Any:
    """`data` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data
