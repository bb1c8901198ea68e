"""Every command that talks to Kafka finds it the same way (`worker.cli.kafka_args`): --bootstrap,
else $LLMROUTE_BOOTSTRAP_SERVERS, else the config's broker, else $KAFKA_BOOTSTRAP, else the
default. Before, `dataset`, `judge`, `retrain` and `ab` ignored both variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.__main__ import build_parser
from worker.cli import UserError
from worker.cli.kafka_args import DEFAULT_BOOTSTRAP, connection_from_args

# one argv per command that reads Kafka settings (each completed with the flags under test)
COMMANDS = [
    ("produce", "/dev/null"),
    ("tail", "responses"),
    ("status",),
    ("dlq", "list"),
    ("dlq", "replay"),
    ("topics", "create"),
    ("dataset", "build", "--out", "x.jsonl"),
    ("judge", "--judge-model", "m"),
    ("retrain", "--data", "d.jsonl", "--registry", "reg"),
    ("ab", "report"),
]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("KAFKA_BOOTSTRAP", "LLMROUTE_BOOTSTRAP_SERVERS", "LLMROUTE_GROUP_ID"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _bootstrap(argv: tuple[str, ...], *extra: str) -> str:
    args = build_parser().parse_args([*argv, *extra])
    return connection_from_args(args).kafka.bootstrap_servers


def _config(tmp_path: Path, kafka: str) -> str:
    path = tmp_path / "worker.toml"
    path.write_text(f'{kafka}\n[topics]\nrequests = "r1"\nfeedback = "fb1"\n')
    return str(path)


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_the_flag_and_the_environment_variables(
    argv: tuple[str, ...], env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert _bootstrap(argv) == DEFAULT_BOOTSTRAP
    env.setenv("KAFKA_BOOTSTRAP", "env-host:9092")
    assert _bootstrap(argv) == "env-host:9092"
    assert _bootstrap(argv, "--bootstrap", "flag-host:9092") == "flag-host:9092"
    named = _config(tmp_path, '[kafka]\nbootstrap_servers = "config-host:9092"')
    assert _bootstrap(argv, "--config", named) == "config-host:9092"  # a config's broker wins
    silent = _config(tmp_path / "..", '[kafka]\ngroup_id = "g"')
    assert _bootstrap(argv, "--config", silent) == "env-host:9092"  # ... when it names one
    env.setenv("LLMROUTE_BOOTSTRAP_SERVERS", "override:9092")
    assert _bootstrap(argv, "--config", named) == "override:9092"
    assert _bootstrap(argv, "--config", named, "--bootstrap", "flag:1") == "flag:1"


def test_topic_flags_override_the_config_and_nothing_else(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _config(tmp_path, "")
    args = build_parser().parse_args(
        ["dataset", "build", "--out", "x", "--config", config, "--decisions-topic", "d2"]
    )
    topics = connection_from_args(args).topics
    assert (topics.decisions, topics.feedback, topics.requests) == ("d2", "fb1", "r1")
    # dlq's --from-topic / --to-topic are its own options, not [topics] overrides
    args = build_parser().parse_args(["dlq", "replay", "--from-topic", "a", "--to-topic", "b"])
    assert connection_from_args(args).topics.dlq == "llm.requests.dlq"
    env.setenv("LLMROUTE_GROUP_ID", "g2")
    assert connection_from_args(args).kafka.group_id == "g2"


def test_a_bad_config_is_a_user_error(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    args = build_parser().parse_args(["ab", "report", "--config", str(tmp_path / "none.toml")])
    with pytest.raises(UserError, match="cannot read"):
        connection_from_args(args)
    bad = tmp_path / "bad.json"
    bad.write_text('{"kafka": {"bootstrap": "x"}}')  # JSON configs are read too
    args = build_parser().parse_args(["ab", "report", "--config", str(bad)])
    with pytest.raises(UserError, match="bootstrap"):
        connection_from_args(args)
