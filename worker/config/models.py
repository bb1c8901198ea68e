"""The model catalogue: logical model name -> provider, endpoint, key env var, prices, limits.

Frozen and typed; built once from a plain mapping (the ``[models.NAME]`` tables of the TOML
config) with :meth:`Catalogue.from_dict`::

    {"models": {"gpt-4o-mini": {
        "provider": "openai", "base_url": "https://api.openai.com/v1",
        "api_key_env": "OPENAI_API_KEY", "provider_model": "gpt-4o-mini",
        "input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6,
        "cached_input_usd_per_mtok": 0.075, "batch_discount": 0.5,
        "context_window_tokens": 128000, "logprobs": true, "batch": true,
        "max_concurrent_calls": 256}}}

``base_url`` follows each official SDK: OpenAI-compatible URLs end in ``/v1``; Anthropic's is
the host root (``https://api.anthropic.com``). The catalogue holds the *name* of the key's
environment variable, never the key.

A model may be served by several deployments (regions, accounts, providers of one open model)::

    {"models": {"llama-3-70b": {
        "context_window_tokens": 8192, "routing_strategy": "latency-based-routing",
        "input_usd_per_mtok": 0.6, "output_usd_per_mtok": 0.8, "provider": "openai",
        "provider_model": "llama-3-70b",
        "deployments": [
            {"name": "together", "base_url": "https://api.together.xyz/v1",
             "api_key_env": "TOGETHER_API_KEY", "rpm": 600, "tpm": 200000, "weight": 2},
            {"name": "groq", "base_url": "https://api.groq.com/openai/v1",
             "api_key_env": "GROQ_API_KEY", "provider_model": "llama3-70b-8192",
             "input_usd_per_mtok": 0.59, "output_usd_per_mtok": 0.79}]}}}

A deployment names what differs; the rest comes from the model's own keys. The model's
``ModelSpec`` fields are its first deployment's; ``ModelSpec.deployments`` lists them all.
``routing_strategy`` is one of LiteLLM's router strategy names (see
worker.providers.deployments).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, get_args

import msgspec

from worker.config.base import Section

if TYPE_CHECKING:
    from worker.providers.types import ProviderKind, Usage

_MTOK = 1_000_000.0

RoutingStrategy = Literal[
    "simple-shuffle",
    "least-busy",
    "latency-based-routing",
    "usage-based-routing",
    "cost-based-routing",
]
# the short spellings (and LiteLLM's v2 name, which is what ours does) mean the same
STRATEGY_ALIASES: Mapping[str, RoutingStrategy] = MappingProxyType(
    {
        "latency-based": "latency-based-routing",
        "usage-based": "usage-based-routing",
        "usage-based-routing-v2": "usage-based-routing",
        "cost-based": "cost-based-routing",
    }
)
STRATEGIES: tuple[RoutingStrategy, ...] = get_args(RoutingStrategy)


@dataclass(frozen=True, slots=True)
class Prices:
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    cached_input_usd_per_mtok: float | None = None  # None: cached input costs like input
    batch_discount: float = 0.5  # fraction taken off every price in the Batch APIs

    def cost_usd(self, usage: Usage, *, batch: bool = False) -> float:
        cached_price = (
            self.input_usd_per_mtok
            if self.cached_input_usd_per_mtok is None
            else self.cached_input_usd_per_mtok
        )
        uncached = max(usage.input_tokens - usage.cached_input_tokens, 0)
        cost = (
            uncached * self.input_usd_per_mtok
            + usage.cached_input_tokens * cached_price
            + usage.output_tokens * self.output_usd_per_mtok
        ) / _MTOK
        return cost * (1.0 - self.batch_discount) if batch else cost


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    provider: ProviderKind
    base_url: str
    api_key_env: str
    provider_model: str
    prices: Prices
    context_window_tokens: int
    supports_logprobs: bool = False
    supports_batch: bool = False
    max_concurrent_calls: int = 256
    default_max_tokens: int = 1024  # Anthropic requires max_tokens; used when a request has none
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # several deployments of this model (empty: one, described by the fields above)
    deployments: tuple[Deployment, ...] = ()
    routing_strategy: RoutingStrategy = "simple-shuffle"
    lowest_latency_buffer: float = 0.0  # latency-based-routing: pick among those within it

    def cost_usd(self, usage: Usage, *, batch: bool = False) -> float:
        return self.prices.cost_usd(usage, batch=batch)

    @property
    def all_deployments(self) -> tuple[Deployment, ...]:
        """The deployments serving this model: the listed ones, else the model itself."""
        return self.deployments or (Deployment(DEFAULT_DEPLOYMENT, self, listed=False),)


DEFAULT_DEPLOYMENT = "default"


@dataclass(frozen=True, slots=True)
class Deployment:
    """One place that serves a model: ``spec`` is the model as this deployment serves it (its
    provider, base URL, key variable, provider model id, prices and concurrency). ``rpm`` /
    ``tpm``: the provider's limits for it (requests / tokens per minute, for the whole group);
    ``weight``: its share in ``simple-shuffle``. ``listed``: named in the catalogue (False for the
    implicit deployment of a model that lists none)."""

    name: str
    spec: ModelSpec
    rpm: int | None = None
    tpm: int | None = None
    weight: float | None = None
    listed: bool = True


class _DeploymentEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    provider: Literal["openai", "anthropic"] | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    provider_model: str | None = None
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None
    cached_input_usd_per_mtok: float | None = None
    max_concurrent_calls: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    weight: float | None = None


class _Entry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    context_window_tokens: int
    provider: Literal["openai", "anthropic"] | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    provider_model: str | None = None
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None
    cached_input_usd_per_mtok: float | None = None
    batch_discount: float = 0.5
    logprobs: bool = False
    batch: bool = False
    max_concurrent_calls: int = 256
    default_max_tokens: int = 1024
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    deployments: tuple[_DeploymentEntry, ...] = ()
    routing_strategy: str = "simple-shuffle"
    lowest_latency_buffer: float = 0.0
    rpm: int | None = None  # the single deployment's limits (a model that lists none)
    tpm: int | None = None


class ProviderSettings(Section, frozen=True, kw_only=True):
    """`[providers]`: timeouts, retries and limits of every model call."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    max_retries: int = 2
    request_deadline_s: float = 300.0  # when the request carries no deadline
    max_connections: int = 2_000
    # several deployments per model (docs/deployments-per-model.md)
    rate_limit_max_wait_s: float = 30.0  # longest wait for rate-limit headroom, else reroute
    failover_timeout_min_s: float = 2.0  # a try with deployments after it: max(this,
    failover_timeout_factor: float = 5.0  # this x its expected latency)
    max_answer_bytes: int = 4 * 1024 * 1024  # longer answers: MalformedResponseError, no retry


