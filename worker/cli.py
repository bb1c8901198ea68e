"""What every `llmroute` command shares: the parser type, user errors, progress and hints.

A user error (a missing file, a bad value, a broker that does not answer) ends a command with
one line on stderr and exit status 2:

    llmroute run: cannot reach Kafka at 127.0.0.1:19092 (hint: start one with `make kafka-up`)

Commands raise `UserError` (or a command group's own error type, mapped in `worker.__main__`);
nothing else is printed, no traceback. `EXIT_USER_ERROR` is documented in the README.

`Stages` prints what a long command is doing, one line per stage with its duration, on stderr
(stdout stays for the command's result): `train: featurising 6,640 prompts ... 3.1 s`.
`next_hint` prints the command a user most likely runs next.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, NoReturn

__all__ = [
    "EXIT_CHECK_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "Parser",
    "Stages",
    "UserError",
    "next_hint",
    "version",
]

EXIT_CHECK_FAILED = 1  # `run --check` found a problem; a command's own failure
EXIT_USER_ERROR = 2  # bad usage, configuration, input file, unreachable broker
EXIT_INTERRUPTED = 130


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
    """One line per stage of a long command, with how long it took, on `stream` (stderr).

    with Stages("train") as st:
        with st.stage(f"featurising {n:,} prompts"):
            ...
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

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def note(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"{self.command}: {text}\n")
            with contextlib.suppress(OSError, ValueError):
                self.stream.flush()

    @contextlib.contextmanager
    def stage(self, text: str) -> Iterator[None]:
        """Prints `text ...` when the stage starts and its duration when it ends."""
        start = self.clock()
        if self.enabled:
            self.stream.write(f"{self.command}: {text} ...")
            with contextlib.suppress(OSError, ValueError):
                self.stream.flush()
        try:
            yield
        except BaseException:
            if self.enabled:
                self.stream.write(" failed\n")
            raise
        if self.enabled:
            self.stream.write(f" {self.clock() - start:.1f} s\n")
            with contextlib.suppress(OSError, ValueError):
                self.stream.flush()

    def begin(self, text: str) -> None:
        """Start a stage without a `with` block (`end()` closes it)."""
        self._begun = self.clock()
        if self.enabled:
            self.stream.write(f"{self.command}: {text} ...")
            with contextlib.suppress(OSError, ValueError):
                self.stream.flush()

    def end(self, text: str = "") -> None:
        if self.enabled:
            extra = f" {text}," if text else ""
            self.stream.write(f"{extra} {self.clock() - self._begun:.1f} s\n")
            with contextlib.suppress(OSError, ValueError):
                self.stream.flush()

    def done(self, text: str = "done") -> None:
        self.note(f"{text} in {self.clock() - self.started:.1f} s")


def version() -> str:
    """The installed package's version ("0+unknown" when run from an uninstalled tree)."""
    from importlib import metadata

    try:
        return metadata.version("llm-routing-worker")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def next_hint(command: str, stream: IO[str] | None = None) -> None:
    """`next: COMMAND` on stderr: the step a user most likely takes after this one."""
    (sys.stderr if stream is None else stream).write(f"next: {command}\n")
