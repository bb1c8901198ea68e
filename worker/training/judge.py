"""LLM-as-judge labelling: a rubric-scored single answer, or a pairwise comparison asked in both
orders (LLM-Blender's PairRanker idea: a judge that prefers the first position contradicts itself
across the two orders, and the contradiction becomes a tie). Results are `Feedback` events with
source "judge", published to `llm.feedback` like any other feedback.

    async with ModelClient(catalogue) as client:
        judge = Judge(client, JudgeSettings(model="gpt-4o"))
        verdict = await judge.score(question, answer)          # verdict.score in [0, 1] or None
        pair = await judge.compare(question, answer_a, answer_b)  # "a" | "b" | "tie" | None

The default rubrics are MT-Bench's single-answer grading and pairwise comparison prompts
(Zheng et al., 2023): `Rating: [[r]]` on 1-10 and `[[A]]` / `[[B]]` / `[[C]]` (tie). Custom rubrics
are text files with the placeholders `{question}` and `{answer}` (single) or `{question}`,
`{answer_a}`, `{answer_b}` (pairwise); nothing else in them is interpreted, so braces are safe.
An answer the parser cannot read gives no verdict (None), never a guessed score.

`unjudged` finds the answered requests whose answer has no feedback yet (so a rerun does not judge
twice) and `judge_pending` judges them, handing one feedback event per verdict to a publisher;
with a pairwise model M it also asks M for its own answer to each prompt and gives the pairwise
result for both models (1 win, 0.5 tie, 0 loss; `model` set on each). `llmroute judge`
(`worker.cli.judge`) runs them over the topics.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import schemas
from routers.outcomes import Label, LabelIndex, merge_answered
from schemas.trace import request_key, request_trace_id
from worker.providers.client import ModelClient
from worker.providers.errors import ProviderError
from worker.providers.types import CompletionRequest
from worker.training.outcome_sources import (
    answered_from_decision,
    answered_from_response,
)

__all__ = [
    "PAIR_RUBRIC",
    "SINGLE_RUBRIC",
    "Judge",
    "JudgeSettings",
    "PairVerdict",
    "Pending",
    "Verdict",
    "judge_pending",
    "parse_preference",
    "parse_rating",
    "unjudged",
]

SINGLE_RUBRIC = """[Instruction]
Please act as an impartial judge and evaluate the quality of the response provided by an AI \
assistant to the user question displayed below. Your evaluation should consider factors such as \
the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. \
Begin your evaluation by providing a short explanation. Be as objective as possible. After \
providing your explanation, you must rate the response on a scale of 1 to 10 by strictly \
following this format: "[[rating]]", for example: "Rating: [[5]]".

[Question]
{question}

