"""Several deployments of one model: live state per deployment and the choice of one per call.

Every deployment keeps, on the client's injected clock:

- its circuit breaker (worker.providers.breaker) and its ``max_concurrent_calls`` slots;
- its latency, as an exponentially weighted least-squares fit of
  ``latency_ms = ttft_ms + output_tokens * ms_per_token`` over its answers (a non-streaming
  answer has no first-token time of its own: the intercept stands for it);
- its rate-limit headroom: our own requests and tokens in the last 60 s against its ``rpm`` /
  ``tpm`` times this member's share of the group (see :class:`RateLimits`), the provider's
  ``x-ratelimit-remaining-*`` / ``x-ratelimit-reset-*`` headers (Anthropic:
  ``anthropic-ratelimit-*``), and a 429's ``retry-after``.

:func:`order_deployments` is the choice: pure, given a snapshot of those numbers and a random
source. Deployments whose breaker is open are left out; those without headroom go last, soonest
free first; the rest are ranked by the strategy, named as LiteLLM's router names them:

    simple-shuffle         weighted random order (``weight``, else ``rpm``, else ``tpm``, else even)
    least-busy             fewest calls in flight
    latency-based-routing  lowest expected latency for this request (untried first, as LiteLLM's
                           untried deployments count as 0, one probe call at a time);
                           ``lowest_latency_buffer`` picks at random among those within
                           (1 + buffer) x the lowest
    usage-based-routing    fewest tokens used in the last minute (LiteLLM's v2)
    cost-based-routing     lowest price (input + output per token)

A latency budget (``within_ms``) puts measured deployments expected to meet it first, untried ones
next and those expected to miss it last; ``fastest=True`` (a tight deadline) ranks by expected
latency whatever the strategy.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from worker.config.models import Deployment, RoutingStrategy
from worker.providers.breaker import BreakerSettings, CircuitBreaker
from worker.providers.types import CompletionResult, RateLimitInfo

# a rate-limit booking: the bucket a call was counted in and the tokens estimated for it
Booking = tuple[list[float], float]

WINDOW_S = 60.0  # rpm / tpm are per minute

__all__ = [
    "WINDOW_S",
    "DeploymentState",
    "LatencyFit",
    "Option",
    "RateLimitInfo",
    "RateLimits",
    "order_deployments",
    "parse_rate_limit_headers",
]


# ---------------------------------------------------------------- provider headers


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration_s(text: str) -> float | None:
    """OpenAI's reset durations (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) or plain seconds."""
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _rfc3339_in_s(text: str, now: float) -> float | None:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, at.timestamp() - now)


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(float(text))
    except ValueError:
        return None


class _Headers(Protocol):
    @property
    def raw(self) -> list[tuple[bytes, bytes]]: ...


_PREFIXES = (b"x-ratelimit-", b"anthropic-ratelimit-")


def parse_rate_limit_headers(
    headers: _Headers, *, wall_clock: Callable[[], float] = time.time
) -> RateLimitInfo | None:
    """The ``x-ratelimit-*`` (OpenAI and compatible) or ``anthropic-ratelimit-*`` headers of an
    answer (``httpx.Headers`` or the direct path's ``RawHeaders``, read in one pass); None when
    it has neither."""
    found: dict[bytes, str] = {}
    for name, value in headers.raw:
        if len(name) > 12 and name[:1] in b"xXaA":
            lower = name.lower()
            if lower.startswith(_PREFIXES):
                found[lower] = value.decode("latin-1")
    if not found:
        return None
    get = found.get
    remaining = get(b"x-ratelimit-remaining-requests")
    if remaining is not None or get(b"x-ratelimit-remaining-tokens") is not None:
        reset_r = get(b"x-ratelimit-reset-requests")
        reset_t = get(b"x-ratelimit-reset-tokens")
        return RateLimitInfo(
            _int(remaining),
            _int(get(b"x-ratelimit-remaining-tokens")),
            _duration_s(reset_r) if reset_r else None,
            _duration_s(reset_t) if reset_t else None,
        )
    remaining = get(b"anthropic-ratelimit-requests-remaining")
    if remaining is None and get(b"anthropic-ratelimit-tokens-remaining") is None:
        return None
    now = wall_clock()
    reset_r = get(b"anthropic-ratelimit-requests-reset")
    reset_t = get(b"anthropic-ratelimit-tokens-reset")
    return RateLimitInfo(
        _int(remaining),
        _int(get(b"anthropic-ratelimit-tokens-remaining")),
        _rfc3339_in_s(reset_r, now) if reset_r else None,
        _rfc3339_in_s(reset_t, now) if reset_t else None,
    )


# ---------------------------------------------------------------- latency


