"""Several deployments against simulators over real sockets: rate limits that answer 429 with
``retry-after`` and ``x-ratelimit-*``, outages, and a client that fails over and never collects
429s when the limits are configured. The client and the simulators share one fake clock, so a
minute-long rate-limit window passes without waiting."""

from __future__ import annotations

import argparse

import httpx
import pytest

from tests.providers.conftest import FakeClock
from worker.cli import sim as sim_cli
from worker.config.models import Catalogue
from worker.providers import ClientSettings, CompletionRequest, HttpSettings, ModelClient
from worker.sim import Latency, RateLimit, SimConfig, Simulator

KEY = {"SIM_KEY": "sk-sim-0123456789"}
REQ = CompletionRequest.from_prompt("What is 2 + 2?", max_tokens=16)


def catalogue(sims: dict[str, Simulator], rpm: dict[str, int] | None = None) -> Catalogue:
    deployments = []
    for name, sim in sims.items():
        d = {"name": name, "base_url": sim.openai_base_url}
        if rpm and name in rpm:
            d["rpm"] = rpm[name]
        deployments.append(d)
    return Catalogue.from_dict(
        {
            "m": {
                "provider": "openai",
                "api_key_env": "SIM_KEY",
                "provider_model": "sim-model",
                "input_usd_per_mtok": 1.0,
                "output_usd_per_mtok": 1.0,
                "context_window_tokens": 8192,
                "routing_strategy": "least-busy",
                "deployments": deployments,
            }
        }
    )


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"authorization": "Bearer k"}


async def test_the_simulator_rate_limit_answers_429_with_headers():
    clock = FakeClock()
    sim = Simulator(SimConfig(rate_limit=RateLimit(rpm=2)), clock=clock)
    async with sim, httpx.AsyncClient() as http:
        url = f"{sim.openai_base_url}/chat/completions"
        first = await http.post(url, json=BODY, headers=AUTH)
        await http.post(url, json=BODY, headers=AUTH)
        clock.now += 10.0
        third = await http.post(url, json=BODY, headers=AUTH)
        clock.now += 50.0
        fourth = await http.post(url, json=BODY, headers=AUTH)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert third.headers["retry-after-ms"] == "50000" and third.headers["retry-after"] == "50"
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert fourth.status_code == 200  # the window moved on


async def test_the_simulator_outage_and_its_end():
    sim = Simulator(SimConfig())
    async with sim, httpx.AsyncClient() as http:
        url = f"{sim.openai_base_url}/chat/completions"
        sim.set_outage("503")
        down = await http.post(url, json=BODY, headers=AUTH)
        sim.set_outage(None)
        up = await http.post(url, json=BODY, headers=AUTH)
    assert down.status_code == 503 and up.status_code == 200
    assert sim.stats.faults["outage_503"] == 1


async def test_failover_across_simulated_deployments_and_no_429s_with_limits():
    clock = FakeClock()
    configs = {
        "fast": SimConfig(latency=Latency("fixed", 1), rate_limit=RateLimit(rpm=5), seed=1),
        "slow": SimConfig(latency=Latency("fixed", 2), rate_limit=RateLimit(rpm=5), seed=2),
    }
    sims = {name: Simulator(config, clock=clock) for name, config in configs.items()}
    for sim in sims.values():
        await sim.start()
    try:
        client = ModelClient(
            catalogue(sims, rpm={"fast": 5, "slow": 5}),
            ClientSettings(http=HttpSettings(total_timeout_s=5.0), max_rate_limit_wait_s=120.0),
            env=KEY,
            clock=clock,
            sleep=clock.sleep,
        )
        async with client:
            sims["fast"].set_outage("reset")
            routed = await client.complete(REQ, ["m"])
            assert routed.deployment == "slow"
            assert [(a.deployment, a.status) for a in routed.attempts] == [
                ("fast", "error"),
                ("slow", "ok"),
            ]
            sims["fast"].set_outage(None)
            started = clock.now
            used = [
                (await client.complete(REQ, ["m"], deadline_s=300.0)).deployment for _ in range(25)
            ]
    finally:
        for sim in sims.values():
            await sim.close()
    statuses = {name: dict(sim.stats.statuses) for name, sim in sims.items()}
    assert all(429 not in s for s in statuses.values()), statuses  # waited, never collected 429s
    assert sorted(set(used)) == ["fast", "slow"]
    assert clock.now - started >= 120.0  # 25 calls at 10 a minute: the client waited its turn


async def test_an_outage_starts_and_ends_over_http():
    sim = Simulator(SimConfig())
    async with sim, httpx.AsyncClient() as http:
        url = f"{sim.openai_base_url}/chat/completions"
        started = await http.post(f"{sim.base_url}/sim/outage?kind=503")
        down = await http.post(url, json=BODY, headers=AUTH)
        ended = await http.post(f"{sim.base_url}/sim/outage?kind=none")
        up = await http.post(url, json=BODY, headers=AUTH)
        bad = await http.post(f"{sim.base_url}/sim/outage?kind=flood")
    assert started.json() == {"outage": "503"} and ended.json() == {"outage": None}
    assert (down.status_code, up.status_code, bad.status_code) == (503, 200, 400)


def test_the_cli_builds_rate_limits_and_per_token_latency():
    parser = argparse.ArgumentParser()
    sim_cli.register(parser.add_subparsers())
    args = parser.parse_args(["sim-provider", "--rpm", "60", "--per-token-ms", "20"])
    config = sim_cli.config_from_args(args)
    assert config.rate_limit == RateLimit(rpm=60) and config.per_output_token_ms == 20.0


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_the_providers_headers_alone_keep_the_client_off_a_spent_limit(api):
    """The catalogue gives no limit; the simulator's rate-limit headers say none is left: the next
    call goes elsewhere instead of collecting a 429."""
    clock = FakeClock()
    spent = Simulator(SimConfig(rate_limit=RateLimit(rpm=1)), clock=clock)
    spare = Simulator(SimConfig(), clock=clock)
    async with spent, spare:
        base = {"openai": "openai_base_url", "anthropic": "base_url"}[api]
        cat = Catalogue.from_dict(
            {
                "m": {
                    "provider": api,
                    "api_key_env": "SIM_KEY",
                    "provider_model": "sim-model",
                    "input_usd_per_mtok": 1.0,
                    "output_usd_per_mtok": 1.0,
                    "context_window_tokens": 8192,
                    "routing_strategy": "cost-based-routing",
                    "deployments": [
                        {"name": "spent", "base_url": getattr(spent, base)},
                        {
                            "name": "spare",
                            "base_url": getattr(spare, base),
                            "input_usd_per_mtok": 2.0,
                        },
                    ],
                }
            }
        )
        async with ModelClient(cat, env=KEY, clock=clock, sleep=clock.sleep) as client:
            first = await client.complete(REQ, ["m"])
            second = await client.complete(REQ, ["m"])
    assert (first.deployment, second.deployment) == ("spent", "spare")
    assert "spent (rate limit" in (second.deployment_reason or "")
    assert 429 not in spent.stats.statuses
