"""Several deployments per model: the catalogue, the live state, the choice and the failover."""

from __future__ import annotations

import random
import re
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.providers.conftest import FakeClock
from worker.config.models import Catalogue, CatalogueError, simulator_catalogue
from worker.providers import BreakerSettings, CompletionRequest, ModelClient, RetryPolicy
from worker.providers.client import ClientSettings
from worker.providers.deployments import (
    LatencyFit,
    Option,
    RateLimits,
    order_deployments,
    parse_rate_limit_headers,
)
from worker.providers.errors import AllModelsFailedError
from worker.providers.types import RateLimitInfo

MODEL = "llama"
REQ = CompletionRequest.from_prompt("hello there", max_tokens=20)
ENV = {"KEY_A": "sk-a-0123456789", "KEY_B": "sk-b-0123456789", "KEY_C": "sk-c-0123456789"}


def multi(strategy: str = "latency-based-routing", **extra: object) -> dict:
    return {
        MODEL: {
            "provider": "openai",
            "provider_model": "llama-3-70b",
            "input_usd_per_mtok": 1.0,
            "output_usd_per_mtok": 1.0,
            "context_window_tokens": 8192,
            "routing_strategy": strategy,
            "deployments": [
                {"name": "a", "base_url": "http://a.test/v1", "api_key_env": "KEY_A"},
                {"name": "b", "base_url": "http://b.test/v1", "api_key_env": "KEY_B", "rpm": 2},
                {
                    "name": "c",
                    "base_url": "http://c.test/v1",
                    "api_key_env": "KEY_C",
                    "provider_model": "llama3-70b",
                    "input_usd_per_mtok": 0.1,
                    "output_usd_per_mtok": 0.2,
                    "weight": 3,
                },
            ],
            **extra,
        },
        "other": {
            "provider": "openai",
            "base_url": "http://other.test/v1",
            "api_key_env": "KEY_A",
            "provider_model": "other",
            "input_usd_per_mtok": 5.0,
            "output_usd_per_mtok": 5.0,
            "context_window_tokens": 8192,
        },
    }


# ---------------------------------------------------------------- catalogue


def test_single_deployment_configs_are_unchanged():
    cat = simulator_catalogue("http://sim.test")
    for spec in cat.models.values():
        assert spec.deployments == ()
        (only,) = spec.all_deployments
        assert only.name == "default" and only.spec is spec and not only.listed


def test_deployments_inherit_the_model_keys_and_override_what_differs():
    spec = Catalogue.from_dict(multi())[MODEL]
    a, b, c = spec.deployments
    assert spec.base_url == "http://a.test/v1"  # the model's own fields are its first deployment's
    assert (b.spec.base_url, b.spec.api_key_env, b.rpm, b.tpm) == (
        "http://b.test/v1",
        "KEY_B",
        2,
        None,
    )
    assert b.spec.provider_model == "llama-3-70b" and c.spec.provider_model == "llama3-70b"
    assert c.spec.prices.input_usd_per_mtok == 0.1 and a.spec.prices.input_usd_per_mtok == 1.0
    assert c.weight == 3 and a.weight is None
    assert spec.routing_strategy == "latency-based-routing"


@pytest.mark.parametrize(
    ("short", "canonical"),
    [
        ("latency-based", "latency-based-routing"),
        ("usage-based", "usage-based-routing"),
        ("usage-based-routing-v2", "usage-based-routing"),
        ("cost-based", "cost-based-routing"),
        ("least-busy", "least-busy"),
        ("simple-shuffle", "simple-shuffle"),
    ],
)
def test_strategy_names_are_litellms(short, canonical):
    assert Catalogue.from_dict(multi(short))[MODEL].routing_strategy == canonical


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(routing_strategy="round-robin"), "routing_strategy"),
        (lambda m: m["deployments"].append(dict(m["deployments"][0])), "distinct"),
        (lambda m: m.pop("provider"), "provider required"),
        (lambda m: m["deployments"][1].update(rpm=0), "rpm must be >= 1"),
        (lambda m: m.update(rpm=10), "rpm and tpm go on each deployment"),
        (lambda m: m["deployments"][0].update(region="eu"), "region"),
    ],
)
def test_bad_deployments_are_named(change, message):
    data = multi()
    change(data[MODEL])
    with pytest.raises(CatalogueError, match=message):
        Catalogue.from_dict(data)