class LatencyFit:
    """Exponentially weighted least squares of latency on output tokens (``alpha``: the weight of
    the newest answer). ``expected_ms(n)`` = ttft + n x ms/token; with one distinct output length
    so far it is the weighted mean latency."""

    __slots__ = ("_alpha", "_n", "_x", "_xx", "_xy", "_y")

    def __init__(self, alpha: float = 0.2) -> None:
        self._alpha = alpha
        self._n = 0
        self._x = self._y = self._xx = self._xy = 0.0

    @property
    def samples(self) -> int:
        return self._n

    def add(self, output_tokens: int, latency_ms: float) -> None:
        x, y = float(max(output_tokens, 0)), max(latency_ms, 0.0)
        if self._n == 0:
            self._x, self._y, self._xx, self._xy = x, y, x * x, x * y
        else:
            a = self._alpha
            self._x += a * (x - self._x)
            self._y += a * (y - self._y)
            self._xx += a * (x * x - self._xx)
            self._xy += a * (x * y - self._xy)
        self._n += 1

    def _slope(self) -> float:
        var = self._xx - self._x * self._x
        if var <= 1e-9 * max(1.0, self._xx):
            return 0.0
        return max(0.0, (self._xy - self._x * self._y) / var)

    @property
    def mean_ms(self) -> float | None:
        return self._y if self._n else None

    @property
    def ttft_ms(self) -> float | None:
        """Latency with no output tokens (the intercept), clamped to [0, mean]."""
        if not self._n:
            return None
        return min(self._y, max(0.0, self._y - self._slope() * self._x))

    @property
    def ms_per_token(self) -> float | None:
        if not self._n:
            return None
        slope = self._slope()
        return slope if self._y - slope * self._x >= 0 else self._y / max(self._x, 1.0)

    def expected_ms(self, output_tokens: int) -> float | None:
        ttft, per_token = self.ttft_ms, self.ms_per_token
        if ttft is None or per_token is None:
            return None
        if per_token == 0.0:
            return self._y
        return ttft + per_token * max(output_tokens, 0)


# ---------------------------------------------------------------- rate limits


class RateLimits:
    """Our own counts against a deployment's rpm / tpm, scaled by this member's ``share`` of the
    group, plus what the provider told us (headers, a 429's retry-after).

    Calls are counted in one-second buckets (memory stays bounded at any rate), each bucket held
    until a full minute after its end: never less than a sliding minute, at most one second more.
    ``wait_s(tokens)`` is how long a call of ``tokens`` must wait before it fits (0: now);
    ``take(tokens)`` books it and returns a handle for :meth:`settle` with the real count."""

    __slots__ = (
        "_blocked_until",
        "_buckets",
        "_clock",
        "_requests",
        "_tokens",
        "bucket_s",
        "rpm",
        "share",
        "tpm",
        "track",
    )

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        clock: Callable[[], float] = time.monotonic,
        *,
        track: bool | None = None,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        # count calls (default: when there is a limit to count them against)
        self.track = track if track is not None else (rpm is not None or tpm is not None)
        self.share = 1.0
        self.bucket_s = 1.0
        self._clock = clock
        self._buckets: deque[list[float]] = deque()  # [start, requests, tokens]
        self._requests = 0.0
        self._tokens = 0.0
        self._blocked_until = 0.0  # from the provider: retry-after, or remaining 0 until reset

    def _prune(self, now: float) -> None:
        buckets, span = self._buckets, self.bucket_s + WINDOW_S
        while buckets and buckets[0][0] + span <= now:
            _, requests, tokens = buckets.popleft()
            self._requests -= requests
            self._tokens -= tokens

    def used(self) -> tuple[int, float]:
        """(requests, tokens) booked in the last minute."""
        self._prune(self._clock())
        return round(self._requests), max(self._tokens, 0.0)

    def wait_s(self, tokens: float) -> float:
        now = self._clock()
        wait = max(0.0, self._blocked_until - now)
        if not self.track:
            return wait
        self._prune(now)
        span = self.bucket_s + WINDOW_S
        if self.rpm is not None:
            excess = self._requests + 1 - max(1, math.floor(self.rpm * self.share))
            wait = max(wait, self._freed_at(excess, 1, span) - now)
        if self.tpm is not None and self._buckets:
            excess = self._tokens + tokens - self.tpm * self.share
            wait = max(wait, self._freed_at(excess, 2, span) - now)
        return wait

    def _freed_at(self, excess: float, column: int, span: float) -> float:
        """When enough of the booked ``column`` (1: requests, 2: tokens) leaves the window."""
        if excess <= 0:
            return 0.0
        freed = 0.0
        for bucket in self._buckets:
            freed += bucket[column]
            if freed >= excess:
                return bucket[0] + span
        return self._buckets[-1][0] + span if self._buckets else 0.0

    def take(self, tokens: float) -> Booking:
        if not self.track:
            return _NOT_BOOKED
        start = math.floor(self._clock() / self.bucket_s) * self.bucket_s
        buckets = self._buckets
        if buckets and buckets[-1][0] == start:
            bucket = buckets[-1]
            bucket[1] += 1
            bucket[2] += tokens
        else:
            bucket = [start, 1.0, float(tokens)]
            buckets.append(bucket)
        self._requests += 1
        self._tokens += tokens
        return bucket, float(tokens)

    def settle(self, booked: Booking, tokens: float) -> None:
        """Replace a booking's estimate by the tokens the answer reports."""
        bucket, estimate = booked
        if (
            bucket is not _NOT_BOOKED[0] and self._buckets and bucket[0] >= self._buckets[0][0]
        ):  # still in the window
            bucket[2] += tokens - estimate
            self._tokens += tokens - estimate

    def blocked_for(self, seconds: float) -> None:
        self._blocked_until = max(self._blocked_until, self._clock() + max(seconds, 0.0))

    def observe(self, info: RateLimitInfo, tokens_next: float) -> None:
        """Headers of an answer: no requests (or too few tokens) left -> blocked until reset."""
        if info.remaining_requests is not None and info.remaining_requests <= 0:
            self.blocked_for(info.reset_requests_s if info.reset_requests_s is not None else 1.0)
        if info.remaining_tokens is not None and info.remaining_tokens < tokens_next:
            self.blocked_for(info.reset_tokens_s if info.reset_tokens_s is not None else 1.0)


