"""Decode + validate speed of the route request: msgspec vs pydantic v2 vs json + jsonschema.

Prints one JSON object: decodes per second and microseconds per decode for each library, on the
full example request (schemas/examples/route_request/valid/full.json). The project uses the fastest
that validates everything the JSON Schema does; see README.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import pydantic
from referencing import Registry, Resource

import schemas

ROOT = Path(__file__).resolve().parents[1]

RAW = (ROOT / "schemas/examples/route_request/valid/full.json").read_bytes()


class _P(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class PTextPart(_P):
    type: Literal["text"]
    text: str


class PImageUrl(_P):
    url: Annotated[str, pydantic.Field(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None


class PImagePart(_P):
    type: Literal["image_url"]
    image_url: PImageUrl


class PMessage(_P):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Annotated[PTextPart | PImagePart, pydantic.Field(discriminator="type")]]
    name: str | None = None
    tool_call_id: str | None = None


class PParams(_P):
    max_tokens: Annotated[int, pydantic.Field(ge=1)] | None = None
    temperature: Annotated[float, pydantic.Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, pydantic.Field(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    user: str | None = None


class PRouting(_P):
    policy: str | None = None
    threshold: float | None = None
    strong_fraction: float | None = None
    allowed_models: list[str] | None = None
    denied_models: list[str] | None = None
    max_cost_usd: Annotated[float, pydantic.Field(ge=0)] | None = None
    mode: Literal["interactive", "batch"] = "interactive"


class PRequest(_P):
    schema_version: Literal[1]
    request_id: Annotated[str, pydantic.Field(min_length=1, max_length=256)]
    tenant: Annotated[str, pydantic.Field(min_length=1, max_length=128)]
    messages: Annotated[list[PMessage], pydantic.Field(min_length=1)]
    created_at: pydantic.AwareDatetime
    params: PParams = PParams()
    routing: PRouting = PRouting()
    reply_topic: str | None = None
    deadline: pydantic.AwareDatetime | None = None
    metadata: dict[str, str] | None = None


def _jsonschema() -> Callable[[bytes], Any]:
    resources = []
    for path in (ROOT / "schemas").glob("*.schema.json"):
        contents = json.loads(path.read_text())
        resources.append((contents["$id"], Resource.from_contents(contents)))
    validator = jsonschema.Draft202012Validator(
        schemas.load_schema("route_request"), registry=Registry().with_resources(resources)
    )

    def run(raw: bytes) -> Any:
        data = json.loads(raw)
        validator.validate(data)
        return data

    return run


def _rate(fn: Callable[[bytes], Any], seconds: float = 1.0) -> float:
    for _ in range(200):
        fn(RAW)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            fn(RAW)
        n += 200
    return n / (time.perf_counter() - start)


def main() -> None:
    candidates: dict[str, Callable[[bytes], Any]] = {
        "msgspec": lambda raw: schemas.decode(raw, schemas.RouteRequest),
        "pydantic": PRequest.model_validate_json,
        "json+jsonschema": _jsonschema(),
    }
    out: dict[str, Any] = {"payload_bytes": len(RAW)}
    for name, fn in candidates.items():
        rate = _rate(fn)
        out[f"{name}_decodes_per_s"] = round(rate)
        out[f"{name}_us_per_decode"] = round(1e6 / rate, 2)
    out["msgspec_vs_pydantic"] = round(
        out["msgspec_decodes_per_s"] / out["pydantic_decodes_per_s"], 1
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