# ---------------------------------------------------------------- the pure choice


def opt(i, name, *, open=False, wait=0.0, busy=0, ms=None, used=0.0, price=1.0, weight=1.0):
    return Option(i, name, open, wait, busy, ms, used, price, weight)


def names(order):
    return [o.name for o in order]


OPTIONS = [
    opt(0, "a", busy=3, ms=300.0, used=900.0, price=2.0, weight=1.0),
    opt(1, "b", busy=1, ms=100.0, used=500.0, price=3.0, weight=1.0),
    opt(2, "c", busy=2, ms=900.0, used=100.0, price=1.0, weight=2.0),
]


@pytest.mark.parametrize(
    ("strategy", "first", "why"),
    [
        ("least-busy", "b", "fewest calls in flight (1)"),
        ("latency-based-routing", "b", "b expected ~100 ms, the lowest"),
        ("usage-based-routing", "c", "fewest tokens this minute (100)"),
        ("cost-based-routing", "c", "cheapest"),
    ],
)
def test_each_strategy_ranks_by_its_own_measure(strategy, first, why):
    order, reason = order_deployments(OPTIONS, strategy, random.Random(0).random)
    assert order[0].name == first and len(order) == 3
    assert reason.startswith(strategy) and why in reason


def test_simple_shuffle_follows_the_weights_and_is_deterministic_with_a_seed():
    def firsts(seed):
        rng = random.Random(seed)
        return [
            order_deployments(OPTIONS, "simple-shuffle", rng.random)[0][0].name for _ in range(4000)
        ]

    picks = firsts(7)
    assert picks == firsts(7)
    share_c = picks.count("c") / len(picks)
    assert 0.45 < share_c < 0.55  # weight 2 of 4


def test_open_breakers_are_left_out_and_rate_limited_ones_go_last():
    options = [
        opt(0, "a", open=True, ms=50.0),
        opt(1, "b", wait=5.0, ms=60.0),
        opt(2, "c", ms=900.0),
        opt(3, "d", wait=1.0, ms=70.0),
    ]
    order, reason = order_deployments(options, "latency-based-routing", lambda: 0.0)
    assert names(order) == ["c", "d", "b"]
    assert "a (circuit open)" in reason and "b (rate limit, 5.0 s)" in reason
    order, reason = order_deployments(options[:2], "latency-based-routing", lambda: 0.0)
    assert names(order) == ["b"] and "frees first" in reason
    assert order_deployments(options[:1], "least-busy", lambda: 0.0)[0] == []


def test_untried_deployments_are_explored_first_and_the_buffer_spreads():
    order, _ = order_deployments(
        [opt(0, "a", ms=100.0), opt(1, "b")], "latency-based-routing", lambda: 0.0
    )
    assert names(order) == ["b", "a"]
    options = [opt(0, "a", ms=100.0), opt(1, "b", ms=105.0), opt(2, "c", ms=200.0)]
    picks = {
        order_deployments(
            options, "latency-based-routing", lambda r=r: r, lowest_latency_buffer=0.1
        )[0][0].name
        for r in (0.0, 0.3, 0.6, 0.9)
    }
    assert picks == {"a", "b"}


def test_one_probe_at_a_time_and_no_exploring_under_a_budget():
    probing = [opt(0, "a", ms=100.0), opt(1, "b", busy=1), opt(2, "c")]
    order, reason = order_deployments(probing, "latency-based-routing", lambda: 0.0)
    assert names(order) == ["c", "a", "b"] and "c untried" in reason  # b's probe is out
    order, reason = order_deployments(
        probing, "latency-based-routing", lambda: 0.0, within_ms=300.0
    )
    assert names(order) == ["a", "c", "b"] and "a first: ~100 ms is measured" in reason


