"""The batch backends (worker.batch.backends) against the simulator's Batch APIs: submit, find a
job again after a crash (and not another one), follow it to the end, parse results in any
order with malformed lines skipped."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tests.providers.conftest import ENV, OPENAI_KEY
from worker.batch.backends import AnthropicBatchBackend, BatchBackend, OpenAIBatchBackend
from worker.config.models import ANTHROPIC_MODEL, STRONG_MODEL, simulator_catalogue
from worker.providers.anthropic import AnthropicAdapter
from worker.providers.openai import OpenAIAdapter
from worker.providers.types import CompletionRequest, CompletionResult, Secret
from worker.sim import BatchTiming, SimConfig, Simulator

TIMING = BatchTiming(
    validating_s=0.02,
    in_progress_s=0.05,
    finalizing_s=0.02,
    item_error_rate=0.2,
    malformed_line_rate=0.1,
)


def _backend(kind: str, sim: Simulator) -> BatchBackend:
    catalogue = simulator_catalogue(sim.base_url)
    if kind == "openai":
        spec = catalogue[STRONG_MODEL]
        return OpenAIBatchBackend(
            OpenAIAdapter(base_url=spec.base_url, api_key=Secret(OPENAI_KEY)), spec
        )
    spec = catalogue[ANTHROPIC_MODEL]
    key = Secret(ENV["SIM_ANTHROPIC_API_KEY"])
    return AnthropicBatchBackend(AnthropicAdapter(base_url=spec.base_url, api_key=key), spec)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_submit_find_follow_and_parse(kind: str) -> None:
    async with Simulator(SimConfig(batch=TIMING, seed=1)) as sim:
        backend = _backend(kind, sim)
        since = datetime.now(UTC)
        n = 40
        lines = [
            backend.encode(f"p0-o{i}", CompletionRequest.from_prompt(f"question {i}?"))
            for i in range(n)
        ]
        assert all(len(line) < backend.max_bytes for line in lines)
        file_id = await backend.upload("job-a", lines)
        assert (file_id is not None) is (kind == "openai")
        submitted = await backend.create("job-a", lines, file_id)
        # a member that crashed after the create call finds the batch again ...
        assert await backend.find("job-a", n, since) == submitted.provider_batch_id
        # ... and never mistakes another job (or a job never created) for it
        if kind == "openai":
            assert await backend.find("job-b", n, since) is None
        else:
            assert await backend.find("job-b", n + 1, since) is None
            assert await backend.find("job-a", n, since + timedelta(hours=1)) is None
        progress = await backend.progress(submitted.provider_batch_id)
        while progress.phase != "ended":
            await asyncio.sleep(0.02)
            progress = await backend.progress(submitted.provider_batch_id)
        results = await backend.results(submitted.provider_batch_id, progress)
        await backend.transport.aclose()  # type: ignore[attr-defined]
    ids = [cid for cid, _ in results]
    assert len(ids) == len(set(ids)) and set(ids) <= {f"p0-o{i}" for i in range(n)}
    ok = [r for _, r in results if isinstance(r, CompletionResult)]
    failed = [r for _, r in results if not isinstance(r, CompletionResult)]
    assert ok and failed  # item errors come back as errors, not as answers
    if kind == "openai":
        assert len(results) < n  # malformed output lines are skipped, their items missing
    spec = backend.spec  # type: ignore[attr-defined]
    for r in ok:
        assert r.cost_usd == pytest.approx(spec.cost_usd(r.usage, batch=True))


async def test_anthropic_find_is_ambiguous_for_two_same_sized_jobs() -> None:
    """Message Batches carry no metadata: two same-sized jobs in the same minute cannot be told
    apart, so neither is adopted (the documented trade-off; the job is submitted again)."""
    async with Simulator(SimConfig(batch=TIMING)) as sim:
        backend = _backend("anthropic", sim)
        since = datetime.now(UTC)
        lines = [backend.encode(f"c{i}", CompletionRequest.from_prompt("x")) for i in range(3)]
        await backend.create("one", lines, None)
        assert await backend.find("one", 3, since) is not None
        await backend.create("two", lines, None)
        assert await backend.find("one", 3, since) is None
        await backend.transport.aclose()  # type: ignore[attr-defined]
