"""The shortcuts the per-request path takes for CPU (bench/worker_bench.py) give what the plain
ways gave: the key-hash partitioner, the dedupe marker bytes, memoised policy resolution,
cached metric children, waiting for acknowledgements."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import generate_latest

from routers.artifact import load_artifact
from schemas import RoutingOptions
from tests.worker.support import ROWS, request_event, worker_config
from worker.kafka.dedupe import marker
from worker.kafka.publisher import KeyHashPartitioner, all_acked
from worker.metrics import WorkerMetrics
from worker.pipeline.routing import RoutingCore


def test_key_hash_partitioner_places_keys_as_aiokafka_does() -> None:
    ours, theirs = KeyHashPartitioner(), DefaultPartitioner()
    rng = random.Random(7)
    for i in range(3000):
        key = rng.randbytes(1 + i % 40)
        partitions = list(range(1 + i % 17))
        expected = theirs(key, partitions, partitions)
        assert ours(key, partitions, partitions) == expected
        assert ours(key, partitions, partitions) == expected  # remembered hash, same answer
    assert ours(None, [0, 1, 2], [2]) == 2  # no key: one of the available partitions


def test_marker_bytes_are_the_json_they_always_were() -> None:
    for partition, offset in ((0, 0), (5, 123_456_789_012), (63, 7)):
        value = marker(partition, offset)
        assert value == json.dumps({"partition": partition, "offset": offset}).encode()


def test_plain_requests_share_one_resolution_and_overrides_do_not(artifact: Path) -> None:
    config = worker_config(
        "127.0.0.1:1", {"requests": "unit.requests"}, artifact, "http://127.0.0.1:1"
    )
    core = RoutingCore(config, load_artifact(artifact), config.models)
    first, second = request_event(ROWS[0], 1), request_event(ROWS[1], 2)
    plain = core.resolve(first)
    assert core.resolve(second) is plain
    asked = request_event(ROWS[0], 3, routing=RoutingOptions(threshold=0.9))
    overridden = core.resolve(asked)
    assert overridden is not plain
    assert overridden.options.threshold == 0.9  # the default tenant allows the override
    other = request_event(ROWS[0], 4, tenant="globex")
    assert core.resolve(other) is not plain
    # the decisions are those of a core that never memoised anything
    fresh = RoutingCore(config, load_artifact(artifact), config.models)
    for request in (first, second, asked, other):
        again = core.decide(request, core.resolve(request))
        assert again == fresh.decide(request, fresh._resolve(request, None))


def test_cached_metric_children_count_as_labels_did() -> None:
    metrics = WorkerMetrics()
    for _ in range(3):
        metrics.observe_request("small", "ok", 0.2)
        metrics.add_cost("small", 0.5, 2.0)
        metrics.observe_arm("exp:a", "ok", 0.5, 0.2)
    metrics.observe_request(None, "error", 0.1)
    text = generate_latest(metrics.registry).decode()
    assert 'llmroute_requests_total{model="small",status="ok"} 3.0' in text
    assert 'llmroute_requests_total{model="none",status="error"} 1.0' in text
    assert 'llmroute_request_duration_seconds_count{model="small"} 3.0' in text
    assert 'llmroute_cost_usd_total{model="small"} 1.5' in text
    assert 'llmroute_ab_requests_total{arm="exp:a",status="ok"} 3.0' in text
    assert 'llmroute_ab_request_duration_seconds_count{arm="exp:a"} 3.0' in text


async def test_all_acked_raises_the_first_failure_and_leaves_none_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    ok, bad, late = loop.create_future(), loop.create_future(), loop.create_future()
    ok.set_result(1)
    await all_acked([ok])
    bad.set_exception(RuntimeError("broker said no"))
    with pytest.raises(RuntimeError, match="broker said no"):
        await all_acked([ok, bad, late])
    late.set_exception(ValueError("later"))  # retrieved by the callback: no warning at exit
    await asyncio.sleep(0)
    assert late.done()