def test_a_latency_budget_and_a_tight_deadline():
    order, reason = order_deployments(OPTIONS, "cost-based-routing", lambda: 0.0, within_ms=400.0)
    assert names(order) == ["a", "b", "c"]  # c (cheapest) expected 900 ms: after those that meet it
    assert "expected to miss 400 ms: c (~900 ms)" in reason
    order, reason = order_deployments(OPTIONS, "cost-based-routing", lambda: 0.0, fastest=True)
    assert names(order) == ["b", "a", "c"] and "tight deadline, fastest" in reason


# ---------------------------------------------------------------- measurements


def test_latency_fit_separates_time_to_first_token_from_tokens_per_second():
    fit = LatencyFit(alpha=0.2)
    assert fit.expected_ms(100) is None
    for n in (10, 100, 50, 200, 20, 150) * 5:
        fit.add(n, 80.0 + 2.0 * n)
    assert fit.ttft_ms == pytest.approx(80.0, abs=1e-6)
    assert fit.ms_per_token == pytest.approx(2.0, abs=1e-9)
    assert fit.expected_ms(300) == pytest.approx(680.0, abs=1e-6)
    same = LatencyFit()
    for _ in range(3):
        same.add(64, 250.0)
    assert same.expected_ms(1000) == pytest.approx(250.0)  # one length seen: the mean


def test_rate_limits_count_our_own_calls_per_member_share():
    clock = FakeClock()
    limits = RateLimits(rpm=10, tpm=1000, clock=clock)
    limits.share = 0.5  # two members: five calls a minute each
    for _ in range(5):
        assert limits.wait_s(10) == 0.0
        limits.take(10)
        clock.now += 1.0
    # the first call's one-second bucket leaves the window a minute after it ends (+61 s)
    assert limits.wait_s(10) == pytest.approx(56.0)
    clock.now += 56.0
    assert limits.wait_s(10) == 0.0
    clock.now += 10.0  # the window is empty again
    booked = limits.take(400)
    assert limits.wait_s(200) > 0  # 400 + 200 tokens > 500
    limits.settle(booked, 50)  # the answer used fewer
    assert limits.wait_s(200) == 0.0
    limits.blocked_for(3.0)
    assert limits.wait_s(1) == pytest.approx(3.0)
    limits.observe(RateLimitInfo(remaining_requests=0, reset_requests_s=7.0), 1)
    assert limits.wait_s(1) == pytest.approx(7.0)


def test_rate_limit_memory_is_bounded_at_any_rate():
    clock = FakeClock()
    limits = RateLimits(rpm=None, tpm=None, clock=clock, track=True)  # as usage-based-routing
    for _ in range(100_000):
        limits.take(5)
        clock.now += 0.01  # 100 calls a second for 1000 s
        limits.wait_s(5)
    assert len(limits._buckets) <= 62
    requests, tokens = limits.used()  # about 61 one-second buckets of 100 calls
    assert 6000 <= requests <= 6100 and tokens == requests * 5
    untracked = RateLimits(rpm=None, tpm=None, clock=clock)  # no limit: nothing to count
    untracked.take(5)
    assert untracked.used() == (0, 0.0) and untracked.wait_s(5) == 0.0


def test_rate_limit_headers_of_both_providers():
    info = parse_rate_limit_headers(
        httpx.Headers(
            {
                "x-ratelimit-remaining-requests": "59",
                "x-ratelimit-remaining-tokens": "149984",
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-reset-tokens": "6m0.5s",
            }
        )
    )
    assert info == RateLimitInfo(59, 149984, 1.0, 360.5)
    info = parse_rate_limit_headers(
        httpx.Headers(
            {
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:30Z",
            }
        ),
        wall_clock=lambda: 1767225600.0,  # 2026-01-01T00:00:00Z
    )
    assert info == RateLimitInfo(0, None, 30.0, None)
    assert parse_rate_limit_headers(httpx.Headers({"x-request-id": "r"})) is None
    odd = parse_rate_limit_headers(
        httpx.Headers({"x-ratelimit-remaining-requests": "x", "x-ratelimit-reset-requests": "soon"})
    )
    assert odd == RateLimitInfo(None, None, None, None)


# ---------------------------------------------------------------- the client


