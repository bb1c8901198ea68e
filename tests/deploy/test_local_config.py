"""`deploy/config/local.toml` is the README's "run a member yourself" config: it must load and
point at what `make kafka-up`, `llmroute sim-provider` and `make demo` give, unchanged."""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.kafka_support import localkafka
from worker import config as config_mod
from worker.cli.demo import STABLE_ROUTER_NAME
from worker.cli.sim import register as register_sim
from worker.config.models import STRONG_MODEL, WEAK_MODEL

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "config" / "local.toml"


def _localkafka_single_port() -> int:
    port: int = localkafka().SINGLE_PORT
    return port


def test_local_config_points_at_the_quickstart_parts() -> None:
    config = config_mod.load(LOCAL)
    assert config.kafka.bootstrap_servers == f"127.0.0.1:{_localkafka_single_port()}"
    assert Path(config.router.artifact) == (ROOT / STABLE_ROUTER_NAME).resolve()
    parser = argparse.ArgumentParser()
    register_sim(parser.add_subparsers())
    sim_port = parser.parse_args(["sim-provider"]).port
    assert {STRONG_MODEL, WEAK_MODEL} <= set(config.models)
    for model in config.models.values():
        assert model.base_url == f"http://127.0.0.1:{sim_port}/v1"
        assert model.api_key_env == "SIM_OPENAI_API_KEY"  # the README exports it
    assert config.topics.partitions > 1