class CatalogueError(ValueError):
    """The catalogue mapping is not valid (names the model and the field)."""


@dataclass(frozen=True, slots=True)
class Catalogue(Mapping[str, "ModelSpec"]):
    """The models by name: a read-only mapping (`catalogue[name]`, `in`, `items()`)."""

    models: Mapping[str, ModelSpec]

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    def __getitem__(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise KeyError(f"model {name!r} is not in the catalogue") from None

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def __iter__(self) -> Iterator[str]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    @classmethod
    def of(cls, *specs: ModelSpec) -> Catalogue:
        return cls({s.name: s for s in specs})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Catalogue:
        """Build from ``{"models": {name: {...}}}`` (or the inner mapping directly)."""
        models = data.get("models", data)
        if not isinstance(models, Mapping) or not models:
            raise CatalogueError("catalogue needs a non-empty 'models' table")
        specs: dict[str, ModelSpec] = {}
        for name, raw in models.items():
            try:
                e = msgspec.convert(raw, _Entry)
            except msgspec.ValidationError as exc:
                raise CatalogueError(f"model {name!r}: {exc}") from None
            specs[str(name)] = _model_spec(str(name), e)
        return cls(specs)


_REQUIRED = (
    "provider",
    "base_url",
    "api_key_env",
    "provider_model",
    "input_usd_per_mtok",
    "output_usd_per_mtok",
)


def _model_spec(name: str, e: _Entry) -> ModelSpec:
    where = f"model {name!r}"
    if not 0.0 <= e.batch_discount < 1.0:
        raise CatalogueError(f"{where}: batch_discount must be in [0, 1)")
    if e.context_window_tokens < 1:
        raise CatalogueError(f"{where}: context_window_tokens must be >= 1")
    strategy = STRATEGY_ALIASES.get(e.routing_strategy, e.routing_strategy)
    if strategy not in STRATEGIES:
        raise CatalogueError(
            f"{where}: routing_strategy {e.routing_strategy!r} is not one of "
            f"{', '.join(STRATEGIES)}"
        )
    if e.lowest_latency_buffer < 0:
        raise CatalogueError(f"{where}: lowest_latency_buffer must be >= 0")
    entries = e.deployments or (_DeploymentEntry(name=DEFAULT_DEPLOYMENT, rpm=e.rpm, tpm=e.tpm),)
    if e.deployments and (e.rpm is not None or e.tpm is not None):
        raise CatalogueError(f"{where}: with deployments, rpm and tpm go on each deployment")
    if len({d.name for d in entries}) != len(entries):
        raise CatalogueError(f"{where}: deployment names must be distinct")
    deployments: list[Deployment] = []
    for d in entries:
        dwhere = f"{where} deployment {d.name!r}" if e.deployments else where
        values = {
            f: getattr(d, f) if getattr(d, f) is not None else getattr(e, f) for f in _REQUIRED
        }
        missing = [f for f, v in values.items() if v is None]
        if missing:
            raise CatalogueError(f"{dwhere}: {', '.join(missing)} required")
        for field_name in ("input_usd_per_mtok", "output_usd_per_mtok"):
            if values[field_name] < 0:
                raise CatalogueError(f"{dwhere}: {field_name} must be >= 0")
        slots = (
            d.max_concurrent_calls if d.max_concurrent_calls is not None else e.max_concurrent_calls
        )
        if slots < 1:
            raise CatalogueError(f"{dwhere}: max_concurrent_calls must be >= 1")
        for limit in ("rpm", "tpm"):
            value = getattr(d, limit)
            if value is not None and value < 1:
                raise CatalogueError(f"{dwhere}: {limit} must be >= 1")
        if d.weight is not None and d.weight < 0:
            raise CatalogueError(f"{dwhere}: weight must be >= 0")
        cached = (
            d.cached_input_usd_per_mtok
            if d.cached_input_usd_per_mtok is not None
            else e.cached_input_usd_per_mtok
        )
        spec = ModelSpec(
            name=name,
            provider=values["provider"],
            base_url=values["base_url"].rstrip("/"),
            api_key_env=values["api_key_env"],
            provider_model=values["provider_model"],
            prices=Prices(
                values["input_usd_per_mtok"],
                values["output_usd_per_mtok"],
                cached,
                e.batch_discount,
            ),
            context_window_tokens=e.context_window_tokens,
            supports_logprobs=e.logprobs,
            supports_batch=e.batch,
            max_concurrent_calls=slots,
            default_max_tokens=e.default_max_tokens,
            max_tokens_param=e.max_tokens_param,
            routing_strategy=strategy,
            lowest_latency_buffer=e.lowest_latency_buffer,
        )
        deployments.append(
            Deployment(d.name, spec, d.rpm, d.tpm, d.weight, listed=bool(e.deployments))
        )
    first = deployments[0].spec
    if not e.deployments and e.rpm is None and e.tpm is None:
        return first  # one implicit deployment: the model itself
    return replace(first, deployments=tuple(deployments))


# The models the local simulator serves by default: the two of the routing dataset (their
# public list prices at the time of the data) and one Anthropic model that replays the weak
# model's labels. Point them at a simulator with :func:`simulator_catalogue`.
STRONG_MODEL = "gpt-4-1106-preview"
WEAK_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ANTHROPIC_MODEL = "claude-3-haiku-20240307"


def simulator_catalogue(base_url: str, *, max_concurrent_calls: int = 10_000) -> Catalogue:
    """A catalogue whose models all point at the simulator at ``base_url`` (no ``/v1``)."""
    root = base_url.rstrip("/")
    return Catalogue.from_dict(
        {
            STRONG_MODEL: {
                "provider": "openai",
                "base_url": f"{root}/v1",
                "api_key_env": "SIM_OPENAI_API_KEY",
                "provider_model": STRONG_MODEL,
                "input_usd_per_mtok": 10.0,
                "output_usd_per_mtok": 30.0,
                "cached_input_usd_per_mtok": 5.0,
                "context_window_tokens": 128_000,
                "logprobs": True,
                "batch": True,
                "max_concurrent_calls": max_concurrent_calls,
            },
            WEAK_MODEL: {
                "provider": "openai",
                "base_url": f"{root}/v1",
                "api_key_env": "SIM_OPENAI_API_KEY",
                "provider_model": WEAK_MODEL,
                "input_usd_per_mtok": 0.6,
                "output_usd_per_mtok": 0.6,
                "context_window_tokens": 32_768,
                "logprobs": True,
                "batch": True,
                "max_concurrent_calls": max_concurrent_calls,
            },
            ANTHROPIC_MODEL: {
                "provider": "anthropic",
                "base_url": root,
                "api_key_env": "SIM_ANTHROPIC_API_KEY",
                "provider_model": ANTHROPIC_MODEL,
                "input_usd_per_mtok": 0.25,
                "output_usd_per_mtok": 1.25,
                "cached_input_usd_per_mtok": 0.03,
                "context_window_tokens": 200_000,
                "batch": True,
                "max_concurrent_calls": max_concurrent_calls,
            },
        }
    )