def answer(
    request: httpx.Request, status: int = 200, headers: dict | None = None
) -> httpx.Response:
    if status != 200:
        return httpx.Response(
            status, json={"error": {"message": "no", "type": "server_error"}}, headers=headers
        )
    return httpx.Response(
        200,
        json={
            "id": "x",
            "model": "llama",
            "choices": [{"message": {"content": request.url.host}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7},
        },
        headers=headers,
    )


def client_for(
    handler, clock: FakeClock, strategy="latency-based-routing", retries=2, limits=True, **settings
):
    data = multi(strategy)
    if not limits:
        data[MODEL]["deployments"][1].pop("rpm")
    return ModelClient(
        Catalogue.from_dict(data),
        ClientSettings(retry=RetryPolicy(max_retries=retries), **settings),
        env=ENV,
        http_transport=httpx.MockTransport(handler),
        clock=clock,
        sleep=clock.sleep,
        rand=random.Random(1).random,
    )


async def test_a_failed_deployment_fails_over_to_the_next_before_the_next_model():
    clock = FakeClock()
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        return answer(request, 503 if request.url.host == "a.test" else 200)

    async with client_for(handler, clock, "least-busy") as client:
        routed = await client.complete(REQ, [MODEL, "other"])
    assert calls == ["a.test", "b.test"]  # a once (others remain: no retries), then b
    assert routed.result.text == "b.test" and routed.deployment == "b"
    assert [(a.deployment, a.status, a.http_status) for a in routed.attempts] == [
        ("a", "error", 503),
        ("b", "ok", 200),
    ]
    assert "failed over from a (InternalServerError)" in (routed.deployment_reason or "")
    assert routed.attempts[0].to_dict()["deployment"] == "a"


async def test_every_deployment_failing_moves_the_chain_on_and_the_last_gets_retries():
    clock = FakeClock()
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        return answer(request, 500 if request.url.host != "other.test" else 200)

    async with client_for(handler, clock, "least-busy") as client:
        routed = await client.complete(REQ, [MODEL, "other"])
    assert calls == ["a.test", "b.test", "c.test", "c.test", "c.test", "other.test"]
    assert routed.result.model == "other" and routed.deployment is None


async def test_breakers_are_per_deployment():
    clock = FakeClock()

    def handler(request: httpx.Request) -> httpx.Response:
        return answer(request, 500 if request.url.host == "a.test" else 200)

    async with client_for(
        handler, clock, "least-busy", breaker=BreakerSettings(failure_threshold=2)
    ) as client:
        for _ in range(2):
            await client.complete(REQ, [MODEL])
        assert client.breaker(MODEL, "a").state == "open"
        assert client.breaker(MODEL, "b").state == "closed"
        routed = await client.complete(REQ, [MODEL])
    assert [a.deployment for a in routed.attempts] == ["c"]  # b used its 2 requests a minute
    assert "a (circuit open)" in (routed.deployment_reason or "")
    assert "b (rate limit" in (routed.deployment_reason or "")


async def test_latency_based_routing_learns_the_fastest_deployment():
    clock = FakeClock()
    delay = {"a.test": 0.3, "b.test": 0.1, "c.test": 0.9}

    def handler(request: httpx.Request) -> httpx.Response:
        clock.now += delay[request.url.host]  # the answer takes this long on the client's clock
        return answer(request)

    async with client_for(handler, clock, limits=False) as client:
        used = [(await client.complete(REQ, [MODEL])).deployment for _ in range(10)]
        expected = client.expected_latency_ms([MODEL, "other"], 20)
    assert sorted(used[:3]) == ["a", "b", "c"]  # each untried one explored once
    assert used[3:] == ["b"] * 7
    assert expected == {MODEL: pytest.approx(100.0)}


async def test_a_429_blocks_the_deployment_for_its_retry_after():
    clock = FakeClock()
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        if request.url.host == "c.test":
            return answer(request, 429, {"retry-after-ms": "20000"})
        return answer(request)

    async with client_for(handler, clock, "cost-based-routing") as client:
        first = await client.complete(REQ, [MODEL])
        second = await client.complete(REQ, [MODEL])
        clock.now += 21.0
        third = await client.complete(REQ, [MODEL])
    # c (cheapest) answers 429 for 20 s: skipped meanwhile, tried again after (and still 429)
    assert calls == ["c.test", "a.test", "a.test", "c.test", "a.test"]
    assert (first.deployment, second.deployment, third.deployment) == ("a", "a", "a")
    assert "c (rate limit, 20.0 s)" in (second.deployment_reason or "")


async def test_own_rate_limit_counts_wait_or_reroute_instead_of_collecting_429s():
    clock = FakeClock()
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        return answer(request)

    data = multi("least-busy")
    data[MODEL]["deployments"] = data[MODEL]["deployments"][1:2]  # only b: 2 requests a minute
    client = ModelClient(
        Catalogue.from_dict(data),
        ClientSettings(max_rate_limit_wait_s=90.0),
        env=ENV,
        http_transport=httpx.MockTransport(handler),
        clock=clock,
        sleep=clock.sleep,
    )
    async with client:
        for _ in range(2):
            await client.complete(REQ, [MODEL, "other"])
        started = clock.now
        routed = await client.complete(REQ, [MODEL, "other"], deadline_s=120.0)
        # waited: a minute after the end of the first calls' one-second bucket
        assert routed.deployment == "b" and clock.now - started == pytest.approx(61.0)
        await client.complete(REQ, [MODEL, "other"])  # the second of this minute
        routed = await client.complete(REQ, [MODEL, "other"], deadline_s=10.0)  # cannot wait
    assert routed.result.model == "other"
    skipped = routed.attempts[0]
    assert (skipped.deployment, skipped.status, skipped.error_type) == (
        "b",
        "skipped",
        "RateLimitWaitError",
    )
    assert calls == ["b.test"] * 4 + ["other.test"]


async def test_the_group_share_divides_the_limits():
    clock = FakeClock()
    data = multi("least-busy")
    data[MODEL]["deployments"] = data[MODEL]["deployments"][1:2]
    client = ModelClient(
        Catalogue.from_dict(data),
        env=ENV,
        http_transport=httpx.MockTransport(answer),
        clock=clock,
        sleep=clock.sleep,
    )
    async with client:
        client.set_share(0.5)  # rpm 2 over two members: one each
        await client.complete(REQ, [MODEL])
        with pytest.raises(AllModelsFailedError) as failed:
            await client.complete(REQ, [MODEL], deadline_s=5.0)
    assert failed.value.attempts[-1].error_type == "RateLimitWaitError"


async def test_a_latency_budget_prefers_deployments_that_meet_it():
    clock = FakeClock()
    delay = {"a.test": 0.3, "b.test": 0.1, "c.test": 0.9}

    def handler(request: httpx.Request) -> httpx.Response:
        clock.now += delay[request.url.host]
        return answer(request)

    async with client_for(handler, clock, "cost-based-routing", limits=False) as client:
        for host in ("a", "b", "c"):  # measure each once
            for state in (client.deployment_state(MODEL, d) for d in "abc" if d != host):
                state.breaker._open()
            await client.complete(REQ, [MODEL])
            for d in "abc":
                client.breaker(MODEL, d).record_success()
        assert (await client.complete(REQ, [MODEL])).deployment == "c"  # cheapest
        within = await client.complete(REQ, [MODEL], within_ms=400.0)
        tight = await client.complete(REQ, [MODEL], fastest=True)
    assert within.deployment == "a" and "expected to miss 400 ms: c" in (
        within.deployment_reason or ""
    )
    assert tight.deployment == "b" and "tight deadline" in (tight.deployment_reason or "")


def test_the_documented_example_is_a_valid_catalogue():
    doc = Path(__file__).parents[2] / "docs" / "deployments-per-model.md"
    block = re.search(r"```toml\n(.*?)```", doc.read_text(), re.S)
    assert block is not None
    spec = Catalogue.from_dict(tomllib.loads(block.group(1)))["llama-3-70b"]
    assert [d.name for d in spec.deployments] == ["together", "groq"]
    assert spec.deployments[1].spec.provider_model == "llama3-70b-8192"
