"""The hostile-tenant matrix: many tenants on one request topic and one consumer group, hostile
requests and a hostile provider, through the real worker on a real broker.

    .venv/bin/python bench/tenants_bench.py [--out bench/results/tenants.json]

Uses KAFKA_BOOTSTRAP when set, else starts the project's local broker (and stops it). The
worker runs in this process with the provider simulator in echo mode (it repeats the caller's
API key in response headers, answers and model ids, and in error bodies: 10% plain-text 500s,
10% JSON 400s), a span exporter in memory and the JSON log handler writing to a buffer.

The matrix: tenants (locked to the weak model with no overrides; the strong model denied; a
per-request cap of 0.001 USD; an hourly spend limit of 0.02 USD; an unlimited one; unknown names
close to known ones) x hostile
routing asks (allow-lists naming the strong model, empty, unknown models; policy and threshold
overrides forcing the strong model; a raised budget) x hostile inputs (a 100 KB system prompt, a
30-turn history, four images, no max_tokens) x pairs of tenants using the same request ids.
Prints one JSON object of counts (goal 0 for each `*_violations`/`leaks` figure).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import schemas
from worker.app import build
from worker.config.models import STRONG_MODEL, WEAK_MODEL
from worker.config.telemetry import TelemetryConfig
from worker.kafka.table import read_to_end
from worker.kafka.topics import ensure_topics
from worker.logs import setup_logging
from worker.secrets import MIN_FRAGMENT
from worker.sim import Fault, SimConfig, Simulator
from worker.sim.harness import (
    dataset_rows,
    local_broker,
    poll_until,
    produce,
    read_all,
    replay_dataset,
    request_event,
    train_artifact,
    worker_config,
)
from worker.telemetry import Tracing, build_tracer_provider

ROWS = dataset_rows(600)
KEYS = {
    "SIM_OPENAI_API_KEY": "tok_9f8E7d6C5b4A3928170FedcbaQ",  # no sk- prefix
    "SIM_ANTHROPIC_API_KEY": "sk-ant-Zy98Xw76Vu54Ts32Rq10PoNm",
}
CAP_USD = 0.001
HOURLY_USD = 0.02  # low enough to bind within the matrix
TENANTS: dict[str, dict[str, Any]] = {
    "locked": {"allowed_models": [WEAK_MODEL], "allow_overrides": []},
    "nostrong": {"denied_models": [STRONG_MODEL]},
    "capped": {"max_cost_usd": CAP_USD},
    "hourly": {"spend_limit_usd_per_hour": HOURLY_USD},
    "open": {},
}
UNKNOWN = ["Locked", "locked ", "LOCKED", "open\u200b", "nobody"]
ASKS: list[dict[str, Any]] = [
    {},
    {"allowed_models": [STRONG_MODEL]},
    {"allowed_models": []},
    {"allowed_models": ["no-such-model"]},
    {"allowed_models": [STRONG_MODEL, WEAK_MODEL], "max_cost_usd": 100.0},
    {"policy": "strongest", "threshold": 0.0},
    {"strong_fraction": 1.0},
    {"denied_models": [WEAK_MODEL]},
]


def _inputs() -> list[tuple[str, list[schemas.Message], int | None]]:
    filler = "lorem ipsum dolor sit amet "
    big = (filler * (100_000 // len(filler) + 1))[:100_000]
    image = schemas.ImagePart(image_url=schemas.ImageUrl(url="https://example.test/i.png"))
    return [
        ("short", [schemas.Message(role="user", content=ROWS[0]["prompt"])], 64),
        ("no_max_tokens", [schemas.Message(role="user", content=ROWS[1]["prompt"])], None),
        (
            "system_100kb",
            [
                schemas.Message(role="system", content=big),
                schemas.Message(role="user", content="hi?"),
            ],
            64,
        ),
        (
            "history_30",
            [
                schemas.Message(
                    role="user" if i % 2 == 0 else "assistant", content=(filler * 80)[:2000]
                )
                for i in range(30)
            ]
            + [schemas.Message(role="user", content="and now?")],
            64,
        ),
        (
            "images_4",
            [
                schemas.Message(
                    role="user", content=[image] * 4 + [schemas.TextPart(text="describe")]
                )
            ],
            64,
        ),
    ]


async def _drain(bootstrap: str, topic: str) -> list[Any]:
    """Every record of `topic`, from its start to its end offsets."""
    return await read_to_end({"bootstrap_servers": bootstrap}, topic)


def _fragments(text: str) -> int:
    low = text.lower()
    n = 0
    for key in KEYS.values():
        k = key.lower()
        n += sum(k[i : i + MIN_FRAGMENT] in low for i in range(len(k) - MIN_FRAGMENT + 1))
    return n


def _allowed(tenant: str, ask: dict[str, Any]) -> set[str]:
    """The models a request may be answered by, worked out here independently of the worker."""
    t = TENANTS.get(tenant)
    if t is None:
        return set()  # unknown tenants are rejected
    models = {STRONG_MODEL, WEAK_MODEL}
    if t.get("allowed_models") is not None:
        models &= set(t["allowed_models"])
    models -= set(t.get("denied_models", ()))
    if ask.get("allowed_models") is not None:
        models &= set(ask["allowed_models"])
    models -= set(ask.get("denied_models", ()))
    return models


async def run(bootstrap: str, workdir: Path) -> dict[str, Any]:
    os.environ.update(KEYS)
    artifact = train_artifact(workdir / "router", ROWS)
    prefix = f"tenants-bench-{int(time.time())}"
    topics = {
        "requests": prefix,
        "responses": f"{prefix}.responses",
        "decisions": f"{prefix}.decisions",
        "dlq": f"{prefix}.dlq",
        "done": f"{prefix}.done",
        "feedback": f"{prefix}.feedback",
        "batch_jobs": f"{prefix}.batch-jobs",
        "control": f"{prefix}.control",
        "shadow": f"{prefix}.shadow",
    }
    sim_config = SimConfig(
        seed=3,
        echo_key=("header", "answer", "model"),
        faults=(Fault(kind="echo_text", rate=0.1), Fault(kind="echo_json", rate=0.1)),
    )
    exporter = InMemorySpanExporter()
    provider = build_tracer_provider(TelemetryConfig())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    logs = io.StringIO()
    handler = setup_logging(logging.INFO, logs)
    try:
        async with Simulator(sim_config, replay_dataset(ROWS)) as sim:
            config = worker_config(
                bootstrap,
                topics,
                artifact,
                sim.base_url,
                tenants=TENANTS,
                unknown_tenant="reject",
                policies={
                    "default": {"kind": "threshold", "strong_fraction": 0.3},
                    "strongest": {"kind": "threshold", "threshold": 0.0},
                },
                loop={"max_request_bytes": 2_000_000},
                shadow={"sample": 0.2},
            )
            await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
            sent: list[tuple[str, str, dict[str, Any], str]] = []
            values: list[tuple[bytes | None, bytes]] = []
            names = [*TENANTS, *UNKNOWN]
            product = itertools.product(names, ASKS, _inputs())
            for i, (tenant, ask, (label, messages, max_tokens)) in enumerate(product, 1):
                rid = f"h-{i}"
                params = schemas.GenerationParams(max_tokens=max_tokens)
                event = request_event(
                    ROWS[i % len(ROWS)],
                    i,
                    request_id=rid,
                    tenant=tenant,
                    messages=messages,
                    params=params,
                    routing=schemas.RoutingOptions(**ask),
                )
                sent.append((tenant, rid, ask, label))
                values.append((rid.encode(), schemas.encode(event)))
            # the same ids from two tenants, interleaved, then repeated after the first answers
            for j in range(40):
                for tenant in ("open", "nostrong"):
                    rid = f"same-{j}"
                    event = request_event(ROWS[j], j, request_id=rid, tenant=tenant)
                    sent.append((tenant, rid, {}, "same_id"))
                    values.append((rid.encode(), schemas.encode(event)))
            await produce(bootstrap, topics["requests"], values)
            tracing = Tracing(TelemetryConfig(), tracer_provider=provider)
            app = build(config, tracing=tracing)
            task = asyncio.create_task(app.worker.run())
            try:
                await poll_until(lambda: app.worker.stats["published"] >= len(sent), 600)
                # the same ids again from a third tenant, after every first answer is out
                late = []
                for j in range(40):
                    event = request_event(ROWS[j], j, request_id=f"same-{j}", tenant="capped")
                    sent.append(("capped", f"same-{j}", {}, "same_id_late"))
                    late.append((f"same-{j}".encode(), schemas.encode(event)))
                await produce(bootstrap, topics["requests"], late)
                await poll_until(lambda: app.worker.stats["published"] >= len(sent), 300)
                await app.pipeline.close_shadow(30)
            finally:
                app.worker.stop()
                await asyncio.wait_for(task, timeout=120)
                await app.close()
        responses = [
            schemas.decode(r.value, schemas.RouteResponse)
            for r in await read_all(bootstrap, topics["responses"], len(sent), 120)
        ]
        topic_bytes = ""
        for name in ("responses", "decisions", "dlq", "done", "feedback", "shadow"):
            for r in await _drain(bootstrap, topics[name]):
                topic_bytes += (r.key or b"").decode(errors="replace")
                topic_bytes += (r.value or b"").decode(errors="replace")
                topic_bytes += "".join(
                    f"{k}={v.decode(errors='replace')}" for k, v in (r.headers or ())
                )
    finally:
        logging.getLogger().removeHandler(handler)
        provider.shutdown()

    by_key = {(r.tenant, r.request_id): r for r in responses}
    answered_twice = sum(
        n - 1 for n in Counter((r.tenant, r.request_id) for r in responses).values()
    )
    ineligible = over_cap_usd = 0.0
    cases: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    suppressed = 0
    hourly_spend = sum(r.cost_usd for r in responses if r.tenant == "hourly")
    hourly_refused = sum(
        r.tenant == "hourly" and r.error is not None and "spend limit" in r.error.message
        for r in responses
    )
    for tenant, rid, ask, label in sent:
        cases[label] += 1
        r = by_key.get((tenant, rid))
        if r is None:
            suppressed += 1
            continue
        statuses[r.status if r.error is None else f"{r.status}:{r.error.type}"] += 1
        if r.status == "ok" and label not in ("same_id", "same_id_late"):
            ineligible += r.model not in _allowed(tenant, ask)
        if tenant == "capped" and label not in ("same_id", "same_id_late"):
            budget = min(CAP_USD, ask.get("max_cost_usd", CAP_USD))
            over_cap_usd += max(0.0, r.cost_usd - budget)
    spans = []
    for span in exporter.get_finished_spans():
        spans.append(span.name)
        spans += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        for event in span.events:
            spans += [f"{k}={v}" for k, v in (event.attributes or {}).items()]
        spans.append(span.status.description or "")
    span_text = "\n".join(spans)
    return {
        "hostile_cases_tried": len(sent),
        "cases_by_input": dict(cases),
        "tenants": {"configured": len(TENANTS), "unknown_names_tried": len(UNKNOWN)},
        "outcomes": dict(statuses),
        "answered_by_ineligible_model": int(ineligible),
        "suppressed_by_another_tenant": suppressed,
        "answered_twice": answered_twice,
        "over_cap_spend_usd": round(over_cap_usd, 6),
        "spend_limit": {
            "tenant_limit_usd_per_hour": HOURLY_USD,
            "spent_usd": round(hourly_spend, 6),
            "over_limit_usd": round(max(0.0, hourly_spend - HOURLY_USD), 6),
            "requests_refused_by_the_limit": hourly_refused,
            "members": 1,
        },
        "secret_fragments": {
            "logs": _fragments(logs.getvalue()),
            "topics": _fragments(topic_bytes),
            "spans": _fragments(span_text),
        },
        "scanned": {
            "log_bytes": len(logs.getvalue()),
            "topic_bytes": len(topic_bytes),
            "spans": len(exporter.get_finished_spans()),
        },
        "provider": {
            "echo_key": list(sim_config.echo_key),
            "faults": ["echo_text:0.1", "echo_json:0.1"],
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    async with local_broker("bench") as bootstrap:
        with tempfile.TemporaryDirectory() as tmp:
            out = await run(bootstrap, Path(tmp))
    text = json.dumps(out)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
