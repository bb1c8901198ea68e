"""Simulator configuration: latency distributions, fault injection, batch timings.

CLI spellings (``llmroute sim-provider``):

    --latency fixed:250          250 ms every call (a bare number means the same)
    --latency uniform:100:400    uniform between 100 and 400 ms
    --latency lognormal:300:0.6  lognormal with median 300 ms and sigma 0.6
    --fault 429:0.1              10% of calls get 429 with retry-after (default 1 s)
    --fault 500@1,2,3            the 1st, 2nd and 3rd matching calls get 500
    --fault 529:0.05:model=claude-3-haiku-20240307
    --fault timeout:0.01:hang=30 1% of calls hang 30 s before answering (beyond client timeouts)
    --fault reset:0.01           1% of connections reset (RST) instead of an answer
    --fault malformed:0.01       1% of calls get 200 with a truncated JSON body
    --fault quota:1              429 insufficient_quota (never clears by waiting)
    --fault 429:1:retry_after=0.2:api=openai

Kinds: 429, quota, 500, 503, 529 (on the OpenAI API it becomes 503 "overloaded"), timeout,
reset, malformed. Options: model=NAME (repeatable with '|'), api=openai|anthropic,
retry_after=SECONDS, hang=SECONDS.

One simulator stands for one deployment: several deployments of a model are several simulators,
each with its own latency profile (``latency`` until the answer starts, plus
``per_output_token_ms`` per output token), its own ``rate_limit`` (requests / tokens per minute:
beyond it a 429 with ``retry-after`` and the ``x-ratelimit-*`` headers OpenAI sends; every answer
carries them) and its own outages (``Simulator.set_outage``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, cast

LatencyKind = Literal["fixed", "uniform", "lognormal"]
FaultKind = Literal[
    "429", "quota", "500", "503", "529", "timeout", "reset", "malformed", "echo_text", "echo_json"
]
_FAULT_KINDS: tuple[FaultKind, ...] = (
    "429",
    "quota",
    "500",
    "503",
    "529",
    "timeout",
    "reset",
    "malformed",
    "echo_text",  # a 500 whose plain-text body holds the caller's key, ending at character 301
    "echo_json",  # a 400 whose JSON error echoes the key in its message, code and type
)
# a hostile provider: where successful answers echo the caller's key
EchoPlace = Literal["header", "answer", "model"]
ApiName = Literal["openai", "anthropic", "any"]


@dataclass(frozen=True, slots=True)
class Latency:
    kind: LatencyKind = "fixed"
    ms: float = 0.0  # fixed value, uniform low bound, lognormal median
    high_ms: float = 0.0  # uniform high bound
    sigma: float = 0.0  # lognormal shape

    def sample_ms(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.ms
        if self.kind == "uniform":
            return rng.uniform(self.ms, self.high_ms)
        return self.ms * math.exp(rng.gauss(0.0, self.sigma))

    @classmethod
    def parse(cls, text: str) -> Latency:
        parts = text.split(":")
        try:
            if len(parts) == 1:
                return cls("fixed", float(parts[0]))
            kind, nums = parts[0], [float(p) for p in parts[1:]]
            if kind == "fixed" and len(nums) == 1:
                return cls("fixed", nums[0])
            if kind == "uniform" and len(nums) == 2 and nums[0] <= nums[1]:
                return cls("uniform", nums[0], nums[1])
            if kind == "lognormal" and len(nums) == 2:
                return cls("lognormal", nums[0], sigma=nums[1])
        except ValueError:
            pass
        raise ValueError(
            f"bad latency {text!r}: use fixed:MS, uniform:LO:HI or lognormal:MEDIAN:SIGMA"
        )


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    rate: float = 0.0  # probability per matching call
    at: tuple[int, ...] = ()  # 1-based numbers of matching calls that get the fault
    models: tuple[str, ...] = ()  # empty: every model
    api: ApiName = "any"
    retry_after_s: float | None = 1.0  # 429: retry-after / retry-after-ms headers; None: none
    hang_s: float = 3600.0  # timeout: how long the answer is held back

    def matches(self, api: str, model: str) -> bool:
        return (self.api in ("any", api)) and (not self.models or model in self.models)

    @classmethod
    def parse(cls, text: str) -> Fault:
        head, *opts = text.split(":")
        rate = 0.0
        at: tuple[int, ...] = ()
        kind: str = head
        if "@" in head:
            kind, nums = head.split("@", 1)
            at = tuple(int(n) for n in nums.split(",") if n)
        elif opts and "=" not in opts[0]:
            rate = float(opts.pop(0))
        if kind not in _FAULT_KINDS:
            raise ValueError(f"bad fault kind {kind!r}: one of {', '.join(_FAULT_KINDS)}")
        values: dict[str, str] = {}
        for opt in opts:
            key, sep, value = opt.partition("=")
            if not sep:
                raise ValueError(f"bad fault option {opt!r} in {text!r}")
            values[key] = value
        unknown = set(values) - {"model", "api", "retry_after", "hang"}
        if unknown:
            raise ValueError(f"unknown fault options {sorted(unknown)} in {text!r}")
        api = values.get("api", "any")
        if api not in ("openai", "anthropic", "any"):
            raise ValueError(f"bad api {api!r} in {text!r}")
        retry_after = values.get("retry_after")
        return cls(
            kind=kind,
            rate=rate,
            at=at,
            models=tuple(m for m in values.get("model", "").split("|") if m),
            api=cast(ApiName, api),
            retry_after_s=1.0 if retry_after is None else (float(retry_after) or None),
            hang_s=float(values.get("hang", 3600.0)),
        )


DEFAULT_ALIASES: Mapping[str, str] = MappingProxyType(
    {"claude-3-haiku-20240307": "mistralai/Mixtral-8x7B-Instruct-v0.1"}
)


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """How simulated batch jobs progress (seconds on the simulator's clock)."""

    validating_s: float = 0.1
    in_progress_s: float = 0.5  # items finish evenly spread over this span
    finalizing_s: float = 0.1
    cancel_delay_s: float = 0.1  # cancelling/canceling -> cancelled/ended
    expire_after_s: float | None = None  # None: never expires
    item_error_rate: float = 0.0  # per-item 500 (OpenAI error file) / errored (Anthropic)
    malformed_line_rate: float = 0.0  # output lines written as broken JSON


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A provider's limits per API key, per minute (None: none). Tokens count as OpenAI counts
    them for its limits: the prompt plus ``max_tokens``."""

    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class SimConfig:
    latency: Latency = field(default_factory=Latency)
    faults: tuple[Fault, ...] = ()
    seed: int = 0
    models: tuple[str, ...] = ()  # served model ids; empty: any model id is served
    # model id -> dataset model name; by default the simulated Anthropic model replays the
    # weak model's labels (see worker.config.models.simulator_catalogue)
    aliases: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ALIASES))
    default_accuracy: float = 0.7  # for prompts or models the dataset does not know
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # accepted; empty: any non-empty
    answer_key: str = "llmroute-sim"  # HMAC key of the grading markers (see worker.sim.answers)
    # judge prompts (see worker.sim.answers, "Judging"): how often the simulated judge's verdict
    # agrees with the graded truth, and how often it prefers the first answer of an even pair
    judge_accuracy: float = 0.9
    judge_position_bias: float = 0.7
    batch: BatchTiming = field(default_factory=BatchTiming)
    per_output_token_ms: float = 0.0  # added to `latency` per output token of the answer
    rate_limit: RateLimit | None = None
    # echo the caller's API key (as sent, upper-cased, glued to letters, without its first
    # characters) in response headers (x-request-id / request-id and x-echo), the answer text,
    # or the model id of successful answers; see also the echo_text / echo_json faults
    echo_key: tuple[EchoPlace, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "aliases", MappingProxyType(dict(self.aliases)))
