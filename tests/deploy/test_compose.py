"""deploy/compose: compose.yaml validates offline against the Compose Specification's JSON
schema (the copy check-jsonschema ships, Apache-2.0), both worker configs load with the worker's
own loader, and the services, ports, scrape targets and dashboard agree with each other and with
the worker's metrics."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from typing import Any

import jsonschema
import pytest
from prometheus_client import generate_latest

from tests.deploy.support import COMPOSE, env_names, host_port, worker_config, yaml_docs
from worker import config as config_mod
from worker.metrics import WorkerMetrics

LANGFUSE_STACK = {"langfuse-web", "langfuse-worker", "postgres", "clickhouse", "redis", "minio"}


def _compose_schema() -> dict[str, Any]:
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text("utf-8")
    )
    schema: dict[str, Any] = json.loads(text)
    return schema


def _compose() -> dict[str, Any]:
    [doc] = yaml_docs(COMPOSE / "compose.yaml")
    return doc


def _validate(doc: dict[str, Any]) -> None:
    schema = _compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls(schema).validate(doc)


def _default(value: str) -> str:
    """`${VAR:-default}` -> default (what compose uses with no .env)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_file_validates_against_the_compose_spec() -> None:
    _validate(_compose())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "worker", "imagee"), "x"),  # misspelt key
        (("services", "worker", "deploy", "replicas"), [3]),
        (("services", "kafka", "healthcheck", "test"), {"cmd": "true"}),
        (("volumes", "kafka_data", "driverr"), "local"),
    ],
)
def test_the_schema_rejects_a_broken_compose_file(path: tuple[str, ...], value: object) -> None:
    doc = copy.deepcopy(_compose())
    node: Any = doc
    for step in path[:-1]:
        if node.get(step) is None:
            node[step] = {}
        node = node[step]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        _validate(doc)


