"""The model client: runs a fallback chain of logical models and records every attempt.

    async with ModelClient(catalogue) as client:
        routed = await client.complete(request, ["gpt-4o-mini", "claude-3-haiku"], deadline_s=30)
        routed.result.text, routed.result.cost_usd, [a.to_dict() for a in routed.attempts]

Per model, its deployments (worker.providers.deployments) are ordered by the model's strategy,
health and rate-limit headroom; per deployment: skip it while its circuit breaker is open; wait
for its rate-limit headroom when that fits the deadline (else move on rather than collect 429s);
wait for one of its ``max_concurrent_calls`` slots (within the deadline); call. A deployment
with others after it is tried once (a failure fails over at once, a 429 blocks it for its
``retry-after``); the last one gets SDK-style retries. Then the next model. When every model
fails, :class:`AllModelsFailedError` carries the attempts. Adapters are built once per
(provider, base_url, key env var) and share one pooled ``httpx.AsyncClient``; keys are read from
the environment when the client is built.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from worker.config.models import Catalogue, ModelSpec
from worker.providers.anthropic import AnthropicAdapter
from worker.providers.breaker import BreakerSettings, CircuitBreaker
from worker.providers.deployments import Booking, DeploymentState, order_deployments
from worker.providers.errors import (
    AllModelsFailedError,
    CircuitOpenError,
    DeadlineExceededError,
    MalformedResponseError,
    MissingApiKeyError,
    ProviderError,
    ProviderStatusError,
    RateLimitError,
    RateLimitWaitError,
)
from worker.providers.http import HttpSettings
from worker.providers.openai import OpenAIAdapter
from worker.providers.redaction import scrub_error, scrub_result
from worker.providers.retry import Deadline, RetryPolicy, call_with_retries
from worker.providers.types import (
    Attempt,
    CompletionRequest,
    CompletionResult,
    RoutedCompletion,
    Secret,
)
from worker.secrets import Redactor

AnyAdapter = OpenAIAdapter | AnthropicAdapter
_NO_RETRY = RetryPolicy(max_retries=0)


@dataclass(frozen=True, slots=True)
class _ModelCall:
    """One model of a ``complete`` call: what every try of its deployments shares."""

    request: CompletionRequest
    deadline: Deadline
    attempts: list[Attempt]  # of the whole chain, appended to
    tokens: int  # booked against tpm per call
    n_out: int  # output tokens expected


@dataclass(frozen=True, slots=True)
class ClientSettings:
    http: HttpSettings = field(default_factory=HttpSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    default_deadline_s: float = 120.0
    # several deployments: the longest a call waits for rate-limit headroom (else the chain moves
    # on), the output tokens assumed when a request sets no max_tokens, and the cap of a try that
    # has other deployments after it: max(min, factor x its expected latency)
    max_rate_limit_wait_s: float = 30.0
    expected_output_tokens: int = 256
    failover_timeout_factor: float = 5.0
    failover_timeout_min_s: float = 2.0
    latency_alpha: float = 0.2  # weight of the newest answer in the per-deployment latency fit
    # a longer answer is refused (MalformedResponseError, no retry): a hostile or broken provider
    # must not make the worker hold, publish or pay for it again
    max_answer_bytes: int = 4 * 1024 * 1024
    # the most of an answer's body read off the wire (JSON, log-probs and escapes around the
    # text); a longer body is refused the same way, read no further. None: 8 x max_answer_bytes
    max_body_bytes: int | None = None

    @property
    def body_cap(self) -> int:
        """The answer body cap in effect."""
        return 8 * self.max_answer_bytes if self.max_body_bytes is None else self.max_body_bytes


class ModelClient:
    def __init__(
        self,
        catalogue: Catalogue,
        settings: ClientSettings | None = None,
        *,
        env: Mapping[str, str] | None = None,
        http_transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ):
        self.catalogue = catalogue
        self.settings = settings or ClientSettings()
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        environ = os.environ if env is None else env
        # every configured key: what leaves this client (results, errors) is redacted by them
        self.redactor = Redactor(
            key
            for spec in catalogue.models.values()
            for deployment in spec.all_deployments
            if (key := environ.get(deployment.spec.api_key_env))
        )
        self._adapters: dict[tuple[str, str, str], AnyAdapter] = {}
        self._states: dict[str, tuple[DeploymentState, ...]] = {}
        self._dep_adapter: dict[tuple[str, str], AnyAdapter | None] = {}
        for name, spec in catalogue.models.items():
            states = []
            for deployment in spec.all_deployments:
                dspec = deployment.spec
                raw_key = environ.get(dspec.api_key_env)
                self._dep_adapter[(name, deployment.name)] = (
                    None if not raw_key else self._adapter(dspec, Secret(raw_key), http_transport)
                )
                states.append(
                    DeploymentState(
                        deployment, self.settings.breaker, clock, self.settings.latency_alpha
                    )
                )
            self._states[name] = tuple(states)

    def _adapter(
        self, spec: ModelSpec, key: Secret, http_transport: httpx.AsyncBaseTransport | None
    ) -> AnyAdapter:
        ident = (spec.provider, spec.base_url, spec.api_key_env)
        existing = self._adapters.get(ident)
        if existing is not None:
            return existing
        cls = OpenAIAdapter if spec.provider == "openai" else AnthropicAdapter
        made = cls(
            base_url=spec.base_url,
            api_key=key,
            http=self.settings.http,
            transport=http_transport,
            max_body_bytes=self.settings.body_cap,
        )
        self._adapters[ident] = made
        return made

    def __repr__(self) -> str:
        return f"ModelClient(models={list(self.catalogue.models)!r})"

    @property
    def missing_keys(self) -> tuple[str, ...]:
        """Env var names (never values) of deployments that have no key set."""
        return tuple(
            sorted(
                {
                    s.deployment.spec.api_key_env
                    for name, states in self._states.items()
                    for s in states
                    if self._dep_adapter[(name, s.name)] is None
                }
            )
        )

    def breaker(self, model: str, deployment: str | None = None) -> CircuitBreaker:
        """The circuit breaker of ``model``'s ``deployment`` (default: its first)."""
        return self.deployment_state(model, deployment).breaker

    def deployment_state(self, model: str, deployment: str | None = None) -> DeploymentState:
        states = self._states[model]
        if deployment is None:
            return states[0]
        for state in states:
            if state.name == deployment:
                return state
        raise KeyError(f"model {model!r} has no deployment {deployment!r}")

    def set_share(self, share: float) -> None:
        """This member's share of the group's rate limits (its share of the request partitions:
        ``owned / total``), applied to every deployment's ``rpm`` / ``tpm``."""
        share = min(max(share, 0.0), 1.0)
        for states in self._states.values():
            for state in states:
                state.limits.share = share

    def expected_latency_ms(
        self, models: Sequence[str], output_tokens: int | None = None
    ) -> dict[str, float]:
        """Per model, the expected time to answer a call with ``output_tokens`` on its fastest
        available deployment (circuit not open; waiting for rate-limit headroom counted), from
        live measurements. Models never measured are left out."""
        n_out = output_tokens if output_tokens is not None else self.settings.expected_output_tokens
        out: dict[str, float] = {}
        for model in models:
            best: float | None = None
            for state in self._states.get(model, ()):
                if state.breaker.state == "open":
                    continue
                expected = state.expected_ms(n_out)
                if expected is None:
                    continue
                expected += state.limits.wait_s(n_out) * 1000.0
                best = expected if best is None else min(best, expected)
            if best is not None:
                out[model] = best
        return out

    def adapter_for(self, model: str) -> AnyAdapter:
        """The adapter serving ``model``'s first deployment (for the Batch API calls)."""
        adapter = self._dep_adapter[(model, self._states[model][0].name)]
        if adapter is None:
            spec = self.catalogue[model]
            raise MissingApiKeyError(
                f"environment variable {spec.api_key_env} is not set",
                provider=spec.provider,
                model=model,
            )
        return adapter

    async def complete(
        self,
        request: CompletionRequest,
        models: Sequence[str],
        *,
        deadline_s: float | None = None,
        within_ms: float | None = None,
        fastest: bool = False,
    ) -> RoutedCompletion:
        """Try ``models`` in order; return the first success with every attempt made.

        ``within_ms``: a latency budget (deployments expected to miss it go after the others);
        ``fastest``: a tight deadline, the fastest deployment first whatever the strategy."""
        if not models:
            raise ValueError("the fallback chain is empty")
        for name in models:
            if name not in self.catalogue:
                raise KeyError(f"model {name!r} is not in the catalogue")
        deadline = Deadline(
            self.settings.default_deadline_s if deadline_s is None else deadline_s, self._clock
        )
        attempts: list[Attempt] = []
        last_error: ProviderError | None = None
        errors: list[ProviderError] = []
        for name in models:
            spec = self.catalogue[name]
            try:
                result, chosen, reason = await self._call_model(
                    spec, request, deadline, attempts, within_ms, fastest
                )
            except DeadlineExceededError as exc:
                last_error = scrub_error(exc, self.redactor)
                errors.append(last_error)
                if not attempts or attempts[-1].error_type != exc.code:
                    attempts.append(attempt_of(spec, exc, 0.0, 0, "error"))
                break
            except ProviderError as exc:
                last_error = scrub_error(exc, self.redactor)
                errors.append(last_error)
                continue
            result = scrub_result(result, self.redactor)
            listed = chosen.deployment.listed
            return RoutedCompletion(
                result=result,
                attempts=tuple(attempts),
                deployment=chosen.name if listed else None,
                deployment_reason=reason if listed else None,
            )
        assert last_error is not None
        raise AllModelsFailedError(
            f"all {len(models)} models failed; last: {type(last_error).__name__}",
            attempts=attempts,
            last_error=last_error,
            errors=errors,
        )

    async def _call_model(
        self,
        spec: ModelSpec,
        request: CompletionRequest,
        deadline: Deadline,
        attempts: list[Attempt],
        within_ms: float | None,
        fastest: bool,
    ) -> tuple[CompletionResult, DeploymentState, str]:
        states = self._states[spec.name]
        tokens, n_out = tokens_of(request, spec, states, self.settings.expected_output_tokens)
        call = _ModelCall(request, deadline, attempts, tokens, n_out)
        if len(states) == 1:  # nothing to choose (a breaker is asked when the call is made)
            return (
                await self._call_deployment(states[0], call, False),
                states[0],
                "the only deployment",
            )
        options = [s.option(i, tokens, n_out) for i, s in enumerate(states)]
        order, reason = order_deployments(
            options,
            spec.routing_strategy,
            self._rand,
            lowest_latency_buffer=spec.lowest_latency_buffer,
            within_ms=within_ms,
            fastest=fastest,
        )
        if not order:  # every breaker open
            listed = states[0].deployment.listed
            err: ProviderError = CircuitOpenError(
                "model is cooling down after repeated failures"
                + (f" ({reason})" if listed else ""),
                provider=spec.provider,
                model=spec.name,
            )
            attempts.append(attempt_of(spec, err, 0.0, 0, "skipped"))
            raise err
        failed: list[str] = []
        last_error: ProviderError | None = None
        for k, option in enumerate(order):
            state = states[option.index]
            try:
                result = await self._call_deployment(state, call, k < len(order) - 1)
            except DeadlineExceededError:
                raise
            except ProviderError as exc:
                last_error = exc
                failed.append(f"{state.name} ({type(exc).__name__})")
                continue
            if failed:
                reason += "; failed over from " + ", ".join(failed)
            return result, state, reason
        assert last_error is not None
        raise last_error

    async def _call_deployment(
        self, state: DeploymentState, call: _ModelCall, more: bool
    ) -> CompletionResult:
        """One deployment: its key, rate-limit headroom and breaker first, then the call in one
        of its slots (retried only when no other deployment comes after it: ``more``)."""
        spec = state.deployment.spec
        label = state.name if state.deployment.listed else None
        adapter = self._dep_adapter[(spec.name, state.name)]
        if adapter is None:
            err: ProviderError = MissingApiKeyError(
                f"environment variable {spec.api_key_env} is not set",
                provider=spec.provider,
                model=spec.name,
            )
            call.attempts.append(attempt_of(spec, err, 0.0, 0, "skipped", label))
            raise err
        await self._wait_for_headroom(state, call, label)
        breaker = state.breaker
        if not breaker.allow():
            err = CircuitOpenError(
                "model is cooling down after repeated failures",
                provider=spec.provider,
                model=spec.name,
            )
            call.attempts.append(attempt_of(spec, err, 0.0, 0, "skipped", label))
            raise err
        verdict_given = False
        try:
            result, answered_ms, booked = await self._call_in_slot(state, adapter, call, more)
            breaker.record_success()
            verdict_given = True
            state.record_answer(result, answered_ms, booked, call.tokens)
            return result
        except ProviderError as exc:
            if exc.trips_breaker:
                breaker.record_failure()
                verdict_given = True
            raise
        finally:
            if not verdict_given:
                breaker.release()

    async def _call_in_slot(
        self, state: DeploymentState, adapter: AnyAdapter, call: _ModelCall, more: bool
    ) -> tuple[CompletionResult, float, Booking]:
        """The call with its retries, holding one of the deployment's slots: the result, the
        latency of the answer and the rate-limit booking made for it."""
        spec = state.deployment.spec
        label = state.name if state.deployment.listed else None
        cap_s = self._try_cap_s(state, call.n_out) if more else math.inf
        answered_ms = 0.0
        await self._take_slot(state, call.deadline)
        booked = state.limits.take(call.tokens)
        state.in_flight += 1
        try:

            def on_attempt(retry: int, error: ProviderError | None, latency_ms: float) -> None:
                nonlocal answered_ms
                call.attempts.append(attempt_of(spec, error, latency_ms, retry, "error", label))
                if error is None:
                    answered_ms = latency_ms
                elif isinstance(error, RateLimitError):
                    state.limits.blocked_for(error.retry_after_s or 1.0)

            async def once(timeout_s: float) -> CompletionResult:
                timeout_s = min(timeout_s, cap_s)
                result = await adapter.complete(spec, call.request, timeout_s=timeout_s)
                refuse_impossible(spec, result, self.settings.max_answer_bytes)
                return result

            result = await call_with_retries(
                once,
                policy=_NO_RETRY if more else self.settings.retry,
                deadline=call.deadline,
                on_attempt=on_attempt,
                sleep=self._sleep,
                rand=self._rand,
                clock=self._clock,
            )
        finally:
            state.in_flight -= 1
            state.slots.release()
        return result, answered_ms, booked

    def _try_cap_s(self, state: DeploymentState, n_out: int) -> float:
        """The cap of a try that has other deployments after it: max(min, factor x its
        expected latency); none while its latency is unknown."""
        expected = state.expected_ms(n_out)
        if expected is None:
            return math.inf
        return max(
            self.settings.failover_timeout_min_s,
            self.settings.failover_timeout_factor * expected / 1000.0,
        )

    @staticmethod
    async def _take_slot(state: DeploymentState, deadline: Deadline) -> None:
        slot = state.slots
        if not slot.locked():
            await slot.acquire()  # free: returns at once
            return
        spec = state.deployment.spec
        try:  # only a wait needs the deadline (a timeout costs per call)
            async with asyncio.timeout(max(deadline.remaining_s(), 0.0)):
                await slot.acquire()
        except TimeoutError:
            raise DeadlineExceededError(
                "deadline passed waiting for a concurrency slot",
                provider=spec.provider,
                model=spec.name,
            ) from None

    async def _wait_for_headroom(
        self, state: DeploymentState, call: _ModelCall, label: str | None
    ) -> None:
        """Wait until the deployment has rate-limit headroom, when that wait (plus the expected
        answer time) fits the deadline and ``max_rate_limit_wait_s``; else RateLimitWaitError."""
        spec = state.deployment.spec
        wait = state.limits.wait_s(call.tokens)
        while wait > 0:
            answer_s = (state.expected_ms(call.n_out) or 0.0) / 1000.0
            remaining_s = call.deadline.remaining_s()
            budget = min(self.settings.max_rate_limit_wait_s, remaining_s - answer_s)
            if wait > budget:
                err = RateLimitWaitError(
                    f"rate limit: {wait:.1f} s to headroom, more than the {max(budget, 0):.1f} s "
                    "this request can wait",
                    provider=spec.provider,
                    model=spec.name,
                )
                call.attempts.append(attempt_of(spec, err, 0.0, 0, "skipped", label))
                raise err
            await self._sleep(wait)
            wait = state.limits.wait_s(call.tokens)

    async def aclose(self) -> None:
        await asyncio.gather(*(t.aclose() for t in self._adapters.values()))

    async def __aenter__(self) -> ModelClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def attempt_of(
    spec: ModelSpec,
    error: ProviderError | None,
    latency_ms: float,
    retry: int,
    status: str,
    deployment: str | None = None,
) -> Attempt:
    """The record of one try (``status`` "skipped" for a deployment not called)."""
    return Attempt(
        model=spec.name,
        provider=spec.provider,
        status="ok" if error is None else ("skipped" if status == "skipped" else "error"),
        latency_ms=latency_ms,
        http_status=error.status
        if isinstance(error, ProviderStatusError)
        else (200 if error is None else None),
        error_type=None if error is None else error.code,
        retry=retry,
        deployment=deployment,
    )


