"""The simulated models: token accounting, deterministic answers, dataset replay, grading.

Tokens: ``ceil(len(text) / 4)`` per text (OpenAI's rule of thumb) + 3 per message + 3.

Dataset replay: rows ``{"id", "prompt" | "messages", "scores": {model: 0..1}, "tags"}``. A
request is matched to a row by the exact text of its last user message (the row's ``prompt``,
or the last user message of its ``messages``), or else by an ``x-sim-item-id`` request header
holding the row ``id``. For a matched row and a model the row scores (after ``aliases``), the
answer is correct exactly when the score is >= 0.5; otherwise correctness is drawn (seeded by
the prompt and model) with ``default_accuracy``.

Answers look alike whether right or wrong: a seeded rationale of 8-40 words, then
``The answer is X.`` and a ``[ref:xxxxxxxx]`` marker. Right answers give the prompt's canonical
option letter (the same for every model, as true answers agree); wrong ones another letter. The
marker is an HMAC (key ``SimConfig.answer_key``) of the prompt, letter and correctness, so an
evaluator holding the key tells right from wrong with :func:`grade`, while a cascade scorer
without it sees answers of one style. Log-probs, when asked for, are only noisily correlated
with correctness: the answer letter's probability is ``sigmoid(0.8 * (+1 right, -1 wrong) +
N(0, 1.2))``, seeded; other tokens get small seeded log-probs.

Judging: a request whose last user message embeds answers between MT-Bench's delimiters
(``[The Start of Assistant's Answer]`` ... ``[The End of Assistant's Answer]`` after a
``[Question]`` block; or Assistant A's and B's answers after ``[User Question]``, the templates of
``training.judge``) is answered as a judge. The simulator grades each embedded answer against the
question with its own key (:func:`grade`: this is the simulated judge's "knowledge"), then errs on
purpose: its verdict agrees with the grade with probability ``judge_accuracy`` (seeded by the judge
model and prompt), otherwise it is flipped. A single answer gets ``Rating: [[r]]`` with r in 7-10
when judged right, 1-4 when judged wrong, 5 when the answer cannot be graded (not a simulator
answer). A pair gets ``[[A]]`` or ``[[B]]`` when one answer is right and the other wrong; an even
pair (both right, both wrong, ungradable) gets ``[[A]]`` (the first position) with probability
``judge_position_bias``, else ``[[C]]`` (tie): the position bias that asking both orders cancels.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.jsonl import read_jsonl
from worker.sim.config import SimConfig

_TEXT = (
    "considering the options carefully the key fact here is that this follows from the "
    "definition so we can rule out the others because they contradict the premise and the "
    "remaining choice is consistent with standard results in the field therefore"
)
_WORDS = tuple(_TEXT.split(" "))
_OPTION = re.compile(r"^([A-J])\.\s", re.MULTILINE)
_TOKEN = re.compile(r"\s*\S+")
_REF = re.compile(r"\[ref:([0-9a-f]{8})\]")


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def anthropic_system_text_or_empty(system: Any) -> str:
    """Anthropic's top-level ``system``: a string or a list of text blocks."""
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
    return ""


def input_tokens(messages: Sequence[Mapping[str, Any]], system: str = "") -> int:
    total = 3 + (estimate_tokens(system) + 3 if system else 0)
    for m in messages:
        total += 3 + estimate_tokens(content_text(m.get("content")))
    return total


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return content_text(m.get("content"))
    return ""


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    prompt: str
    scores: Mapping[str, float]


class Dataset:
    """Routing-dataset rows indexed by prompt text and by id."""

    def __init__(self, rows: Iterable[Row] = ()):
        self.by_prompt: dict[str, Row] = {}
        self.by_id: dict[str, Row] = {}
        for row in rows:
            self.by_prompt[row.prompt] = row
            self.by_id[row.id] = row

    def __len__(self) -> int:
        return len(self.by_id)

    @staticmethod
    def row_from_json(obj: Mapping[str, Any]) -> Row:
        prompt = obj.get("prompt")
        if prompt is None:
            prompt = last_user_text(obj.get("messages") or [])
        return Row(
            id=str(obj["id"]),
            prompt=str(prompt),
            scores={str(k): float(v) for k, v in (obj.get("scores") or {}).items()},
        )

    @classmethod
    def from_jsonl(cls, path: str | Path) -> Dataset:
        """Rows of a routing-dataset JSONL file; ValueError naming the line of a bad one."""
        rows = []
        for lineno, obj in read_jsonl(path):  # JsonlError (a ValueError) names its line
            try:
                rows.append(cls.row_from_json(obj))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"line {lineno}: {exc!r}") from None
        return cls(rows)

    def lookup(self, prompt: str, item_id: str | None = None) -> Row | None:
        row = self.by_prompt.get(prompt)
        if row is None and item_id:
            row = self.by_id.get(item_id)
        return row