_NOT_BOOKED: Booking = ([0.0, 0.0, 0.0], 0.0)


# ---------------------------------------------------------------- one deployment


class DeploymentState:
    """Live state of one deployment in one client (one worker member)."""

    __slots__ = ("breaker", "deployment", "in_flight", "latency", "limits", "slots")

    def __init__(
        self,
        deployment: Deployment,
        breaker: BreakerSettings,
        clock: Callable[[], float] = time.monotonic,
        latency_alpha: float = 0.2,
    ) -> None:
        self.deployment = deployment
        self.breaker = CircuitBreaker(breaker, clock)
        self.slots = asyncio.Semaphore(deployment.spec.max_concurrent_calls)
        self.latency = LatencyFit(latency_alpha)
        limited = deployment.rpm is not None or deployment.tpm is not None
        self.limits = RateLimits(
            deployment.rpm,
            deployment.tpm,
            clock,
            track=limited or deployment.spec.routing_strategy == "usage-based-routing",
        )
        self.in_flight = 0

    @property
    def name(self) -> str:
        return self.deployment.name

    def record_answer(
        self, result: CompletionResult, latency_ms: float, booked: Booking, tokens_next: float
    ) -> None:
        """An answer came: its latency joins the fit, its usage replaces the booking's
        estimate, its rate-limit headers (if any) update the limits."""
        self.latency.add(result.usage.output_tokens, latency_ms)
        self.limits.settle(booked, result.usage.total_tokens)
        if result.rate_limit is not None:
            self.limits.observe(result.rate_limit, tokens_next)

    def expected_ms(self, output_tokens: int) -> float | None:
        """Expected time to answer a call with ``output_tokens``: queueing for a slot (calls
        waiting x mean latency / slots) + ttft + output tokens x ms/token. None: never measured."""
        fit = self.latency.expected_ms(output_tokens)
        if fit is None:
            return None
        slots = self.deployment.spec.max_concurrent_calls
        waiting = max(0, self.in_flight + 1 - slots)
        mean = self.latency.mean_ms or 0.0
        return fit + waiting * mean / slots

    def option(self, index: int, tokens: float, output_tokens: int) -> Option:
        spec = self.deployment.spec
        _, used_tokens = self.limits.used()
        return Option(
            index=index,
            name=self.name,
            open=self.breaker.state == "open",
            wait_s=self.limits.wait_s(tokens),
            in_flight=self.in_flight,
            expected_ms=self.expected_ms(output_tokens),
            used_tokens=used_tokens,
            price_per_mtok=spec.prices.input_usd_per_mtok + spec.prices.output_usd_per_mtok,
            weight=_shuffle_weight(self.deployment),
        )


def _shuffle_weight(d: Deployment) -> float:
    """simple-shuffle's weight, as LiteLLM reads it: ``weight``, then ``rpm``, then ``tpm``."""
    for value in (d.weight, d.rpm, d.tpm):
        if value is not None:
            return float(value)
    return 1.0


# ---------------------------------------------------------------- the choice


@dataclass(frozen=True, slots=True)
class Option:
    """A snapshot of one deployment for :func:`order_deployments`."""

    index: int
    name: str
    open: bool  # circuit breaker open: left out
    wait_s: float  # until it has rate-limit headroom (0: now)
    in_flight: int
    expected_ms: float | None  # None: not measured yet
    used_tokens: float
    price_per_mtok: float
    weight: float


