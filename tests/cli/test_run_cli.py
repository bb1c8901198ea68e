"""`llmroute` for a newcomer (issue 16): `--version`, defaults in `--help`, completion, one-line
user errors with a hint and exit status 2 checked before any side effect, `run --check`, the
environment overrides, readiness with missing keys, the metrics-port fallback, the idle-member
warning, readable logs and progress lines. No broker unless marked."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

import schemas
from routers.artifact import load_artifact
from tests.kafka_support import unique_topic
from tests.worker.support import ROOT, SIM_KEYS, poll_until, worker_config_data
from worker import config as config_mod
from worker import preflight
from worker.__main__ import main
from worker.app import start_ops_server
from worker.cli import Stages, UserError, next_hint
from worker.cli.ops.status import Member, PartitionLag, Status
from worker.config.kafka import TOPIC_ROLES
from worker.kafka.observer import MetricsObserver
from worker.kafka.records import Handled
from worker.logs import TextFormatter, setup_logging
from worker.metrics import Health, WorkerMetrics
from worker.sim import Simulator


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _write(tmp_path: Path, data: dict[str, Any], name: str = "worker.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse
        rc = int(exc.code or 0)
    return rc, _one_line(capsys)


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    """`llmroute run` installs its log handler on the root logger: take it away afterwards."""
    root, kafka = logging.getLogger(), logging.getLogger("aiokafka")
    handlers, level, kafka_level = list(root.handlers), root.level, kafka.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    kafka.setLevel(kafka_level)


# ---------------------------------------------------------------- CLI basics


def test_version_and_defaults_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("llmroute ")
    with pytest.raises(SystemExit):
        main(["sim-provider", "--help"])
    out = capsys.readouterr().out
    assert "(default: 8089)" in out and "(default: fixed:0)" in out


def test_completion_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "llmroute" in script and "complete" in script
    for command in ("run", "dlq", "topics", "sim-provider"):
        assert command in script


def test_a_usage_error_is_one_line_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    rc, line = _run(capsys, "run", "--config", "x.toml", "--log-level", "LOUD")
    assert rc == 2
    assert "invalid choice: 'LOUD'" in line and "(hint: llmroute run --help)" in line


# ---------------------------------------------------------------- run: user errors


@pytest.fixture
def config_data(artifact: Path) -> dict[str, Any]:
    """A member's config on the simulator's catalogue, with a broker that never answers."""
    topics = {"requests": "never.created.requests"}
    data = worker_config_data(f"127.0.0.1:{_free_port()}", topics, artifact, "http://127.0.0.1:9")
    data["policies"] = {"default": {"kind": "threshold"}}
    return data


def test_run_user_errors_are_one_line_before_any_side_effect(
    tmp_path: Path,
    config_data: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIM_OPENAI_API_KEY", "sk-local-test")
    cases: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
        ("no file", {}, {}, "no config file"),
        ("unknown key", {"loop": {"max_in_flihgt": 3}}, {}, "max_in_flihgt"),
        ("missing router", {"router": {"artifact": str(tmp_path / "nope")}}, {}, "no router"),
        (
            "langfuse key",
            {"telemetry": {"langfuse": {"public_key_env": "FH_NO_SUCH_VAR"}}},
            {},
            "FH_NO_SUCH_VAR",
        ),
        ("log level", {}, {"LLMROUTE_LOG_LEVEL": "LOUD"}, "unknown log level"),
        ("metrics port", {}, {"LLMROUTE_METRICS_PORT": "x"}, "is not a port number"),
        ("broker", {}, {}, "cannot reach Kafka"),
    ]
    for name, change, env, expect in cases:
        data = json.loads(json.dumps(config_data))
        for section, value in change.items():
            data[section] = {**data.get(section, {}), **value}
        path = str(tmp_path / "none.json") if name == "no file" else _write(tmp_path, data)
        for var in ("LLMROUTE_LOG_LEVEL", "LLMROUTE_METRICS_PORT"):
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        rc, line = _run(capsys, "run", "--config", path)
        assert rc == 2, name
        assert line.startswith("llmroute run: ") and expect in line and "(hint: " in line, line


def test_run_check_reports_every_problem(
    tmp_path: Path,
    config_data: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SIM_OPENAI_API_KEY", raising=False)
    assert main(["run", "--config", _write(tmp_path, config_data), "--check"]) == 1
    out = capsys.readouterr().out.splitlines()
    by_name = {line.split()[1]: line for line in out[:-1]}
    assert by_name["config"].startswith("ok")
    assert by_name["router"].startswith("ok") and "classifier" in by_name["router"]
    assert by_name["keys"].startswith("FAIL") and "SIM_OPENAI_API_KEY (for " in by_name["keys"]
    assert by_name["broker"].startswith("FAIL") and "make kafka-up" in by_name["broker"]
    assert out[-1] == "2 failed: keys, broker"


def test_env_overrides(config_data: dict[str, Any]) -> None:
    config = config_mod.parse(config_data)
    env = {
        "LLMROUTE_BOOTSTRAP_SERVERS": "k:1",
        "LLMROUTE_GROUP_ID": "g2",
        "LLMROUTE_METRICS_PORT": "9999",
    }
    out = preflight.with_env(config, env)
    assert (out.kafka.bootstrap_servers, out.kafka.group_id, out.metrics.port) == (
        "k:1",
        "g2",
        9999,
    )
    assert preflight.with_env(config, {}) == config
    with pytest.raises(UserError, match="not a port"):
        preflight.with_env(config, {"LLMROUTE_METRICS_PORT": "70000"})


def test_missing_keys_cover_every_candidate_of_every_policy(
    config_data: dict[str, Any], artifact: Path
) -> None:
    art = load_artifact(artifact)
    strong, weak = art.router.strong, art.router.weak
    data = {**config_data, "policies": {"default": {"kind": "threshold"}}}
    data["models"][strong]["api_key_env"] = "FH_STRONG_KEY"
    config = config_mod.parse(data)
    env = {"SIM_OPENAI_API_KEY": "k"}
    # before: only a warning, and /readyz said ok; every strong-routed request then failed
    assert preflight.missing_keys(config, art, env) == {strong: "FH_STRONG_KEY"}
    assert preflight.missing_keys(config, art, {**env, "FH_STRONG_KEY": "k"}) == {}
    cascade = config_mod.parse(
        {**data, "policies": {"default": {"kind": "cascade", "cheap": weak, "strong": weak}}}
    )
    assert preflight.missing_keys(cascade, art, env) == {}  # the strong model is never chosen
    graded = config_mod.parse(
        {
            **data,
            "policies": {
                "default": {"kind": "cascade", "cheap": weak, "strong": weak},
                "graded": {"kind": "cascade", "cheap": weak, "cascade_grader": strong},
            },
        }
    )
    assert preflight.missing_keys(graded, art, env) == {strong: "FH_STRONG_KEY"}
    assert not preflight.keys_check(config, art, env).ok


# ---------------------------------------------------------------- readiness, metrics, idle


def test_readiness_blocked_and_idle_note() -> None:
    health = Health()
    health.set_ready(True)
    assert health.readiness() == (True, "ok")
    metrics = WorkerMetrics()
    observer = MetricsObserver(metrics, health, "llm.requests")
    observer.assignment(0, 2)
    ok, reason = health.readiness()
    assert ok and reason.startswith("idle: this member holds none of the 2 partitions")
    assert metrics.registry.get_sample_value("llmroute_idle_member") == 1
    observer.assignment(1, 2)
    assert health.readiness() == (True, "ok")
    assert metrics.registry.get_sample_value("llmroute_idle_member") == 0
    health.block("API key not set: X")
    assert health.readiness() == (False, "API key not set: X")


async def test_a_second_member_on_the_host_takes_a_free_metrics_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _free_port()
    first = await start_ops_server(WorkerMetrics(), Health(), "127.0.0.1", port)
    try:
        with caplog.at_level(logging.WARNING, logger="worker.app"):
            second = await start_ops_server(WorkerMetrics(), Health(), "127.0.0.1", port)
        try:
            assert first.port == port and second.port != port
            assert f"metrics port {port} is taken" in caplog.text and second.url in caplog.text
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{second.url}/healthz")).status_code == 200
        finally:
            await second.stop()
    finally:
        await first.stop()


def test_status_warns_about_idle_members() -> None:
    status = Status(group="g", topic="t", state="Stable")
    status.partitions = [PartitionLag(0, 1, 1, 0)]
    status.members = [Member("a", "c", "h", ["t:0"]), Member("b", "c", "h", [])]
    assert status.idle_members == 1
    assert status.warnings() == [
        "2 members for 1 partitions of t: 1 idle (raise [topics].partitions for new topics, "
        "or run fewer members)"
    ]


# ---------------------------------------------------------------- logs and progress


def test_text_logs_and_bad_settings() -> None:
    stream = io.StringIO()
    handler = setup_logging("info", stream, fmt="text")
    try:
        logging.getLogger("fh.test").info("hello %s", "there", extra={"n": 3, "stats": {"a": 1}})
    finally:
        logging.getLogger().removeHandler(handler)
    line = stream.getvalue().strip()
    assert line.endswith("INFO    fh.test  hello there  n=3")
    assert isinstance(handler.formatter, TextFormatter)
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("LOUD", io.StringIO())
    with pytest.raises(ValueError, match="unknown log format"):
        setup_logging("INFO", io.StringIO(), fmt="xml")


def test_stages_and_next_hint() -> None:
    stream = io.StringIO()
    ticks = iter([0.0, 0.0, 1.5, 1.5, 2.0])
    stages = Stages("train", stream=stream, clock=lambda: next(ticks))
    stages.begin("featurising 10 prompts")
    stages.end()
    stages.begin("training")
    stages.end("2 heads")
    next_hint("llmroute run --config FILE", stream)
    assert stream.getvalue().splitlines() == [
        "train: featurising 10 prompts ...",
        "train: ... 1.5 s",
        "train: training ...",
        "train: ... 2 heads, 0.5 s",
        "next: llmroute run --config FILE",
    ]


# ---------------------------------------------------------------- members as processes (broker)


def _spawn(config_path: str, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker",
                "run",
                "--config",
                config_path,
                "--log-format",
                "text",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _readyz(port_of: Callable[[], int | None], timeout_s: float) -> tuple[int, str]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    last = (0, "")
    async with httpx.AsyncClient(timeout=2.0) as client:
        while asyncio.get_running_loop().time() < deadline:
            port = port_of()
            if port is not None:
                try:
                    r = await client.get(f"http://127.0.0.1:{port}/readyz")
                    last = (r.status_code, r.json()["reason"])
                    if r.status_code == 200:
                        return last
                except httpx.HTTPError:
                    pass
            await asyncio.sleep(0.3)
    return last


def _metrics_port(log: Path) -> int | None:
    found = re.search(r"metrics http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
    return int(found.group(1)) if found else None


@pytest.mark.kafka
@pytest.mark.slow
async def test_members_on_one_host_keys_readiness_and_their_lines(
    kafka_bootstrap: str, tmp_path: Path, artifact: Path, sim: Simulator
) -> None:
    prefix = unique_topic("fh-run")
    topics = {role: f"{prefix}.{role}" for role in TOPIC_ROLES}
    data = worker_config_data(kafka_bootstrap, topics, artifact, sim.base_url)
    port = _free_port()
    data["metrics"] = {"enabled": True, "port": port}
    data["topics"]["partitions"] = 2
    config = _write(tmp_path, data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIM_")}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    # a: no key for the simulator's OpenAI models; b: keys set, same metrics port as a
    members = [_spawn(config, logs[0], env)]
    try:
        assert await poll_until(lambda: _metrics_port(logs[0]) is not None, 120)
        members.append(_spawn(config, logs[1], {**env, **SIM_KEYS}))
        assert await _readyz(lambda: _metrics_port(logs[1]), 120) == (200, "ok")
        status, reason = await _readyz(lambda: port, 5)
        # before: a missing key was a warning and /readyz said ok while every request failed
        assert status == 503 and "API key not set: SIM_OPENAI_API_KEY (for " in reason
    finally:
        for p in members:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=90) for p in members]
    text_a, text_b = (log.read_text() for log in logs)
    assert codes == [0, 0], (text_a[-2000:], text_b[-2000:])
    # before: the second member died on the fixed metrics port
    assert _metrics_port(logs[0]) == port and _metrics_port(logs[1]) != port
    assert f"metrics port {port} is taken" in text_b
    assert f"member of group {data['kafka']['group_id']}" in text_b
    assert f"reads {topics['requests']} (2 partitions)" in text_b
    assert "router classifier" in text_b
    assert "worker stopped: " in text_b and " responses published, " in text_b
    assert "{" not in next(line for line in text_b.splitlines() if "worker stopped" in line)


@pytest.mark.kafka
async def test_a_missing_router_creates_no_topic(
    kafka_bootstrap: str,
    tmp_path: Path,
    config_data: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = unique_topic("fh-norouter")
    topics = {role: f"{prefix}.{role}" for role in TOPIC_ROLES}
    data = {**config_data, "topics": topics, "router": {"artifact": str(tmp_path / "nope")}}
    data["kafka"] = {**data["kafka"], "bootstrap_servers": kafka_bootstrap}
    rc = await asyncio.to_thread(main, ["run", "--config", _write(tmp_path, data)])
    assert rc == 2 and "no router artifact" in _one_line(capsys)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    # before: 10 topics with 1 partition each were created, then the router failed to load
    assert not existing & set(topics.values())


def test_cost_per_tenant_has_a_bounded_label() -> None:
    metrics = WorkerMetrics(tenants=("acme",))
    observer = MetricsObserver(metrics, Health(), "llm.requests")
    for i, tenant in enumerate(["acme", "acme", "someone-else", "yet-another"]):
        response = schemas.RouteResponse(
            schema_version=1,
            request_id=f"r-{i}",
            tenant=tenant,
            status="ok",
            model="m",
            provider="openai",
            message=None,
            finish_reason=None,
            usage=schemas.Usage(input_tokens=1, output_tokens=1),
            cost_usd=0.25,
            latency_ms=1.0,
            decision=None,
            attempts=[],
            error=None,
            trace_id=None,
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        observer.published(Handled(response=response, strong_cost_usd=1.0))
    value = metrics.registry.get_sample_value
    assert value("llmroute_tenant_cost_usd_total", {"tenant": "acme"}) == 0.5
    assert value("llmroute_tenant_cost_usd_total", {"tenant": "other"}) == 0.5
    assert value("llmroute_tenant_always_strong_cost_usd_total", {"tenant": "other"}) == 2.0
    assert value("llmroute_tenant_cost_usd_total", {"tenant": "someone-else"}) is None


def test_a_model_is_served_while_any_deployment_has_its_key(
    config_data: dict[str, Any], artifact: Path
) -> None:
    art = load_artifact(artifact)
    data = json.loads(json.dumps(config_data))
    strong = data["models"][art.router.strong]
    strong["deployments"] = [
        {"name": "a", "api_key_env": "FH_KEY_A"},
        {"name": "b", "api_key_env": "FH_KEY_B", "base_url": "http://127.0.0.1:8/v1"},
    ]
    strong.pop("api_key_env")
    config = config_mod.parse(data)
    env = {"SIM_OPENAI_API_KEY": "k"}
    assert preflight.missing_keys(config, art, env) == {art.router.strong: "FH_KEY_A, FH_KEY_B"}
    assert preflight.missing_keys(config, art, {**env, "FH_KEY_B": "k"}) == {}


@pytest.mark.parametrize("argv", [("dataset", "build", "--out", "{tmp}/x.jsonl"), ("ab", "report")])
def test_commands_without_their_own_broker_check_end_in_one_line(
    argv: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(tmp=tmp_path) for a in argv]
    assert main([*args, "--bootstrap", f"127.0.0.1:{_free_port()}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"llmroute {argv[0]}: cannot reach Kafka: no broker answered")


def test_no_hints_for_commands_run_by_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMROUTE_NO_HINTS", "1")
    stream = io.StringIO()
    next_hint("llmroute run --config FILE", stream)
    assert stream.getvalue() == ""


def test_tail_decodes_every_topic_role() -> None:
    from worker.cli.ops.tail import KINDS

    assert set(KINDS) == set(TOPIC_ROLES)
