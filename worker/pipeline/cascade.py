"""The cascade: the cheap model answers first; its answer is judged (answer rules, a learned
scorer, or a grader model) and escalated to the strong model when rejected
(`routers.cascade.escalates` says when that is allowed)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

import schemas
from routers.answer_scorer import LearnedAnswerScorer, load_answer_scorer
from routers.cascade import AnswerScorer, CascadeParams, CascadeResult, escalates
from routers.eligibility import Eligible
from worker.config import Config, PolicySpec
from worker.pipeline.calls import ModelCalls, Outcome
from worker.pipeline.routing import Route
from worker.providers.client import ModelClient
from worker.providers.errors import ProviderError
from worker.providers.types import CompletionRequest, RoutedCompletion
from worker.training.judge import Judge, JudgeSettings


@dataclass(frozen=True)
class LoadedAnswerScorer:
    """A learned cascade scorer loaded at start-up, with its calibrated default threshold."""

    scorer: LearnedAnswerScorer
    default_threshold: float


def load_answer_scorers(config: Config) -> dict[str, LoadedAnswerScorer]:
    """Every learned scorer the cascade policies name, by folder (file I/O: call at start-up)."""
    out: dict[str, LoadedAnswerScorer] = {}
    for spec in config.policies.values():
        path = spec.cascade_scorer
        if path is None or path in out:
            continue
        scorer, meta = load_answer_scorer(path)
        calibration = meta.get("calibration") or {}
        default = 0.5
        for key in ("quality_95pct", "escalate_fraction_0.30"):
            value = calibration.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                default = float(value)
                break
        out[path] = LoadedAnswerScorer(scorer, default)
    return out


@dataclass(frozen=True, slots=True)
class CascadeCall:
    """One request's cascade: its call, the chain (cheap model first), the policy and what the
    request may reach."""

    request: schemas.RouteRequest
    call: CompletionRequest
    chain: Sequence[str]
    spec: PolicySpec
    strong: str  # the policy's strong model, else the router's
    question: str  # the routed prompt, as graders and scorers read it
    allowed: Eligible
    grader_allowed: bool
    route: Route | None = None


class Cascade:
    def __init__(
        self,
        calls: ModelCalls,
        client: ModelClient,
        answer_scorers: dict[str, LoadedAnswerScorer],
        perf: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.calls = calls
        self.client = client
        self.answer_scorers = answer_scorers
        self.perf = perf
        self.scorer_cache: dict[float, AnswerScorer] = {}

    async def answer(
        self, job: CascadeCall, deadline_s: float, outcome: Outcome
    ) -> RoutedCompletion:
        """Cheap model first; escalate to the strong model when the answer is rejected, the
        strong model is eligible and its cost bound still fits the budget."""
        cheap = job.chain[0]
        started = self.perf()
        first = await self.calls.call(
            job.request, job.call, [cheap], deadline_s, outcome, job.route
        )
        remaining = deadline_s - (self.perf() - started)
        verdict, how = await self._judge(job, job.spec, first, remaining, outcome)
        outcome.cascade_reason = f"cascade {how}: {verdict.reason}"
        spent = outcome.extra_cost_usd + first.cost_usd
        if not escalates(verdict, cheap, job.strong, job.allowed, spent):
            return first
        # the grader's call is not an attempt: the last attempt is the cheap answer's
        last = outcome.attempts[-1]
        outcome.attempts[-1] = msgspec.structs.replace(last, status="escalated")
        outcome.escalated = True
        outcome.extra_cost_usd += first.cost_usd
        remaining = deadline_s - (self.perf() - started)
        rest = [job.strong, *(m for m in job.chain[1:] if m != job.strong)]
        return await self.calls.call(
            job.request, job.call, rest, max(remaining, 0.001), outcome, job.route
        )

    async def _judge(
        self,
        job: CascadeCall,
        spec: PolicySpec,
        first: RoutedCompletion,
        remaining_s: float,
        outcome: Outcome,
    ) -> tuple[CascadeResult, str]:
        """The verdict on the cheap answer and how it was reached (rules, learned scorer or
        grader model). A grader call is paid for: its cost goes to the request. The grader reads
        the prompt: one the request may not reach is not asked (the rules are)."""
        if spec.cascade_grader is not None and not job.grader_allowed:
            rules = msgspec.structs.replace(spec, cascade_grader=None)
            verdict, how = await self._judge(job, rules, first, remaining_s, outcome)
            return verdict, f"{how} (grader {spec.cascade_grader} not eligible)"
        if spec.cascade_grader is not None:
            return await self._grade(job.question, first, spec, remaining_s, outcome)
        answer = first.result.text
        if spec.cascade_scorer is not None:
            loaded = self.answer_scorers[spec.cascade_scorer]
            threshold = (
                loaded.default_threshold
                if spec.cascade_threshold is None
                else spec.cascade_threshold
            )
            return loaded.scorer.verdict(job.question, answer, threshold), "learned scorer"
        threshold = 0.5 if spec.cascade_threshold is None else spec.cascade_threshold
        scorer = self.scorer_cache.get(threshold)
        if scorer is None:
            scorer = AnswerScorer(CascadeParams(threshold=threshold))
            if len(self.scorer_cache) < 64:
                self.scorer_cache[threshold] = scorer
        r = first.result
        logprobs = [t.logprob for t in r.logprobs] if r.logprobs else None
        return scorer.score(answer, logprobs), "rules"

    async def _grade(
        self,
        question: str,
        first: RoutedCompletion,
        spec: PolicySpec,
        remaining_s: float,
        outcome: Outcome,
    ) -> tuple[CascadeResult, str]:
        grader = spec.cascade_grader
        assert grader is not None
        threshold = 0.5 if spec.cascade_threshold is None else spec.cascade_threshold
        judge = Judge(self.client, JudgeSettings(model=grader, deadline_s=max(remaining_s, 0.001)))
        try:
            graded = await judge.score(question, first.result.text)
        except ProviderError as exc:
            reason = f"grader {grader} failed ({type(exc).__name__})"
            return CascadeResult(False, 0.0, threshold, (reason,)), "grader"
        outcome.extra_cost_usd += graded.cost_usd
        if graded.score is None:
            reason = f"grader {grader} gave no readable rating"
            return CascadeResult(False, 0.0, threshold, (reason,)), "grader"
        accept = graded.score >= threshold
        why = (f"{grader} rated it {graded.rating:g}",)
        return CascadeResult(accept, graded.score, threshold, why), "grader"