def tokens_of(
    request: CompletionRequest,
    spec: ModelSpec,
    states: Sequence[DeploymentState],
    expected_output_tokens: int,
) -> tuple[int, int]:
    """(tokens a call books against tpm, output tokens expected): the input estimated from its
    characters (4 a token) plus max_tokens, as providers count a request for tpm (0 when no
    deployment counts tokens)."""
    n_out = request.max_tokens or expected_output_tokens
    if not any(s.limits.track for s in states):
        return 0, n_out
    chars = 0
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    return chars // 4 + 1 + (request.max_tokens or spec.default_max_tokens), n_out


def refuse_impossible(spec: ModelSpec, result: CompletionResult, max_answer_bytes: int) -> None:
    """Refuse an answer no model can give: usage that is negative, not an integer or beyond the
    model's context window, or text beyond ``max_answer_bytes``. Retrying would pay for the same
    answer again, so the error is not retriable."""
    u = result.usage
    counts = (u.input_tokens, u.output_tokens, u.cached_input_tokens)
    problem = None
    if any(type(c) is not int or c < 0 for c in counts):
        problem = f"impossible usage {counts}"
    elif u.input_tokens + u.output_tokens > spec.context_window_tokens:
        problem = (
            f"usage of {u.input_tokens + u.output_tokens} tokens exceeds the "
            f"{spec.context_window_tokens}-token context window"
        )
    elif len(result.text) > max_answer_bytes or len(result.text.encode()) > max_answer_bytes:
        problem = f"answer longer than max_answer_bytes {max_answer_bytes}"
    if problem is not None:
        err = MalformedResponseError(problem, provider=spec.provider, model=spec.name)
        err.retriable = False
        raise err
