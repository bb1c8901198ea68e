"""Per-tenant spend limits per hour and day (worker.pipeline.spend): the ledger's arithmetic with an
injected clock, the pipeline holding one member to its limit, and two members sharing spend on a
real compacted topic."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from routers.artifact import load_artifact
from tests.conftest import TopicFactory
from tests.worker.support import ROWS, SIM_KEYS, poll_until, request_event, worker_config
from worker.kafka.records import Handled, RecordInfo
from worker.pipeline.core import Pipeline
from worker.pipeline.routing import RoutingCore
from worker.pipeline.spend import SpendLedger, SpendLimit, SpendSync
from worker.providers.client import ModelClient
from worker.sim import Simulator


class Clock:
    def __init__(self, now: float = 1_000_000 * 3600.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_reservations_count_at_once_and_settle_to_the_real_cost() -> None:
    clock = Clock()
    ledger = SpendLedger("m1", {"acme": SpendLimit(per_hour_usd=1.0)}, clock)
    assert ledger.reserve("acme", 0.6) is None
    why = ledger.reserve("acme", 0.6)  # 0.6 in flight + 0.6 > 1.0
    assert why is not None and "spend limit" in why and "hour" in why
    ledger.settle("acme", 0.6, 0.1)  # the call cost less than its bound
    assert ledger.reserve("acme", 0.6) is None
    assert ledger.reserve("globex", 1e9) is None  # no limit: never counted
    clock.now += 3600  # a new hour
    assert ledger.reserve("acme", 0.9) is None


def test_the_day_limit_holds_across_hours() -> None:
    clock = Clock()
    ledger = SpendLedger("m1", {"acme": SpendLimit(per_hour_usd=1.0, per_day_usd=1.5)}, clock)
    assert ledger.reserve("acme", 1.0) is None
    clock.now += 3600
    why = ledger.reserve("acme", 0.6)
    assert why is not None and "day" in why
    assert ledger.reserve("acme", 0.5) is None


def test_other_members_spend_counts_and_old_windows_and_garbage_do_not() -> None:
    clock = Clock()
    a = SpendLedger("a", {"acme": SpendLimit(per_hour_usd=1.0)}, clock)
    b = SpendLedger("b", {"acme": SpendLimit(per_hour_usd=1.0)}, clock)
    assert a.reserve("acme", 0.7) is None
    for key, value in a.changed():
        b.observe(key, value)
    b.observe(b"acme|h1|x", b'{"usd": 5.0}')  # an hour long gone
    b.observe(b"nonsense", b"{}")
    b.observe(b"acme|h1|x", b"not json")
    assert b.reserve("acme", 0.5) is not None
    assert b.reserve("acme", 0.3) is None
    assert a.changed() == []  # nothing new to publish


# ------------------------------------------------------------ in the pipeline, one member


async def test_one_member_never_overshoots_a_tenants_hourly_limit(
    artifact: Path, sim: Simulator
) -> None:
    limit = 0.01  # a few requests' worth: each reserves its chain's dearest cost bound
    config = worker_config(
        "127.0.0.1:1",
        {"requests": "t"},
        artifact,
        sim.base_url,
        tenants={"acme": {"spend_limit_usd_per_hour": limit}},
    )
    core = RoutingCore(config, load_artifact(artifact), config.models)
    ledger = SpendLedger("m1", {"acme": SpendLimit(per_hour_usd=limit)})
    async with ModelClient(core.catalogue, env=SIM_KEYS) as client:
        pipeline = Pipeline(core, client, spend=ledger)
        spent, rejected = 0.0, 0
        for i in range(40):
            handled = await pipeline.handle(
                request_event(ROWS[i], i), RecordInfo("t", 0, i, None, [], None)
            )
            assert isinstance(handled, Handled)
            r = handled.response
            spent += r.cost_usd
            if r.error is not None and "spend limit" in r.error.message:
                rejected += 1
    assert rejected > 0 and spent > 0
    assert spent <= limit


# ------------------------------------------------------------ two members, a real topic


@pytest.mark.kafka
async def test_members_share_spend_through_the_compacted_topic(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("spend", partitions=1, **{"cleanup.policy": "compact"})
    kwargs: dict[str, Any] = {"bootstrap_servers": kafka_bootstrap}
    limits = {"acme": SpendLimit(per_hour_usd=1.0)}
    a, b = SpendLedger("a", limits), SpendLedger("b", limits)
    sync_a = SpendSync(a, topic=topic, client_kwargs=kwargs, publish_interval_s=0.1)
    sync_b = SpendSync(b, topic=topic, client_kwargs=kwargs, publish_interval_s=0.1)
    await sync_a.start()
    await sync_b.start()
    try:
        assert a.reserve("acme", 0.7) is None
        a.settle("acme", 0.7, 0.6)
        window = f"h{int(time.time() // 3600)}"
        assert await poll_until(lambda: b.spent("acme", window) >= 0.6 - 1e-9, 30)
        assert b.reserve("acme", 0.5) is not None
        assert b.reserve("acme", 0.3) is None
    finally:
        await sync_a.stop()
        await sync_b.stop()
    # a member started later reads both members' spend back from the topic
    c = SpendLedger("c", limits)
    sync_c = SpendSync(c, topic=topic, client_kwargs=kwargs, publish_interval_s=0.1)
    await sync_c.start()
    try:
        assert await poll_until(lambda: c.spent("acme", window) >= 0.9 - 1e-9, 30)
        assert c.reserve("acme", 0.2) is not None
    finally:
        await sync_c.stop()
