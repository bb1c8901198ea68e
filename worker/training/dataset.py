"""A routing dataset from outcomes: join decisions, responses and feedback (`routers.outcomes`),
keep the rows with enough models scored, and write them as JSONL (`schemas.DatasetRecord`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import schemas
from routers.outcomes import Answered, BuildStats, Label, ScoreRules, build_dataset, merge_answered

__all__ = ["build_rows", "write_jsonl"]


def build_rows(
    parts: Sequence[Answered], labels: Sequence[Label], rules: ScoreRules, min_models: int = 1
) -> tuple[list[dict[str, Any]], BuildStats, int]:
    """Join and score; returns (rows, stats, rows dropped for having < `min_models` scores)."""
    rows, stats = build_dataset(merge_answered(parts), labels, rules)
    kept = [r for r in rows if len(r["scores"]) >= min_models]
    return kept, stats, len(rows) - len(kept)


def write_jsonl(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            schemas.decode(json.dumps(row), schemas.DatasetRecord)  # the contract holds
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
