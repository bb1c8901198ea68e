"""Reading JSONL files a user hands over (datasets for `train`, `score`, the simulator, the
demo): one reader, so every command treats a byte order mark, a line that is not UTF-8 and a
line that is not JSON the same way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["JsonlError", "read_jsonl"]


class JsonlError(ValueError):
    """A line of a JSONL file that is not UTF-8 text or not JSON."""

    def __init__(self, lineno: int, problem: str) -> None:
        super().__init__(f"line {lineno}: {problem}")
        self.lineno = lineno
        self.problem = problem


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) of each non-blank line of `path`; a UTF-8 byte order mark
    (some editors write one) is not data. JsonlError for a line that is not UTF-8 or not JSON;
    OSError when the file cannot be read."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise JsonlError(lineno, f"not UTF-8 text ({exc.reason})") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JsonlError(lineno, f"not JSON ({exc.msg})") from None
            yield lineno, value