_JUDGE_SINGLE = re.compile(
    r"\[Question\]\n(?P<q>.*?)\n\n\[The Start of Assistant's Answer\]\n(?P<a>.*?)\n"
    r"\[The End of Assistant's Answer\]",
    re.DOTALL,
)
_JUDGE_PAIR = re.compile(
    r"\[User Question\]\n(?P<q>.*?)\n\n\[The Start of Assistant A's Answer\]\n(?P<a>.*?)\n"
    r"\[The End of Assistant A's Answer\]\n\n\[The Start of Assistant B's Answer\]\n(?P<b>.*?)\n"
    r"\[The End of Assistant B's Answer\]",
    re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    output_tokens: int
    finish: str  # "stop" | "length" | "stop_sequence"
    stop_sequence: str | None
    correct: bool | None
    tokens: tuple[TokenInfo, ...] | None


def _h(*parts: object) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _letters(prompt: str) -> list[str]:
    found = _OPTION.findall(prompt)
    return sorted(set(found)) if len(set(found)) >= 2 else ["A", "B", "C", "D"]


def _marker(key: str, prompt: str, letter: str, correct: bool) -> str:
    msg = f"{hashlib.sha256(prompt.encode()).hexdigest()}|{letter}|{int(correct)}"
    return hmac.new(key.encode(), msg.encode(), hashlib.sha256).hexdigest()[:8]


def grade(answer_text: str, prompt: str, answer_key: str = "llmroute-sim") -> bool | None:
    """True/False when ``answer_text`` carries a valid marker for ``prompt``; None otherwise
    (truncated answer, not from this simulator, or another key)."""
    ref = _REF.search(answer_text)
    letter = re.search(r"The answer is ([A-J])\.", answer_text)
    if ref is None or letter is None:
        return None
    for correct in (True, False):
        if hmac.compare_digest(_marker(answer_key, prompt, letter.group(1), correct), ref.group(1)):
            return correct
    return None


class Answerer:
    def __init__(self, config: SimConfig, dataset: Dataset | None = None):
        self.config = config
        self.dataset = dataset or Dataset()
        self._prefix_cache: OrderedDict[int, None] = OrderedDict()

    def is_correct(self, model: str, prompt: str, item_id: str | None) -> bool:
        row = self.dataset.lookup(prompt, item_id)
        name = self.config.aliases.get(model, model)
        if row is not None and name in row.scores:
            return row.scores[name] >= 0.5
        unit = _h(self.config.seed, "acc", model, prompt) / 2.0**64
        return unit < self.config.default_accuracy

    def cached_tokens(self, messages: Sequence[Mapping[str, Any]], system: str, total: int) -> int:
        """Prompt-cache simulation: a request of >= 1024 tokens whose prefix (all but the last
        message) was seen before reads that prefix from cache, in 128-token steps."""
        if total < 1024 or len(messages) + bool(system) < 2:
            return 0
        prefix = messages[:-1]
        key = _h(system, json.dumps(list(prefix), sort_keys=True, default=str))
        prefix_tokens = input_tokens(prefix, system)
        if key in self._prefix_cache:
            self._prefix_cache.move_to_end(key)
            return (prefix_tokens // 128) * 128 if prefix_tokens >= 1024 else 0
        self._prefix_cache[key] = None
        if len(self._prefix_cache) > 100_000:
            self._prefix_cache.popitem(last=False)
        return 0

    def answer(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None,
        stop: Sequence[str] = (),
        logprobs: bool = False,
        top_logprobs: int = 0,
        item_id: str | None = None,
    ) -> Answer:
        prompt = last_user_text(messages)
        verdict = self._judge(model, prompt)
        if verdict is not None:
            return self._finish(verdict, stop, max_tokens, None)
        correct = self.is_correct(model, prompt, item_id)
        letters = _letters(prompt)
        canonical = letters[_h(self.config.seed, "key", prompt) % len(letters)]
        if correct:
            letter = canonical
        else:
            others = [x for x in letters if x != canonical]
            letter = others[_h(self.config.seed, "wrong", model, prompt) % len(others)]
        rng = random.Random(_h(self.config.seed, "text", model, prompt))
        n_words = rng.randint(8, 40)
        rationale = " ".join(rng.choice(_WORDS) for _ in range(n_words)).capitalize() + "."
        marker = _marker(self.config.answer_key, prompt, letter, correct)
        text = f"{rationale} The answer is {letter}. [ref:{marker}]"
        answer = self._finish(text, stop, max_tokens, correct)
        if not logprobs:
            return answer
        text, pieces = answer.text, _TOKEN.findall(answer.text)
        tokens = None
        if logprobs:
            conf = 1.0 / (1.0 + math.exp(-(0.8 * (1 if correct else -1) + rng.gauss(0.0, 1.2))))
            infos = []
            for piece in pieces:
                if piece.strip() == f"{letter}.":
                    lp = math.log(max(conf, 1e-6))
                    alts = [x for x in letters if x != letter]
                    rest = math.log(max((1.0 - conf) / max(len(alts), 1), 1e-9))
                    top = ((piece, lp), *((f" {x}.", rest) for x in alts))
                else:
                    lp = -rng.expovariate(12.0)
                    top = ((piece, lp), (" the", lp - 2.5 - rng.random()))
                infos.append(TokenInfo(piece, lp, top[: max(top_logprobs, 0)]))
            tokens = tuple(infos)
        return Answer(
            text, answer.output_tokens, answer.finish, answer.stop_sequence, correct, tokens
        )

    @staticmethod
    def _finish(
        text: str, stop: Sequence[str], max_tokens: int | None, correct: bool | None
    ) -> Answer:
        """Apply stop sequences and the token limit to a full answer text."""
        finish, stop_sequence = "stop", None
        cut = min(((text.find(s), s) for s in stop if s and s in text), default=None)
        if cut is not None:
            text, finish, stop_sequence = text[: cut[0]], "stop_sequence", cut[1]
        pieces = _TOKEN.findall(text)
        if max_tokens is not None and len(pieces) > max_tokens:
            pieces = pieces[:max_tokens]
            text, finish, stop_sequence = "".join(pieces), "length", None
        return Answer(text, len(pieces), finish, stop_sequence, correct, None)

    def _judge(self, model: str, prompt: str) -> str | None:
        """The simulated judge's answer to a judge prompt (None: not a judge prompt)."""
        pair = _JUDGE_PAIR.search(prompt)
        single = None if pair else _JUDGE_SINGLE.search(prompt)
        if pair is None and single is None:
            return None
        seed = self.config.seed
        unit = _h(seed, "judge", model, prompt) / 2.0**64
        honest = unit < self.config.judge_accuracy
        rng = random.Random(_h(seed, "judge-text", model, prompt))
        rationale = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 24))).capitalize()
        key = self.config.answer_key
        if single is not None:
            truth = grade(single.group("a"), single.group("q"), key)
            if truth is None:
                return f"{rationale}. Rating: [[5]]"
            right = truth if honest else not truth
            rating = rng.randint(7, 10) if right else rng.randint(1, 4)
            return f"{rationale}. Rating: [[{rating}]]"
        assert pair is not None
        question = pair.group("q")
        ta = grade(pair.group("a"), question, key)
        tb = grade(pair.group("b"), question, key)
        if ta is not None and tb is not None and ta != tb:
            first_better = ta if honest else not ta
            return f"{rationale}. [[{'A' if first_better else 'B'}]]"
        biased = (
            _h(seed, "judge-position", model, prompt) / 2.0**64 < self.config.judge_position_bias
        )
        return f"{rationale}. [[{'A' if biased else 'C'}]]"