def _fmt_ms(ms: float | None) -> str:
    return "untried" if ms is None else f"~{ms:.0f} ms"


def order_deployments(
    options: Sequence[Option],
    strategy: RoutingStrategy,
    rand: Callable[[], float],
    *,
    lowest_latency_buffer: float = 0.0,
    within_ms: float | None = None,
    fastest: bool = False,
) -> tuple[list[Option], str]:
    """The order to try the deployments in, and one line saying why the first one."""
    if len(options) == 1 and not options[0].open and options[0].wait_s <= 0:
        return [options[0]], "the only deployment"
    skipped = [f"{o.name} (circuit open)" for o in options if o.open]
    ready = [o for o in options if not o.open and o.wait_s <= 0]
    waiting = sorted((o for o in options if not o.open and o.wait_s > 0), key=lambda o: o.wait_s)
    skipped += [f"{o.name} (rate limit, {o.wait_s:.1f} s)" for o in waiting]
    rank = "latency-based-routing" if fastest else strategy
    ranked, why = _rank(ready, rank, rand, lowest_latency_buffer)
    if within_ms is not None:  # a budget is no time to explore: measured ones that meet it first
        meets = [o for o in ranked if o.expected_ms is not None and o.expected_ms <= within_ms]
        untried = [o for o in ranked if o.expected_ms is None]
        misses = [o for o in ranked if o.expected_ms is not None and o.expected_ms > within_ms]
        if misses and (meets or untried):
            missed = ", ".join(f"{o.name} ({_fmt_ms(o.expected_ms)})" for o in misses)
            why += f"; expected to miss {within_ms:.0f} ms: {missed}"
        if untried and meets and ranked[0].expected_ms is None:
            why += f"; {meets[0].name} first: {_fmt_ms(meets[0].expected_ms)} is measured"
        ranked = meets + untried + misses
    order = ranked + waiting
    if not order:
        return [], "no deployment available: " + ", ".join(skipped)
    if fastest:
        why = "tight deadline, fastest: " + why
    if not ranked:
        why = f"every deployment is at its rate limit; {order[0].name} frees first"
    reason = f"{rank}: {why}"
    if skipped:
        reason += "; skipped " + ", ".join(skipped)
    return order, reason


def _rank(
    ready: list[Option], strategy: RoutingStrategy, rand: Callable[[], float], buffer: float
) -> tuple[list[Option], str]:
    if not ready:
        return [], ""
    if strategy == "simple-shuffle":
        pool, out = list(ready), []
        while pool:
            total = sum(o.weight for o in pool)
            if total <= 0:
                out.extend(pool)
                break
            pick, acc = rand() * total, 0.0
            for i, o in enumerate(pool):
                acc += o.weight
                if pick < acc or i == len(pool) - 1:
                    out.append(pool.pop(i))
                    break
        first = out[0]
        share = first.weight / max(sum(o.weight for o in ready), 1e-12)
        return out, f"{first.name} drawn (weight {first.weight:g}, {share:.0%} of the draw)"
    if strategy == "least-busy":
        out = sorted(ready, key=lambda o: (o.in_flight, o.index))
        return out, f"{out[0].name} has the fewest calls in flight ({out[0].in_flight})"
    if strategy == "usage-based-routing":
        out = sorted(ready, key=lambda o: (o.used_tokens, o.index))
        return out, f"{out[0].name} used the fewest tokens this minute ({out[0].used_tokens:.0f})"
    if strategy == "cost-based-routing":
        out = sorted(ready, key=lambda o: (o.price_per_mtok, o.index))
        return out, f"{out[0].name} is the cheapest (${out[0].price_per_mtok:g}/Mtok in+out)"

    # latency-based-routing: untried ones first (explored), as LiteLLM counts them as 0, but one
    # probe at a time: an untried one with a call in flight waits for that answer (last)
    def key(o: Option) -> tuple[float, int]:
        if o.expected_ms is not None:
            return (o.expected_ms, o.index)
        return (0.0 if o.in_flight == 0 else math.inf, o.index)

    out = sorted(ready, key=key)
    low = out[0].expected_ms or 0.0
    if buffer > 0 and low > 0:
        near = [o for o in out if (o.expected_ms or 0.0) <= low * (1.0 + buffer)]
        if len(near) > 1:
            first = near[min(int(rand() * len(near)), len(near) - 1)]
            out = [first, *(o for o in out if o is not first)]
    first = out[0]
    if first.expected_ms is None:
        return out, f"{first.name} untried" + (" (its probe is out)" if first.in_flight else "")
    return out, f"{first.name} expected {_fmt_ms(first.expected_ms)}, the lowest"
