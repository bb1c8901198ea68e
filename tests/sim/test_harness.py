"""The harness benches import (`worker.sim.harness`): it works from the installed package, and no
bench reaches into tests/ or edits sys.path."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import schemas
from tests.conftest import TopicFactory
from worker.sim.harness import (
    ROOT,
    Follower,
    create_topics,
    dataset_rows,
    produce,
    request_values,
    sim_calls,
    start_sim,
    topic_names,
)


def _benches() -> list[Path]:
    return sorted((ROOT / "bench").glob("*.py"))


@pytest.mark.parametrize("path", _benches(), ids=lambda p: p.name)
def test_a_bench_imports_the_package_not_the_tests(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("tests"), f"{path.name}: {node.module}"
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("tests") for a in node.names), path.name
        if isinstance(node, ast.Attribute) and node.attr == "path":
            assert not (isinstance(node.value, ast.Name) and node.value.id == "sys"), (
                f"{path.name} edits sys.path"
            )


def test_a_bench_runs_from_anywhere(tmp_path: Path) -> None:
    # no sys.path edit: the installed package and the bench's own folder are enough
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale_bench.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--restart-rate" in done.stdout


def test_synthetic_rows_without_the_shared_data(tmp_path: Path) -> None:
    rows = dataset_rows(50, path=tmp_path / "absent.jsonl")
    assert rows == dataset_rows(50, path=tmp_path / "absent.jsonl")  # seeded
    assert len(rows) == 50 and {len(r["scores"]) for r in rows} == {2}
    values = request_values(rows, 10, 3)
    assert [k for k, _ in values] == [b"req-000010", b"req-000011", b"req-000012"]
    event = schemas.decode(values[0][1], schemas.RouteRequest)
    assert event.messages[-1].content == rows[10]["prompt"]
    assert set(topic_names("r")) == {
        "requests",
        "responses",
        "decisions",
        "dlq",
        "done",
        "journal",
        "feedback",
        "batch_jobs",
        "control",
    }


def test_the_simulator_process_answers_and_counts() -> None:
    sim, base_url = start_sim("fixed:0")
    try:
        before = sim_calls(base_url)
        r = httpx.post(
            f"{base_url}/v1/chat/completions",
            headers={"authorization": "Bearer sk-x"},
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200
        assert sim_calls(base_url) == before + 2  # the completion and the stats call itself
    finally:
        sim.terminate()
        assert sim.wait(timeout=30) == 0
        if sim.stdout is not None:
            sim.stdout.close()


@pytest.mark.kafka
async def test_produce_and_follow(kafka_bootstrap: str, new_topic: TopicFactory) -> None:
    topic = await new_topic("harness", partitions=2)
    other = f"{topic}-made"
    await create_topics(kafka_bootstrap, [other], 3, {other: {"retention.ms": "60000"}})
    rows = dataset_rows(20)
    async with Follower(kafka_bootstrap, topic) as follower:
        await produce(kafka_bootstrap, topic, request_values(rows, 0, 20), rate=200.0)
        await produce(kafka_bootstrap, topic, request_values(rows, 0, 1))  # a repeat
        assert await follower.wait_for_count(20, timeout_s=60)
        assert await follower.wait_for_count(21, timeout_s=0.5) is False
    assert sum(follower.counts.values()) >= 20 and len(follower.values) >= 20
    assert follower.last_ms >= follower.first_ms > 0 and follower.rate >= 0
    await produce(kafka_bootstrap, other, request_values(rows, 0, 1))
