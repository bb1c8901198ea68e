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
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import msgspec

from worker.providers.types import ProviderKind, Usage

_MTOK = 1_000_000.0


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

    def cost_usd(self, usage: Usage, *, batch: bool = False) -> float:
        return self.prices.cost_usd(usage, batch=batch)


class _Entry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    provider: Literal["openai", "anthropic"]
    base_url: str
    api_key_env: str
    provider_model: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    context_window_tokens: int
    cached_input_usd_per_mtok: float | None = None
    batch_discount: float = 0.5
    logprobs: bool = False
    batch: bool = False
    max_concurrent_calls: int = 256
    default_max_tokens: int = 1024
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"


class CatalogueError(ValueError):
    """The catalogue mapping is not valid (names the model and the field)."""


@dataclass(frozen=True, slots=True)
class Catalogue:
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
            for field_name in ("input_usd_per_mtok", "output_usd_per_mtok"):
                if getattr(e, field_name) < 0:
                    raise CatalogueError(f"model {name!r}: {field_name} must be >= 0")
            if not 0.0 <= e.batch_discount < 1.0:
                raise CatalogueError(f"model {name!r}: batch_discount must be in [0, 1)")
            if e.max_concurrent_calls < 1 or e.context_window_tokens < 1:
                raise CatalogueError(
                    f"model {name!r}: max_concurrent_calls and context_window_tokens must be >= 1"
                )
            specs[str(name)] = ModelSpec(
                name=str(name),
                provider=e.provider,
                base_url=e.base_url.rstrip("/"),
                api_key_env=e.api_key_env,
                provider_model=e.provider_model,
                prices=Prices(
                    e.input_usd_per_mtok,
                    e.output_usd_per_mtok,
                    e.cached_input_usd_per_mtok,
                    e.batch_discount,
                ),
                context_window_tokens=e.context_window_tokens,
                supports_logprobs=e.logprobs,
                supports_batch=e.batch,
                max_concurrent_calls=e.max_concurrent_calls,
                default_max_tokens=e.default_max_tokens,
                max_tokens_param=e.max_tokens_param,
            )
        return cls(specs)


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
