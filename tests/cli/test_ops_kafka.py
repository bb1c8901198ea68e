"""The operator commands end to end (`llmroute produce | tail | status | dlq replay`) against a
real broker, through the CLI's own entry point."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

import schemas
from tests.conftest import TopicFactory
from tests.kafka_support import unique_topic
from tests.worker.support import read_all
from worker.__main__ import main
from worker.cli.ops.dlq import REPLAY_HEADER
from worker.kafka.deadletter import dead_letter
from worker.metrics import Health, OpsServer, OpsServerConfig, WorkerMetrics

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


async def _cli(*argv: str) -> int:
    """`llmroute ARGV...` in this process (it runs its own event loop, hence the thread)."""
    return await asyncio.to_thread(main, list(argv))


async def _send(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes | None]],
    partition: int | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


async def _topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


def _config(tmp_path: Path, bootstrap: str, group: str = "g", **topics: str) -> str:
    lines = ["[kafka]", f'bootstrap_servers = "{bootstrap}"', f'group_id = "{group}"', "[topics]"]
    lines += [f'{k} = "{v}"' for k, v in topics.items()]
    path = tmp_path / "ops.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# ---------------------------------------------------------------- produce


async def test_produce_jsonl_file(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = await new_topic("ops-produce", partitions=3)
    event = {
        "schema_version": 1,
        "request_id": "given-1",
        "tenant": "beta",
        "created_at": NOW.isoformat(),
        "messages": [{"role": "user", "content": "hello"}],
    }
    lines = [
        json.dumps(event),
        json.dumps({"id": "q1", "prompt": "dataset prompt", "scores": {"m": 1.0}}),
        "plain text prompt",
        "",
        '{"messages": [{"role": "robot", "content": "x"}]}',
        "another prompt",
    ]
    path = tmp_path / "in.jsonl"
    # and a line that is not UTF-8: skipped, the rest still sent; a byte order mark is not data
    body = ("\n".join(lines) + "\n").encode() + b"caf\xe9 au lait\n"
    path.write_bytes(b"\xef\xbb\xbf" + body)
    rc = await _cli(
        "produce",
        str(path),
        "--bootstrap",
        kafka_bootstrap,
        "--topic",
        topic,
        "--tenant",
        "acme",
        "--id-prefix",
        "p-",
        "--rate",
        "50",
        "--progress",
    )
    out, err = capsys.readouterr()
    assert rc == 1  # two lines were invalid
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["produced"], summary["invalid"], summary["topic"]) == (4, 2, topic)
    assert "line 5: skipped" in err and "role" in err
    assert "line 7: skipped: not UTF-8" in err
    assert "produce [" in err and "4/6" in err  # the progress bar (6 non-blank lines)
    records = await read_all(kafka_bootstrap, topic, expect=4, timeout_s=30)
    got = {r.key.decode(): schemas.decode(r.value, schemas.RouteRequest) for r in records}
    assert set(got) == {"given-1", "p-000001", "p-000002", "p-000003"}
    assert got["given-1"].tenant == "beta"  # a full event keeps its fields
    assert got["p-000002"].tenant == "acme"
    assert got["p-000002"].messages[0].content == "plain text prompt"
    assert len(records) == 4


async def test_produce_from_stdin_with_a_limit(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("ops-stdin")
    lines = [f"prompt number {i}\n".encode() for i in range(10)]
    lines.insert(2, b"caf\xe9 au lait\n")  # not UTF-8
    lines.insert(4, b'"half \\ud800 pair"\n')  # valid JSON, no valid text
    text = b"".join(lines)
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "worker",
            "produce",
            "-",
            "--bootstrap",
            kafka_bootstrap,
            "--topic",
            topic,
            "--limit",
            "6",
            "--id-prefix",
            "s-",
        ],
        input=text,
        capture_output=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 1, stderr  # the two bad lines are skipped, counted invalid
    assert (json.loads(stdout)["produced"], json.loads(stdout)["invalid"]) == (6, 2)
    assert "line 3: skipped: not UTF-8" in stderr
    assert "line 5: skipped: a lone surrogate" in stderr
    assert "produce [" not in stderr  # stderr is not a terminal: no progress by default
    records = await read_all(kafka_bootstrap, topic, expect=6, timeout_s=30)
    assert sorted(r.key.decode() for r in records) == [f"s-{i:06d}" for i in range(6)]


# ---------------------------------------------------------------- tail


def _response(request_id: str, tenant: str, status: str, model: str | None) -> bytes:
    error = schemas.ErrorInfo(type="ProviderTimeoutError", message="late", retriable=True)
    return schemas.encode(
        schemas.RouteResponse(
            schema_version=1,
            request_id=request_id,
            tenant=tenant,
            status=status,  # type: ignore[arg-type]
            model=model,
            provider="openai" if model else None,
            message=schemas.OutputMessage(content=f"answer {request_id}")
            if status == "ok"
            else None,
            finish_reason="stop" if status == "ok" else None,
            usage=schemas.Usage(),
            cost_usd=0.001,
            latency_ms=12.0,
            decision=None,
            attempts=[],
            error=None if status == "ok" else error,
            trace_id=None,
            created_at=NOW,
        )
    )


async def test_tail_filters_pretty_and_json(
    kafka_bootstrap: str, new_topic: TopicFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = await new_topic("ops-tail", partitions=2)
    records = [
        (b"r1", _response("r1", "acme", "ok", "small")),
        (b"r2", _response("r2", "beta", "ok", "small")),
        (b"r3", _response("r3", "acme", "error", None)),
        (b"junk", b"not a response"),
        (b"r4", _response("r4", "acme", "ok", "big")),
        (b"r5", _response("r5", "acme", "ok", "small")),
    ]
    await _send(kafka_bootstrap, topic, records, partition=0)
    base = (
        "tail",
        "responses",
        "--bootstrap",
        kafka_bootstrap,
        "--topic",
        topic,
        "--from-beginning",
    )
    assert await _cli(*base, "--tenant", "acme", "--status", "ok", "--max", "2") == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert [line.split()[2] for line in lines] == ["r1", "r4"]
    assert "model=big" in lines[1] and "'answer r4'" in lines[1]
    assert "not a response" in err

    assert await _cli(*base, "--model", "small", "--json", "--idle-timeout-s", "2") == 0
    out, _ = capsys.readouterr()
    got = [json.loads(line)["request_id"] for line in out.strip().splitlines()]
    assert got == ["r1", "r2", "r5"]  # ran out of records, stopped by the idle timeout

    assert await _cli(*base, "--status", "error", "--max", "1") == 0
    out, _ = capsys.readouterr()
    assert "ProviderTimeoutError: late" in out and "r3" in out


async def test_tail_missing_topic_is_a_clear_error(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = unique_topic("ops-missing")
    rc = await _cli(
        "tail", "--bootstrap", kafka_bootstrap, "--topic", missing, "--idle-timeout-s", "5"
    )
    assert rc == 2
    assert missing in capsys.readouterr().err
    assert missing not in await _topics(kafka_bootstrap)  # looking did not create it


# ---------------------------------------------------------------- status


def _job(job_id: str, status: str) -> bytes:
    return schemas.encode(
        schemas.BatchJob(
            schema_version=1,
            job_id=job_id,
            provider="openai",
            model="m",
            status=status,  # type: ignore[arg-type]
            items=[],
            created_at=NOW,
            updated_at=NOW,
        )
    )


async def test_status_lag_members_in_flight_batch_jobs_dead_letters(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    requests = await new_topic("ops-status", partitions=3)
    dlq = await new_topic("ops-status-dlq", partitions=3)
    jobs = await new_topic("ops-status-jobs", partitions=1, **{"cleanup.policy": "compact"})
    group = f"g-{requests}"
    for p, n in enumerate((5, 3, 0)):
        await _send(kafka_bootstrap, requests, [(None, b"{}")] * n, partition=p)
    await _send(kafka_bootstrap, dlq, [(None, b"x"), (None, b"y")], partition=1)
    await _send(
        kafka_bootstrap,
        jobs,
        [
            (f"{requests}:0:j1".encode(), _job("j1", "submitted")),
            (f"{requests}:0:j2".encode(), _job("j2", "in_progress")),
            (f"{requests}:0:j1".encode(), _job("j1", "in_progress")),  # the latest value wins
            (f"{requests}:1:j3".encode(), _job("j3", "published")),
            (f"{requests}:1:j3".encode(), None),  # finished: tombstoned
        ],
    )
    config = _config(tmp_path, kafka_bootstrap, group, requests=requests, dlq=dlq, batch_jobs=jobs)

    member = AIOKafkaConsumer(
        requests,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        group_instance_id="member-a",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
    )
    metrics = WorkerMetrics()
    metrics.in_flight.set(7)
    await member.start()
    try:
        async with OpsServer(metrics, Health(), OpsServerConfig(port=0)) as ops:
            url = ops.url
            got = 0
            while got < 8:
                batch = await member.getmany(timeout_ms=1000)
                got += sum(len(v) for v in batch.values())
            await member.commit({TopicPartition(requests, 0): 2})  # partition 0: lag 3
            rc = await _cli(
                "status",
                "--config",
                config,
                "--metrics-url",
                url,
                "--metrics-url",
                "http://127.0.0.1:9/metrics",
                "--json",
            )
            assert rc == 0
            status = json.loads(capsys.readouterr().out)
            assert await _cli("status", "--config", config) == 0
            pretty = capsys.readouterr().out
    finally:
        await member.stop()
    lags = [(p["partition"], p["committed"], p["end"], p["lag"]) for p in status["partitions"]]
    assert lags == [(0, 2, 5, 3), (1, None, 3, 3), (2, None, 0, 0)]
    assert status["total_lag"] == 6
    assert status["state"] == "Stable"
    [m] = status["members"]
    assert m["member_id"].startswith("member-a")  # the static member's id
    assert m["partitions"] == [f"{requests}:0", f"{requests}:1", f"{requests}:2"]
    assert status["in_flight"][url] == 7.0
    assert status["in_flight"]["http://127.0.0.1:9/metrics"].startswith("error")
    assert status["batch_jobs"] == {"in_progress": 2}
    assert status["open_batch_jobs"] == 2
    assert status["dead_letters"] == 2
    assert "total lag 6" in pretty and "batch jobs open: 2 (in_progress 2)" in pretty
    assert "dead letters: 2" in pretty


# ---------------------------------------------------------------- dlq replay


def _request(request_id: str) -> bytes:
    return schemas.encode(
        schemas.RouteRequest(
            schema_version=1,
            request_id=request_id,
            tenant="acme",
            created_at=NOW,
            messages=[schemas.Message(role="user", content=f"q {request_id}")],
        )
    )


async def test_dlq_replay_dry_run_filters_and_redrive(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = await new_topic("ops-src", partitions=2)
    dlq = await new_topic("ops-dlq", partitions=2)
    letters = [  # (error type, original bytes, source offset)
        ("OversizedEvent", _request("big-1"), 10),
        ("InvalidEvent", b'{"schema_version": 1, "request_id": "bad"}', 11),
        ("InvalidEvent", _request("fixed-1"), 12),  # refused by an older decoder, valid now
        ("OversizedEvent", _request("big-2"), 13),
    ]
    await _send(
        kafka_bootstrap,
        dlq,
        [
            (
                f"k{i}".encode(),
                schemas.encode(
                    dead_letter(
                        topic=source,
                        partition=1,
                        offset=off,
                        key=f"k{i}".encode(),
                        value=value,
                        headers=[("traceparent", b"00-t")],
                        error_type=etype,
                        reason="r",
                    )
                ),
            )
            for i, (etype, value, off) in enumerate(letters)
        ],
        partition=0,
    )
    base = (
        "dlq",
        "replay",
        "--config",
        _config(tmp_path, kafka_bootstrap, requests=source, dlq=dlq),
    )

    assert await _cli(*base, "--dry-run") == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["would_replay"] == 3 and summary["dry_run"] is True
    assert out[1].startswith("skip") and "still invalid" in out[1]  # it would only come back
    assert await _cli(*base, "--dry-run", "--include-invalid") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1])["would_replay"] == 4
    assert out[1].startswith("replay") and "still invalid today" in out[1]
    assert sum(1 for line in out if line.startswith("replay")) == 4
    assert (
        await _cli(*base, "--dry-run", "--only-valid", "--source-offsets", "11:13", "--json") == 0
    )
    items = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(i["action"], i["why"][:13]) for i in items[:-1]] == [
        ("skip", "outside --sou"),
        ("skip", "still invalid"),
        ("replay", ""),
        ("skip", "outside --sou"),
    ]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(source, 0), TopicPartition(source, 1)])
    finally:
        await consumer.stop()
    assert sum(ends.values()) == 0  # a dry run sends nothing

    assert await _cli(*base, "--error-type", "OversizedEvent", "--limit", "1", "--quiet") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["replayed"], summary["skipped"]) == (1, 3)
    assert summary["targets"] == {source: 1}
    [record] = await read_all(kafka_bootstrap, source, expect=1, timeout_s=30)
    assert (record.key, record.value) == (b"k0", _request("big-1"))  # the original bytes
    headers = dict(record.headers)
    assert headers["traceparent"] == b"00-t"
    assert headers[REPLAY_HEADER] == f"{dlq}:0:0".encode()

    assert await _cli(*base, "--offsets", "1:", "--quiet") == 0
    assert json.loads(capsys.readouterr().out)["replayed"] == 2  # fixed-1 and big-2, not "bad"
    records = await read_all(kafka_bootstrap, source, expect=3, timeout_s=30)
    assert sorted(r.key for r in records) == [b"k0", b"k2", b"k3"]