def test_the_stack_has_every_part() -> None:
    services = _compose()["services"]
    wanted = {"kafka", "kafka-init", "worker", "otel-collector", "prometheus", "grafana"}
    assert wanted | LANGFUSE_STACK <= set(services)
    assert not any("zookeeper" in name for name in services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    # Langfuse v4, the current self-hosted line (docs/real-tools.md names what is supported)
    assert services["langfuse-web"]["image"].endswith("langfuse/langfuse:4")
    assert services["langfuse-worker"]["image"].endswith("langfuse/langfuse-worker:4")
    # Langfuse waits for its stores to be healthy, as its own compose file has it
    for name in ("langfuse-web", "langfuse-worker"):
        deps = services[name]["depends_on"]
        assert set(deps) == LANGFUSE_STACK - {"langfuse-web", "langfuse-worker"}
        assert all(d["condition"] == "service_healthy" for d in deps.values())
        assert all("healthcheck" in services[d] for d in deps)


@pytest.mark.parametrize("name", ["worker.toml", "worker.sim.toml"])
def test_worker_configs_load_and_point_at_the_stack(name: str) -> None:
    config, _ = worker_config((COMPOSE / name).read_text())
    services = _compose()["services"]
    host, port = host_port(config.kafka.bootstrap_servers)
    assert host == "kafka"
    assert (
        f"PLAINTEXT://{host}:{port}"
        in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    )
    otlp = config.telemetry.otlp_endpoint
    assert otlp is not None and host_port(otlp) == ("otel-collector", 4318)
    assert config.telemetry.langfuse is not None
    assert host_port(config.telemetry.langfuse.base_url)[0] == "langfuse-web"
    assert config.metrics.host == "0.0.0.0"
    assert config.kafka.group_instance_id == "${HOSTNAME}"
    assert config.router.artifact == "/opt/llmroute/router"
    worker = services["worker"]
    env = worker["environment"]
    for var in env_names(config):
        assert var in env, f"{var} is named in {name} but not given to the worker"
    if name == "worker.sim.toml":
        for model in config.models.values():
            assert host_port(model.base_url)[0] == "sim"
    # the grace period outlasts the drain
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace > config.loop.drain_timeout_s + 5
    mounts = [m.split(":") for m in worker["volumes"]]
    assert ["./${LLMROUTE_CONFIG", "-worker.toml}", "/etc/llmroute/worker.toml", "ro"] in mounts
    assert any(m[-2] == config.router.artifact for m in mounts)


def test_an_unknown_key_in_a_compose_worker_config_is_caught() -> None:
    text = (COMPOSE / "worker.toml").read_text().replace("[metrics]\n", "[metrics]\nhots = 1\n")
    with pytest.raises(config_mod.ConfigError, match="hots"):
        worker_config(text)


def test_partitions_replicas_and_langfuse_keys_agree() -> None:
    services = _compose()["services"]
    command = services["kafka-init"]["command"]
    partitions = int(command[command.index("--partitions") + 1])
    replicas = int(_default(str(services["worker"]["deploy"]["replicas"])))
    assert 1 <= replicas <= partitions
    worker_env, web_env = services["worker"]["environment"], services["langfuse-web"]["environment"]
    assert _default(worker_env["LANGFUSE_PUBLIC_KEY"]) == _default(
        web_env["LANGFUSE_INIT_PROJECT_PUBLIC_KEY"]
    )
    assert _default(worker_env["LANGFUSE_SECRET_KEY"]) == _default(
        web_env["LANGFUSE_INIT_PROJECT_SECRET_KEY"]
    )


def test_prometheus_scrapes_every_worker_replica() -> None:
    config, _ = worker_config((COMPOSE / "worker.toml").read_text())
    [prom] = yaml_docs(COMPOSE / "prometheus.yml")
    [job] = [j for j in prom["scrape_configs"] if j["job_name"] == "llmroute-worker"]
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A"
    assert sd["port"] == config.metrics.port
    assert job["metrics_path"] == "/metrics"


def test_otel_collector_pipeline_uses_only_defined_components() -> None:
    [otel] = yaml_docs(COMPOSE / "otel-collector.yaml")
    assert "http" in otel["receivers"]["otlp"]["protocols"]
    for pipeline in otel["service"]["pipelines"].values():
        for section in ("receivers", "processors", "exporters"):
            for name in pipeline.get(section, []):
                assert name in otel[section], f"{section}: {name}"
    for name in otel["service"].get("extensions", []):
        assert name in otel["extensions"]
    mounts = _compose()["services"]["otel-collector"]["volumes"]
    assert "./otel-collector.yaml:/etc/otelcol/config.yaml:ro" in mounts


PANELS = (  # issue 16
    "strong-model share",
    "cost by tenant",
    "saving vs always-strong by tenant",
    "router version",
    "a/b arms",
    "shadow",
    "batch",
    "from the broker",
)


def test_grafana_dashboard_queries_only_metrics_the_worker_exports() -> None:
    exported = set()
    for line in generate_latest(_every_series()).decode().splitlines():
        if line.startswith("# TYPE"):
            name, kind = line.split()[2:4]
            exported.add(name)
            if kind == "counter":
                exported.add(f"{name}_total")
            if kind == "histogram":
                exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    dashboard = json.loads((COMPOSE / "grafana" / "dashboards" / "llmroute.json").read_text())
    [source] = yaml_docs(COMPOSE / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    # a datasource variable, defaulting to the provisioned one (another Prometheus can be picked)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == source["datasources"][0]["type"]
    assert variables["datasource"]["current"]["value"] == source["datasources"][0]["uid"]
    used, from_broker, titles = set(), set(), []
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        titles.append(panel["title"].lower())
        for target in panel["targets"]:
            used |= set(re.findall(r"\bllmroute_[a-z_]+", target["expr"]))
            from_broker |= set(re.findall(r"\bkafka_consumergroup_[a-z_]+", target["expr"]))
    assert used, "no worker metric in the dashboard"
    assert used <= exported, f"not exported by worker/metrics.py: {sorted(used - exported)}"
    assert {"llmroute_consumer_lag_records", "llmroute_requests_total"} <= used
    for wanted in PANELS:
        assert any(wanted in t for t in titles), wanted
    # lag that survives the workers comes from kafka-exporter, which Prometheus scrapes
    assert from_broker == {"kafka_consumergroup_lag_sum", "kafka_consumergroup_members"}
    [prom] = yaml_docs(COMPOSE / "prometheus.yml")
    [job] = [j for j in prom["scrape_configs"] if j["job_name"] == "kafka-exporter"]
    exporter = _compose()["services"]["kafka-exporter"]
    assert job["static_configs"][0]["targets"] == ["kafka-exporter:9308"]
    assert "--kafka.server=kafka:9092" in exporter["command"]
    [provider] = yaml_docs(COMPOSE / "grafana" / "provisioning" / "dashboards" / "llmroute.yml")[0][
        "providers"
    ]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def _every_series() -> Any:
    """The worker's registry with one sample in every labelled series, so all names show."""
    m = WorkerMetrics()
    m.observe_request("m", "ok", 0.1)
    m.observe_route(0.001, cache_hit=True)
    m.add_cost("m", 0.1, 0.2)
    m.add_tenant_cost("acme", 0.1, 0.2)
    m.set_router("r", "v1")
    m.observe_arm("exp:a", "ok", 0.1, 0.2)
    m.set_consumer_lag("t", 0, 1)
    m.dead_letter("InvalidEvent")
    m.retry("m")
    m.fallback("a", "b")
    m.escalation("a", "b")
    m.redelivery_skipped()
    return m.registry
