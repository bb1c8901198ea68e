"""The router client: runs a fallback chain of logical models and records every attempt.

    async with RouterClient(catalogue) as client:
        routed = await client.complete(request, ["gpt-4o-mini", "claude-3-haiku"], deadline_s=30)
        routed.result.text, routed.result.cost_usd, [a.to_dict() for a in routed.attempts]

Per model: skip it while its circuit breaker is open; wait for one of its
``max_concurrent_calls`` slots (within the deadline); call with SDK-style retries; on failure
move to the next model. When every model fails, :class:`AllModelsFailedError` carries the
attempts. Transports are built once per (provider, base_url, key env var) and share one pooled
``httpx.AsyncClient``; keys are read from the environment when the client is built.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from worker.providers.anthropic import AnthropicTransport
from worker.providers.breaker import BreakerSettings, CircuitBreaker
from worker.providers.catalogue import Catalogue, ModelSpec
from worker.providers.errors import (
    AllModelsFailedError,
    CircuitOpenError,
    DeadlineExceededError,
    MissingApiKeyError,
    ProviderError,
    ProviderStatusError,
)
from worker.providers.http import HttpSettings
from worker.providers.openai import OpenAITransport
from worker.providers.retry import Deadline, RetryPolicy, call_with_retries
from worker.providers.types import (
    Attempt,
    CompletionRequest,
    CompletionResult,
    RoutedCompletion,
    Secret,
)

AnyTransport = OpenAITransport | AnthropicTransport


@dataclass(frozen=True, slots=True)
class ClientSettings:
    http: HttpSettings = field(default_factory=HttpSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    default_deadline_s: float = 120.0


class RouterClient:
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
        self._transports: dict[tuple[str, str, str], AnyTransport] = {}
        self._model_transport: dict[str, AnyTransport | None] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        for name, spec in catalogue.models.items():
            raw_key = environ.get(spec.api_key_env)
            self._model_transport[name] = (
                None if not raw_key else self._transport(spec, Secret(raw_key), http_transport)
            )
            self._breakers[name] = CircuitBreaker(self.settings.breaker, clock)
            self._slots[name] = asyncio.Semaphore(spec.max_concurrent_calls)

    def _transport(
        self, spec: ModelSpec, key: Secret, http_transport: httpx.AsyncBaseTransport | None
    ) -> AnyTransport:
        ident = (spec.provider, spec.base_url, spec.api_key_env)
        existing = self._transports.get(ident)
        if existing is not None:
            return existing
        cls = OpenAITransport if spec.provider == "openai" else AnthropicTransport
        made = cls(
            base_url=spec.base_url, api_key=key, http=self.settings.http, transport=http_transport
        )
        self._transports[ident] = made
        return made

    def __repr__(self) -> str:
        return f"RouterClient(models={list(self.catalogue.models)!r})"

    @property
    def missing_keys(self) -> tuple[str, ...]:
        """Env var names (never values) of models that have no key set."""
        return tuple(
            sorted(
                {
                    self.catalogue[n].api_key_env
                    for n, t in self._model_transport.items()
                    if t is None
                }
            )
        )

    def breaker(self, model: str) -> CircuitBreaker:
        return self._breakers[model]

    def transport_for(self, model: str) -> AnyTransport:
        """The transport serving ``model`` (for the Batch API calls)."""
        transport = self._model_transport[model]
        if transport is None:
            spec = self.catalogue[model]
            raise MissingApiKeyError(
                f"environment variable {spec.api_key_env} is not set",
                provider=spec.provider,
                model=model,
            )
        return transport

    async def complete(
        self,
        request: CompletionRequest,
        models: Sequence[str],
        *,
        deadline_s: float | None = None,
    ) -> RoutedCompletion:
        """Try ``models`` in order; return the first success with every attempt made."""
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
        for name in models:
            spec = self.catalogue[name]
            try:
                result = await self._call_model(spec, request, deadline, attempts)
            except DeadlineExceededError as exc:
                last_error = exc
                if not attempts or attempts[-1].error_type != type(exc).__name__:
                    attempts.append(self._attempt(spec, exc, 0.0, 0, "error"))
                break
            except ProviderError as exc:
                last_error = exc
                continue
            return RoutedCompletion(result=result, attempts=tuple(attempts))
        assert last_error is not None
        raise AllModelsFailedError(
            f"all {len(models)} models failed; last: {type(last_error).__name__}",
            attempts=attempts,
            last_error=last_error,
        )

    @staticmethod
    def _attempt(
        spec: ModelSpec, error: ProviderError | None, latency_ms: float, retry: int, status: str
    ) -> Attempt:
        return Attempt(
            model=spec.name,
            provider=spec.provider,
            status="ok" if error is None else ("skipped" if status == "skipped" else "error"),
            latency_ms=latency_ms,
            http_status=error.status
            if isinstance(error, ProviderStatusError)
            else (200 if error is None else None),
            error_type=None if error is None else type(error).__name__,
            retry=retry,
        )

    async def _call_model(
        self,
        spec: ModelSpec,
        request: CompletionRequest,
        deadline: Deadline,
        attempts: list[Attempt],
    ) -> CompletionResult:
        transport = self._model_transport[spec.name]
        if transport is None:
            err: ProviderError = MissingApiKeyError(
                f"environment variable {spec.api_key_env} is not set",
                provider=spec.provider,
                model=spec.name,
            )
            attempts.append(self._attempt(spec, err, 0.0, 0, "skipped"))
            raise err
        breaker = self._breakers[spec.name]
        if not breaker.allow():
            err = CircuitOpenError(
                "model is cooling down after repeated failures",
                provider=spec.provider,
                model=spec.name,
            )
            attempts.append(self._attempt(spec, err, 0.0, 0, "skipped"))
            raise err
        verdict_given = False
        slot = self._slots[spec.name]
        try:
            if slot.locked():  # only a wait needs the deadline (a timeout costs per call)
                try:
                    async with asyncio.timeout(max(deadline.remaining_s(), 0.0)):
                        await slot.acquire()
                except TimeoutError:
                    raise DeadlineExceededError(
                        "deadline passed waiting for a concurrency slot",
                        provider=spec.provider,
                        model=spec.name,
                    ) from None
            else:
                await slot.acquire()  # free: returns at once
            try:

                def on_attempt(retry: int, error: ProviderError | None, latency_ms: float) -> None:
                    attempts.append(self._attempt(spec, error, latency_ms, retry, "error"))

                result = await call_with_retries(
                    lambda timeout_s: transport.complete(spec, request, timeout_s=timeout_s),
                    policy=self.settings.retry,
                    deadline=deadline,
                    on_attempt=on_attempt,
                    sleep=self._sleep,
                    rand=self._rand,
                    clock=self._clock,
                )
            finally:
                slot.release()
            breaker.record_success()
            verdict_given = True
            return result
        except ProviderError as exc:
            if exc.trips_breaker:
                breaker.record_failure()
                verdict_given = True
            raise
        finally:
            if not verdict_given:
                breaker.release()

    async def aclose(self) -> None:
        await asyncio.gather(*(t.aclose() for t in self._transports.values()))

    async def __aenter__(self) -> RouterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