[The Start of Assistant's Answer]
{answer}
[The End of Assistant's Answer]"""

PAIR_RUBRIC = """[System]
Please act as an impartial judge and evaluate the quality of the responses provided by two AI \
assistants to the user question displayed below. You should choose the assistant that follows \
the user's instructions and answers the user's question better. Your evaluation should consider \
factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of \
their responses. Begin your evaluation by comparing the two responses and provide a short \
explanation. Avoid any position biases and ensure that the order in which the responses were \
presented does not influence your decision. Do not allow the length of the responses to \
influence your evaluation. Do not favor certain names of the assistants. Be as objective as \
possible. After providing your explanation, output your final verdict by strictly following this \
format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.

[User Question]
{question}

[The Start of Assistant A's Answer]
{answer_a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{answer_b}
[The End of Assistant B's Answer]"""

_NUM = r"(\d+(?:\.\d+)?)"
_RATING_PATTERNS = (
    re.compile(r"\[\[\s*" + _NUM + r"\s*(?:/\s*\d+(?:\.\d+)?)?\s*\]\]"),
    re.compile(r"(?:rating|score|grade)\s*[:=]?\s*\**\s*" + _NUM, re.IGNORECASE),
    re.compile(_NUM + r"\s*(?:/|out of)\s*10\b", re.IGNORECASE),
)
_PREF_BRACKETS = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_PREF_WORDS = re.compile(
    r"(?:verdict|winner|better)\s*(?:is)?\s*[:=]?\s*\**\s*(?:assistant\s+)?(A|B|C|tie)\b"
    r"|assistant\s+(A|B)\s+is\s+(?:the\s+)?better",
    re.IGNORECASE,
)


def parse_rating(text: str, scale: tuple[float, float] = (1.0, 10.0)) -> float | None:
    """The judge's rating, or None. Tries `[[r]]` (the last one), then `Rating: r` /
    `Score: r`, then `r/10`; a bare number is accepted only when it is the whole answer.
    A rating outside `scale` is no rating."""
    lo, hi = scale
    candidates: list[str] = []
    for pattern in _RATING_PATTERNS:
        found = pattern.findall(text)
        if found:
            candidates = [found[-1]]
            break
    if not candidates and re.fullmatch(r"\s*" + _NUM + r"\s*\.?\s*", text):
        candidates = [text.strip().rstrip(".")]
    for c in candidates:
        value = float(c)
        if lo <= value <= hi:
            return value
    return None


Preference = Literal["A", "B", "tie"]


def parse_preference(text: str) -> Preference | None:
    """`[[A]]`, `[[B]]`, `[[C]]`/`[[tie]]` (the last one), else `verdict: A`-style wording."""
    found = _PREF_BRACKETS.findall(text) or [a or b for a, b in _PREF_WORDS.findall(text)]
    if not found:
        return None
    choice = found[-1].upper()
    if choice in ("C", "TIE"):
        return "tie"
    return "A" if choice == "A" else "B"


@dataclass(frozen=True, slots=True)
class JudgeSettings:
    model: str  # the judge: a catalogue model
    rubric: str = SINGLE_RUBRIC
    pair_rubric: str = PAIR_RUBRIC
    scale: tuple[float, float] = (1.0, 10.0)  # the rubric's rating scale (worst, best)
    max_tokens: int = 512
    temperature: float = 0.0
    deadline_s: float = 60.0
    name: str = "judge"  # feedback name of single-answer scores
    pair_name: str = "judge_pairwise"  # feedback name of pairwise results

    def __post_init__(self) -> None:
        for placeholder in ("{question}", "{answer}"):
            if placeholder not in self.rubric:
                raise ValueError(f"the rubric needs the placeholder {placeholder}")
        for placeholder in ("{question}", "{answer_a}", "{answer_b}"):
            if placeholder not in self.pair_rubric:
                raise ValueError(f"the pairwise rubric needs the placeholder {placeholder}")
        if self.scale[0] >= self.scale[1]:
            raise ValueError("scale must be (worst, best) with worst < best")


def _fill(template: str, **values: str) -> str:
    # one pass, so an answer that happens to contain "{answer_b}" is never substituted again
    return re.sub(
        r"\{(question|answer|answer_a|answer_b)\}",
        lambda m: values.get(m.group(1), m.group(0)),
        template,
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float | None  # in [0, 1]; None: the judge's answer had no readable rating
    rating: float | None  # on the rubric's scale
    text: str
    cost_usd: float


@dataclass(frozen=True, slots=True)
class PairVerdict:
    winner: Literal["a", "b", "tie"] | None  # None: an order gave no readable verdict
    first_order: Preference | None  # a shown as A
    second_order: Preference | None  # b shown as A
    consistent: bool  # both orders named the same winner (or both a tie)
    cost_usd: float

    def value_for(self, which: Literal["a", "b"]) -> float | None:
        """1 win, 0.5 tie, 0 loss for answer `which`."""
        if self.winner is None:
            return None
        if self.winner == "tie":
            return 0.5
        return 1.0 if self.winner == which else 0.0


class Judge:
    def __init__(self, client: ModelClient, settings: JudgeSettings) -> None:
        if settings.model not in client.catalogue:
            raise ValueError(f"judge model {settings.model!r} is not in the catalogue")
        self.client = client
        self.settings = settings

    async def _ask(self, prompt: str) -> tuple[str, float]:
        s = self.settings
        request = CompletionRequest.from_prompt(
            prompt, max_tokens=s.max_tokens, temperature=s.temperature
        )
        routed = await self.client.complete(request, [s.model], deadline_s=s.deadline_s)
        return routed.result.text, routed.result.cost_usd

    async def score(self, question: str, answer: str) -> Verdict:
        text, cost = await self._ask(_fill(self.settings.rubric, question=question, answer=answer))
        rating = parse_rating(text, self.settings.scale)
        lo, hi = self.settings.scale
        score = None if rating is None else (rating - lo) / (hi - lo)
        return Verdict(score, rating, text, cost)

    async def compare(self, question: str, answer_a: str, answer_b: str) -> PairVerdict:
        """Ask both orders concurrently; a win counts +1 for its answer in each order."""
        rubric = self.settings.pair_rubric
        (t1, c1), (t2, c2) = await asyncio.gather(
            self._ask(_fill(rubric, question=question, answer_a=answer_a, answer_b=answer_b)),
            self._ask(_fill(rubric, question=question, answer_a=answer_b, answer_b=answer_a)),
        )
        p1, p2 = parse_preference(t1), parse_preference(t2)
        if p1 is None or p2 is None:
            return PairVerdict(None, p1, p2, False, c1 + c2)
        points = {"A": 1, "B": -1, "tie": 0}
        total = points[p1] - points[p2]  # second order shows b as A
        winner: Literal["a", "b", "tie"] = "a" if total > 0 else "b" if total < 0 else "tie"
        consistent = points[p1] == -points[p2]
        return PairVerdict(winner, p1, p2, consistent, c1 + c2)

    def feedback(
        self,
        request_id: str,
        model: str,
        value: float,
        *,
        pairwise: bool = False,
        comment: str | None = None,
        now: datetime | None = None,
        tenant: str | None = None,
    ) -> schemas.Feedback:
        return schemas.Feedback(
            schema_version=1,
            name=self.settings.pair_name if pairwise else self.settings.name,
            value=value,
            source="judge",
            created_at=now or datetime.now(UTC),
            request_id=request_id,
            tenant=tenant,
            trace_id=request_trace_id(request_id, tenant),
            comment=comment,
            model=model,
        )


# ---------------------------------------------------------------- answers without feedback


@dataclass(frozen=True, slots=True)
class Pending:
    """An answered request whose answer has no feedback yet."""

    request_id: str
    prompt: str
    model: str
    answer: str
    tenant: str | None = None


def unjudged(
    decisions: list[schemas.RoutingDecision],
    responses: list[schemas.RouteResponse],
    labels: list[Label],
) -> list[Pending]:
    """Answered requests (prompt known, answer text present) without feedback on their answer
    model, in request-id order."""
    merged = merge_answered(
        [answered_from_decision(d) for d in decisions]
        + [answered_from_response(r) for r in responses]
    )
    answers: dict[str, str] = {}  # by request_key (merged's keys)
    for r in responses:
        if r.status == "ok" and r.message is not None and r.message.content:
            answers[request_key(r.tenant, r.request_id)] = r.message.content
    index = LabelIndex(merged)
    judged: set[tuple[str, str | None]] = set()  # (request key, model) with feedback
    for label in labels:
        key = index.key_for(label)
        if key is not None:
            judged.add((key, label.model or merged[key].model))
    out: list[Pending] = []
    for key in sorted(merged, key=lambda k: (merged[k].request_id, k)):
        a = merged[key]
        model = a.model
        if model is None or a.prompt is None or key not in answers or (key, model) in judged:
            continue
        out.append(Pending(a.request_id, a.prompt, model, answers[key], a.tenant))
    return out


async def judge_pending(
    judge: Judge,
    pending: list[Pending],
    publish: Callable[[schemas.Feedback], Any],
    *,
    pairwise_model: str | None = None,
    concurrency: int = 8,
) -> dict[str, Any]:
    """Judge each pending answer and hand every verdict to `publish` (awaited)."""
    stats = {"judged": 0, "unparsed": 0, "failed": 0, "published": 0, "judge_cost_usd": 0.0}
    slots = asyncio.Semaphore(concurrency)

    async def one(p: Pending) -> None:
        async with slots:
            try:
                if pairwise_model is None:
                    verdict = await judge.score(p.prompt, p.answer)
                    stats["judge_cost_usd"] += verdict.cost_usd
                    if verdict.score is None:
                        stats["unparsed"] += 1
                        return
                    events = [
                        judge.feedback(
                            p.request_id,
                            p.model,
                            verdict.score,
                            comment=verdict.text[-500:],
                            tenant=p.tenant,
                        )
                    ]
                else:
                    request = CompletionRequest.from_prompt(
                        p.prompt, max_tokens=judge.settings.max_tokens
                    )
                    other = await judge.client.complete(request, [pairwise_model])
                    stats["judge_cost_usd"] += other.cost_usd
                    pair = await judge.compare(p.prompt, p.answer, other.result.text)
                    stats["judge_cost_usd"] += pair.cost_usd
                    va, vb = pair.value_for("a"), pair.value_for("b")
                    if va is None or vb is None:
                        stats["unparsed"] += 1
                        return
                    note = f"orders: {pair.first_order}/{pair.second_order}"
                    events = [
                        judge.feedback(
                            p.request_id,
                            p.model,
                            va,
                            pairwise=True,
                            comment=f"vs {pairwise_model}; {note}",
                            tenant=p.tenant,
                        ),
                        judge.feedback(
                            p.request_id,
                            pairwise_model,
                            vb,
                            pairwise=True,
                            comment=f"vs {p.model}; {note}",
                            tenant=p.tenant,
                        ),
                    ]
            except ProviderError:
                stats["failed"] += 1
                return
            stats["judged"] += 1
            for event in events:
                await publish(event)
                stats["published"] += 1

    await asyncio.gather(*(one(p) for p in pending))
    return stats
