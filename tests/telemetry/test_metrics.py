"""Metrics, health and readiness over real HTTP from the asyncio ops server."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.metrics import Health, OpsServer, OpsServerConfig, WorkerMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def feed(m: WorkerMetrics) -> None:
    with m.track_in_flight():
        m.observe_route(0.00004, cache_hit=False)
        m.observe_route(0.00020, cache_hit=True)
        m.observe_request("small", "ok", 0.8)
        m.observe_request("strong", "ok", 2.0)
        m.observe_request(None, "error", 0.01)
        m.add_cost("small", 0.001, always_strong_cost_usd=0.010)
        m.add_cost("strong", 0.012, always_strong_cost_usd=0.010)
        m.set_consumer_lag("llm.requests", 0, 12)
        m.set_consumer_lag("llm.requests", 1, 3)
        m.dead_letter("ValidationError")
        m.retry("small")
        m.fallback("small", "strong")
        m.escalation("small", "strong")
        m.redelivery_skipped()
        m.observe_unfamiliar(0.42)
        m.observe_unfamiliar(1.7)
    m.forget_partition("llm.requests", 1)
    m.forget_partition("llm.requests", 9)  # never assigned: no error


@pytest.fixture
async def ops():
    metrics, clock = WorkerMetrics(), Clock()
    health = Health(liveness_timeout_s=30, clock=clock)
    server = OpsServer(metrics, health, OpsServerConfig(port=0, lag_probe_interval_s=0.01))
    async with server, httpx.AsyncClient(base_url=server.url) as client:
        yield server, client, clock


async def test_metrics_endpoint_serves_what_the_loop_fed(ops):
    server, client, _ = ops
    feed(server.metrics)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(response.text)
    assert got[("llmroute_requests_total", (("model", "small"), ("status", "ok")))] == 1
    assert got[("llmroute_requests_total", (("model", "none"), ("status", "error")))] == 1
    assert got[("llmroute_cost_usd_total", (("model", "strong"),))] == 0.012
    assert got[("llmroute_always_strong_cost_usd_total", ())] == 0.02
    assert got[("llmroute_cost_saved_usd", ())] == pytest.approx(0.007)
    assert got[("llmroute_route_duration_seconds_bucket", (("le", "5e-05"),))] == 1
    assert got[("llmroute_route_duration_seconds_count", ())] == 2
    assert got[("llmroute_request_duration_seconds_count", (("model", "strong"),))] == 1
    assert got[("llmroute_in_flight_requests", ())] == 0
    lag = (("partition", "0"), ("topic", "llm.requests"))
    assert got[("llmroute_consumer_lag_records", lag)] == 12
    assert ("llmroute_consumer_lag_records", (("partition", "1"), lag[1])) not in got
    assert got[("llmroute_dead_letters_total", (("reason", "ValidationError"),))] == 1
    assert got[("llmroute_provider_retries_total", (("model", "small"),))] == 1
    edge = (("from_model", "small"), ("to_model", "strong"))
    assert got[("llmroute_fallbacks_total", edge)] == got[("llmroute_escalations_total", edge)] == 1
    assert got[("llmroute_route_cache_lookups_total", (("result", "hit"),))] == 1
    assert got[("llmroute_redeliveries_skipped_total", ())] == 1
    assert got[("llmroute_route_unfamiliar_count", ())] == 2
    assert got[("llmroute_route_unfamiliar_bucket", (("le", "1.0"),))] == 1


async def test_openmetrics_when_asked_and_head_requests(ops):
    _, client, _ = ops
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    head = await client.head("/healthz")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0


async def test_event_loop_lag_is_measured(ops):
    _, client, _ = ops
    await asyncio.sleep(0.05)
    got = samples((await client.get("/metrics")).text)
    assert ("llmroute_event_loop_lag_seconds", ()) in got


async def test_health_follows_the_loops_heartbeat(ops):
    server, client, clock = ops
    assert (await client.get("/healthz")).status_code == 200  # no beat yet: starting
    server.health.beat()
    clock.now += 29
    assert (await client.get("/healthz")).json() == {"status": "ok", "reason": "ok"}
    clock.now += 2
    response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["reason"] == "consume loop silent for 31.0s"
    server.health.beat()
    assert (await client.get("/healthz")).status_code == 200


async def test_ready_only_once_the_loop_says_so(ops):
    server, client, _ = ops
    response = await client.get("/readyz")
    assert (response.status_code, response.json()["reason"]) == (503, "starting")
    server.health.set_ready(True)
    assert (await client.get("/readyz")).status_code == 200
    server.health.set_ready(False, "draining")
    assert (await client.get("/readyz")).json() == {"status": "fail", "reason": "draining"}


async def test_unknown_paths_methods_and_garbage(ops):
    server, client, _ = ops
    assert (await client.get("/nope")).status_code == 404
    assert (await client.post("/metrics")).status_code == 405
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"NONSENSE\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 431 ")
    writer.close()


async def test_two_workers_in_one_process_do_not_collide():
    a, b = WorkerMetrics(), WorkerMetrics()
    a.observe_request("small", "ok", 0.1)
    assert a.registry is not b.registry
    assert b.requests.labels("small", "ok")._value.get() == 0


async def test_stop_releases_the_port():
    server = OpsServer(WorkerMetrics(), Health(), OpsServerConfig(port=0))
    await server.start()
    port = server.port
    await server.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{port}/healthz")
