"""In-memory training records and deterministic item splits. Parsing only; no file I/O."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from routers.errors import TrainingDataError
from routers.features import prompt_text

__all__ = [
    "Record",
    "data_sha256",
    "hash_bytes",
    "is_utf8",
    "item_keys",
    "record_from_obj",
    "source_of",
    "split_by_id",
    "valid_text",
]


@dataclass(frozen=True, slots=True)
class Record:
    """One labelled prompt: the text a router sees and each model's quality on it in [0, 1];
    optionally each model's answer text (cascade answer scorers train on those)."""

    id: str
    text: str
    scores: Mapping[str, float]
    costs: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    answers: Mapping[str, str] = field(default_factory=dict)


def record_from_obj(
    obj: Mapping[str, Any], *, include_system: bool = False, include_history: bool = False
) -> Record:
    """A `Record` from one decoded dataset line (`prompt` or `messages`, `scores`, ...)."""
    try:
        rid = str(obj["id"])
        if "prompt" in obj:
            text = str(obj["prompt"])
        else:
            text = prompt_text(
                obj["messages"], include_system=include_system, include_history=include_history
            )
        scores = {valid_text(str(k)): float(v) for k, v in obj["scores"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TrainingDataError(f"bad dataset record {obj.get('id', '?')!r}: {exc!r}") from exc
    for model, value in scores.items():
        if not 0.0 <= value <= 1.0:
            raise TrainingDataError(f"record {rid!r}: score {value} of {model!r} not in [0, 1]")
    costs = {valid_text(str(k)): float(v) for k, v in (obj.get("costs") or {}).items()}
    tags = {valid_text(str(k)): valid_text(str(v)) for k, v in (obj.get("tags") or {}).items()}
    answers = obj.get("answers") or {}
    if not isinstance(answers, Mapping) or not all(isinstance(v, str) for v in answers.values()):
        raise TrainingDataError(f"record {rid!r}: answers must map model names to texts")
    answers = {valid_text(str(k)): valid_text(v) for k, v in answers.items()}
    return Record(rid, valid_text(text), scores, costs, tags, answers)


def valid_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD. Valid JSON may escape half of a
    surrogate pair ("\\ud800"), and such a str cannot be encoded as UTF-8 (nor printed). Prompts,
    answers, model names and tags are read through it: what the router sees, as a worker would
    (its JSON decoder refuses lone surrogates). Ids are kept as given, so results join back."""
    if is_utf8(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def is_utf8(text: str) -> bool:
    """Whether `text` can be encoded as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def hash_bytes(text: str) -> bytes:
    """UTF-8 bytes of `text` for hashing; a lone surrogate (in an id or a tag) is kept as its
    own bytes, so distinct strings stay distinct, and valid text hashes as plain UTF-8."""
    return text.encode("utf-8", "surrogatepass")


def source_of(record: Record) -> str:
    """The source a record comes from: its `tags.benchmark` ("" without one)."""
    return str(record.tags.get("benchmark", ""))


def data_sha256(records: Sequence[Record]) -> str:
    """A hash of the training data (ids, texts, scores), independent of record order."""
    digest = hashlib.sha256()
    lines = sorted(
        json.dumps([r.id, r.text, sorted(r.scores.items())], ensure_ascii=False) for r in records
    )
    for line in lines:
        digest.update(hash_bytes(line))
        digest.update(b"\n")
    return digest.hexdigest()


def item_keys(records: Sequence[Record]) -> list[int]:
    """A 64-bit key per record (a hash of its id and text): stored with an artifact, it tells
    which records a router was trained on."""
    return [
        int.from_bytes(hashlib.sha256(hash_bytes(f"{r.id}\x00{r.text}")).digest()[:8], "big")
        for r in records
    ]


def split_by_id(ids: Sequence[str], test_fraction: float, salt: str = "") -> list[bool]:
    """True for the held-out items: a hash of salt + id, so the split never depends on order."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError("test_fraction must be in [0, 1]")
    cut = int(test_fraction * 10_000)
    out: list[bool] = []
    for item in ids:
        h = hashlib.sha256(hash_bytes(salt + item)).digest()
        out.append(int.from_bytes(h[:4], "big") % 10_000 < cut)
    return out
