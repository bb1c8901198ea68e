"""The transports against the simulator over real sockets: answers, replay, faults, batches."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import jsonschema
import pytest

from tests.providers.conftest import ENV, OPENAI_KEY, openai_schema
from worker.config.models import (
    ANTHROPIC_MODEL,
    STRONG_MODEL,
    WEAK_MODEL,
    simulator_catalogue,
)
from worker.providers import (
    AllModelsFailedError,
    ClientSettings,
    CompletionRequest,
    HttpSettings,
    ModelClient,
    OpenAIAdapter,
    RetryPolicy,
    Secret,
)
from worker.providers.anthropic import AnthropicAdapter, parse_batch_result_line
from worker.providers.openai import batch_request_line, parse_batch_output_line
from worker.sim import BatchTiming, Dataset, Fault, Latency, Row, SimConfig, Simulator, grade

ROWS = [
    Row(
        f"q{i}",
        f"Question {i}?\nA. one\nB. two\nC. three\nD. four\nAnswer:",
        {STRONG_MODEL: float(i % 2 == 0), WEAK_MODEL: float(i % 3 == 0)},
    )
    for i in range(30)
]
FAST = ClientSettings(
    http=HttpSettings(total_timeout_s=5.0),
    retry=RetryPolicy(initial_delay_s=0.01, max_delay_s=0.02),
)


def client_for(sim: Simulator, settings: ClientSettings = FAST) -> ModelClient:
    return ModelClient(simulator_catalogue(sim.base_url), settings, env=ENV)


@pytest.fixture
async def sim():
    async with Simulator(SimConfig(), Dataset(ROWS)) as s:
        yield s


async def test_replay_answers_follow_the_labels(sim):
    async with client_for(sim) as client:
        for row in ROWS:
            for model, dataset_model in [
                (STRONG_MODEL, STRONG_MODEL),
                (ANTHROPIC_MODEL, WEAK_MODEL),
            ]:
                r = (
                    await client.complete(CompletionRequest.from_prompt(row.prompt), [model])
                ).result
                assert grade(r.text, row.prompt) is (row.scores[dataset_model] >= 0.5)
                assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0 and r.cost_usd > 0
    # same content, same answer
    async with client_for(sim) as client:
        a = await client.complete(CompletionRequest.from_prompt(ROWS[0].prompt), [WEAK_MODEL])
        b = await client.complete(CompletionRequest.from_prompt(ROWS[0].prompt), [WEAK_MODEL])
    assert a.result.text == b.result.text


async def test_openai_response_matches_published_schema_and_logprobs(sim):
    key = {"authorization": f"Bearer {OPENAI_KEY}"}
    async with httpx.AsyncClient(base_url=sim.openai_base_url, headers=key) as http:
        resp = await http.post(
            "/chat/completions",
            json={
                "model": STRONG_MODEL,
                "messages": [{"role": "user", "content": ROWS[1].prompt}],
                "logprobs": True,
                "top_logprobs": 2,
                "max_tokens": 5,
            },
        )
    schema = openai_schema()
    jsonschema.Draft202012Validator(
        {"$ref": "#/$defs/CreateChatCompletionResponse", "$defs": schema["$defs"]}
    ).validate(resp.json())
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "length" and len(choice["logprobs"]["content"]) == 5
    assert resp.json()["usage"]["completion_tokens"] == 5


async def test_stop_sequence_and_system_prompt_on_anthropic(sim):
    req = CompletionRequest.from_messages(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ROWS[2].prompt}],
        stop=("The answer",),
    )
    async with client_for(sim) as client:
        r = (await client.complete(req, [ANTHROPIC_MODEL])).result
    assert r.raw_finish_reason == "stop_sequence" and "The answer" not in r.text
    assert sim.recent[-1][1]["system"] == "Be brief."


async def test_faults_429_then_success_records_attempts():
    config = SimConfig(faults=(Fault("429", at=(1,), retry_after_s=0.05),))
    async with Simulator(config) as sim, client_for(sim) as client:
        routed = await client.complete(CompletionRequest.from_prompt("hi"), [STRONG_MODEL])
    assert [(a.http_status, a.error_type) for a in routed.attempts] == [
        (429, "RateLimitError"),
        (200, None),
    ]


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        (Fault("reset", rate=1.0), "ProviderConnectionError"),
        (Fault("timeout", rate=1.0, hang_s=5.0), "ProviderTimeoutError"),
        (Fault("malformed", rate=1.0), "MalformedResponseError"),
        (Fault("500", rate=1.0), "InternalServerError"),
        (Fault("quota", rate=1.0), "InsufficientQuotaError"),
    ],
)
async def test_fault_kinds_map_to_error_classes_then_fall_back(fault, error_type):
    fault = Fault(fault.kind, rate=1.0, hang_s=fault.hang_s, models=(STRONG_MODEL,))
    settings = ClientSettings(
        http=HttpSettings(total_timeout_s=0.3),
        retry=RetryPolicy(max_retries=1, initial_delay_s=0.01),
    )
    async with Simulator(SimConfig(faults=(fault,))) as sim, client_for(sim, settings) as client:
        routed = await client.complete(
            CompletionRequest.from_prompt("hi"), [STRONG_MODEL, WEAK_MODEL]
        )
    errors = [a.error_type for a in routed.attempts if a.model == STRONG_MODEL]
    assert set(errors) == {error_type}
    assert len(errors) == (1 if error_type == "InsufficientQuotaError" else 2)
    assert routed.result.model == WEAK_MODEL


async def test_anthropic_529_falls_back_to_openai_and_bad_key_is_401():
    config = SimConfig(
        faults=(Fault("529", rate=1.0, api="anthropic"),), api_keys=tuple(ENV.values())
    )
    async with Simulator(config) as sim, client_for(sim) as client:
        routed = await client.complete(
            CompletionRequest.from_prompt("hi"), [ANTHROPIC_MODEL, WEAK_MODEL]
        )
        assert [a.error_type for a in routed.attempts] == ["OverloadedError"] * 3 + [None]
        bad = ModelClient(
            simulator_catalogue(sim.base_url),
            FAST,
            env={"SIM_OPENAI_API_KEY": "sk-wrong-key-0123456789"},
        )
        with pytest.raises(AllModelsFailedError) as info:
            await bad.complete(CompletionRequest.from_prompt("hi"), [WEAK_MODEL])
        await bad.aclose()
    assert info.value.attempts[0].error_type == "AuthenticationError"
    assert "6789" not in str(info.value.last_error)


async def test_many_concurrent_slow_calls_use_timers_not_threads():
    async with (
        Simulator(SimConfig(latency=Latency("fixed", 300))) as sim,
        client_for(sim) as client,
    ):
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                client.complete(CompletionRequest.from_prompt(f"p{i}"), [WEAK_MODEL])
                for i in range(200)
            )
        )
        elapsed = time.perf_counter() - started
        stats = sim.stats.to_json()
    assert len(results) == 200 and elapsed < 4.0
    assert stats["max_in_flight"] >= 150


async def test_openai_batch_lifecycle_with_item_errors_and_malformed_lines():
    timing = BatchTiming(
        validating_s=0.02,
        in_progress_s=0.05,
        finalizing_s=0.02,
        item_error_rate=0.2,
        malformed_line_rate=0.1,
    )
    async with Simulator(SimConfig(batch=timing), Dataset(ROWS)) as sim:
        spec = simulator_catalogue(sim.base_url)[STRONG_MODEL]
        t = OpenAIAdapter(base_url=spec.base_url, api_key=Secret(OPENAI_KEY))
        lines = b"\n".join(
            batch_request_line(row.id, spec, CompletionRequest.from_prompt(row.prompt))
            for row in ROWS
        )
        f = await t.upload_batch_file(lines)
        batch = await t.create_batch(f.id, metadata={"job": "j1"})
        assert batch.status == "validating"
        seen = {batch.status}
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            await asyncio.sleep(0.01)
            batch = await t.retrieve_batch(batch.id)
            seen.add(batch.status)
        assert batch.status == "completed" and {"in_progress", "completed"} <= seen
        assert batch.request_counts is not None and batch.request_counts.total == len(ROWS)
        out = await t.download_file(batch.output_file_id or "")
        err = await t.download_file(batch.error_file_id or "")
        await t.aclose()
    results, errors, malformed = {}, {}, 0
    for line in (out + err).splitlines():
        try:
            cid, res = parse_batch_output_line(line, spec)
        except Exception as exc:
            assert type(exc).__name__ == "MalformedResponseError"
            malformed += 1
            continue
        (errors if isinstance(res, Exception) else results)[cid] = res
    assert len(results) + len(errors) + malformed == len(ROWS)
    assert errors and malformed
    by_id = {r.id: r for r in ROWS}
    for cid, res in results.items():
        assert grade(res.text, by_id[cid].prompt) is (by_id[cid].scores[STRONG_MODEL] >= 0.5)
        assert res.cost_usd == pytest.approx(spec.cost_usd(res.usage) * 0.5)


async def test_openai_batch_expiry_cancel_and_invalid_file():
    timing = BatchTiming(
        validating_s=0.01, in_progress_s=10.0, expire_after_s=0.05, cancel_delay_s=0.01
    )
    async with Simulator(SimConfig(batch=timing)) as sim:
        spec = simulator_catalogue(sim.base_url)[WEAK_MODEL]
        t = OpenAIAdapter(base_url=spec.base_url, api_key=Secret(OPENAI_KEY))
        good = b"\n".join(
            batch_request_line(f"c{i}", spec, CompletionRequest.from_prompt("x")) for i in range(5)
        )
        expiring = await t.create_batch((await t.upload_batch_file(good)).id)
        cancelled = await t.create_batch((await t.upload_batch_file(good)).id)
        await asyncio.sleep(0.02)
        assert (await t.cancel_batch(cancelled.id)).status == "cancelling"
        bad = await t.create_batch((await t.upload_batch_file(b"{not json}\n" + good)).id)
        await asyncio.sleep(0.1)
        expired = await t.retrieve_batch(expiring.id)
        assert expired.status == "expired"
        lines = (await t.download_file(expired.error_file_id or "")).splitlines()
        assert all(json.loads(x)["error"]["code"] == "batch_expired" for x in lines)
        assert (await t.retrieve_batch(cancelled.id)).status == "cancelled"
        failed = await t.retrieve_batch(bad.id)
        assert failed.status == "failed" and failed.errors["data"][0]["code"] == "invalid_json_line"
        await t.aclose()


async def test_anthropic_message_batch_lifecycle_and_cancel():
    timing = BatchTiming(
        validating_s=0.0, in_progress_s=0.05, cancel_delay_s=0.01, item_error_rate=0.2
    )
    async with Simulator(SimConfig(batch=timing), Dataset(ROWS)) as sim:
        spec = simulator_catalogue(sim.base_url)[ANTHROPIC_MODEL]
        t = AnthropicAdapter(base_url=spec.base_url, api_key=Secret(ENV["SIM_ANTHROPIC_API_KEY"]))
        reqs = [(row.id, spec, CompletionRequest.from_prompt(row.prompt)) for row in ROWS]
        batch = await t.create_message_batch(reqs)
        assert batch.processing_status == "in_progress"
        while batch.processing_status != "ended":
            await asyncio.sleep(0.01)
            batch = await t.retrieve_message_batch(batch.id)
        assert batch.results_url and batch.results_url.endswith(f"/{batch.id}/results")
        parsed = [
            parse_batch_result_line(x, spec)
            for x in (await t.message_batch_results(batch.id)).splitlines()
        ]
        assert sorted(cid for cid, _ in parsed) == sorted(r.id for r in ROWS)
        assert any(isinstance(r, Exception) for _, r in parsed)
        slow = BatchTiming(in_progress_s=10.0, cancel_delay_s=0.01)
        sim.anthropic_batches._tl.t = slow  # a slow job to cancel mid-way
        job = await t.create_message_batch(reqs[:4])
        assert (await t.cancel_message_batch(job.id)).processing_status == "canceling"
        await asyncio.sleep(0.03)
        ended = await t.retrieve_message_batch(job.id)
        assert ended.processing_status == "ended" and ended.request_counts.canceled == 4
        kinds = {
            type(r).__name__
            for _, r in (
                parse_batch_result_line(x, spec)
                for x in (await t.message_batch_results(job.id)).splitlines()
            )
        }
        assert kinds == {"RequestTimeoutError"}
        await t.aclose()


def test_cli_starts_and_serves():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker",
            "sim-provider",
            "--port",
            "0",
            "--latency",
            "uniform:1:2",
            "--fault",
            "500:0.0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "sim_provider_ready"
        r = httpx.post(
            f"{ready['openai_base_url']}/chat/completions",
            headers={"authorization": "Bearer sk-x"},
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()


@pytest.mark.parametrize("text", ["fixed:5", "uniform:1:2", "lognormal:100:0.5", "7"])
def test_latency_parse(text):
    Latency.parse(text)


def test_fault_parse():
    f = Fault.parse("529:0.25:model=a|b:api=anthropic")
    assert (f.kind, f.rate, f.models, f.api) == ("529", 0.25, ("a", "b"), "anthropic")
    assert Fault.parse("500@1,3").at == (1, 3)
    with pytest.raises(ValueError):
        Fault.parse("teapot:1")
