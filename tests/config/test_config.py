from __future__ import annotations

from pathlib import Path

import pytest

from worker import config as config_mod

MODEL = (
    '[router]\nartifact = "x"\n[models.m]\nprovider = "openai"\nbase_url = "http://h/v1"\n'
    'api_key_env = "K"\nprovider_model = "m"\ninput_usd_per_mtok = 1.0\n'
    "output_usd_per_mtok = 2.0\ncontext_window_tokens = 1000\n"
)
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "config" / "worker.example.toml"


def test_the_example_config_parses() -> None:
    config = config_mod.load(EXAMPLE)
    assert config.kafka.group_id == "llmroute"
    assert config.tenant("acme").max_cost_usd == 0.05
    assert config.unknown_tenant == "reject"
    assert config.tenant("someone-else") is None  # names match exactly; unknown ones rejected
    assert config.tenant("Acme") is None
    assert set(config.policies) == {"default", "cheap", "cascade"}
    assert Path(config.router.artifact).is_absolute()  # resolved against the file's folder


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (MODEL + "[loop]\nmax_in_flite = 3\n", "max_in_flite"),
        (MODEL + '[tenants.a]\npolicy = "nope"\n', "nope"),
        (MODEL + '[tenants.a]\nallowed_models = ["gpt-9"]\n', "gpt-9"),
        ("[models]\n", "router"),
        ('[router]\nartifact = "x"\n[models.m]\nprovider = "openai"\n', "m"),
        (MODEL + '[telemetry]\nexporter = "zipkin"\n', "exporter"),
        ('[router\nartifact = "x"\n', "cannot read"),
        (MODEL + '[[experiments]]\nname = "e"\narms = [{name = "a", policy = "zz"}]\n', "zz"),
        (MODEL + '[[experiments]]\nname = "e"\narms = [{name = "a", weight = -1.0}]\n', "weight"),
        (MODEL + '[[experiments]]\nname = "e"\narms = [{name = "a"}, {name = "a"}]\n', "distinct"),
        (MODEL + '[shadow]\nsample = 0.1\njudge_model = "gpt-9"\n', "gpt-9"),
        (MODEL + "[shadow]\nsample = 1.5\n", "sample"),
        (MODEL + 'unknown_tenant = "allow"\n', "unknown_tenant"),
        (MODEL + "[batch]\nflush_age_s = 0\n", "flush"),
        (MODEL + '[batch]\non_item_failure = "drop"\n', "on_item_failure"),
        (MODEL + "[loop]\njoin_warn_s = 0\n", "join_warn_s"),
        (MODEL + "[loop]\njoin_warn_s = nan\n", "join_warn_s"),
        # TOML has nan and inf; no setting means either, and nan passes every `< 0` check
        (MODEL.replace("input_usd_per_mtok = 1.0", "input_usd_per_mtok = nan"), "models.m.input"),
        (MODEL + "[shadow]\nsample = nan\n", "shadow.sample"),
        (MODEL + "[tenants.a]\nmax_cost_usd = inf\n", "tenants.a.max_cost_usd"),
        (MODEL + "[batch]\nflush_age_s = -inf\n", "batch.flush_age_s"),
        (MODEL + '[[experiments]]\nname = "e"\narms = [{name = "a", weight = nan}]\n', "weight"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(config_mod.ConfigError, match=fragment):
        config_mod.load(path)


def test_kafka_client_options_are_built_once() -> None:
    # the SSLContext (CA and client certificate files read) and the SASL credentials (read from
    # the environment) are built on the first call, not on each of the callers' calls
    kafka = config_mod.KafkaSettings(security_protocol="SSL")
    first, second = kafka.common_kwargs(), kafka.common_kwargs()
    assert first["ssl_context"] is second["ssl_context"]
    first["bootstrap_servers"] = "elsewhere:9092"  # a caller's copy: the cached one is unchanged
    assert kafka.common_kwargs()["bootstrap_servers"] == "127.0.0.1:19092"
    # an explicit environment builds them anew (tests, `llmroute` commands given --env)
    assert kafka.common_kwargs({})["ssl_context"] is not first["ssl_context"]
