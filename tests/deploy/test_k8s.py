"""deploy/k8s: every manifest validates offline against the Kubernetes OpenAPI schemas (strict:
unknown fields are errors), the KEDA ScaledObject against the subset of its CRD schema that we
use, the ConfigMap's worker.toml with the worker's own loader, and the files agree."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.support import K8S, env_names, host_port, worker_config, yaml_docs
from worker import config as config_mod

K8S_VERSION = "1.31"  # the oldest minor release still supported upstream when this was written

# keda.sh/v1alpha1 ScaledObject, the fields of KEDA's CRD (config/crd/bases/
# keda.sh_scaledobjects.yaml) that deploy/k8s uses, closed with additionalProperties: false so a
# misspelt field fails. KEDA's CRD is not part of the Kubernetes schema set that
# kubernetes-validate bundles; trigger metadata values must be strings (a map of strings).
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_HPA_RULES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "value", "periodSeconds"],
                "properties": {
                    "type": {"enum": ["Pods", "Percent"]},
                    "value": {"type": "integer", "minimum": 1},
                    "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
                },
            },
        },
    },
}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": _INT32,
                "cooldownPeriod": _INT32,
                "idleReplicaCount": _INT32,
                "minReplicaCount": _INT32,
                "maxReplicaCount": _INT32,
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {"scaleUp": _HPA_RULES, "scaleDown": _HPA_RULES},
                                },
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "authenticationRef": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
# keys KEDA's Apache Kafka scaler reads (keda.sh/docs/latest/scalers/apache-kafka)
KAFKA_SCALER_KEYS = {
    "bootstrapServers",
    "consumerGroup",
    "topic",
    "lagThreshold",
    "activationLagThreshold",
    "offsetResetPolicy",
    "allowIdleConsumers",
    "scaleToZeroOnInvalidOffset",
    "excludePersistentLag",
    "limitToPartitionsWithLag",
    "partitionLimitation",
    "version",
    "sasl",
    "tls",
    "unsafeSsl",
}


def _manifests() -> dict[str, list[dict[str, Any]]]:
    return {p.name: yaml_docs(p) for p in sorted(K8S.glob("*.yaml"))}


def _one(kind: str) -> dict[str, Any]:
    found = [d for docs in _manifests().values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def _config() -> config_mod.Config:
    return worker_config(_one("ConfigMap")["data"]["worker.toml"])[0]


def _container() -> dict[str, Any]:
    [container] = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _validate(doc: dict[str, Any]) -> None:
    if doc["kind"] == "ScaledObject":
        jsonschema.Draft202012Validator(SCALED_OBJECT_SCHEMA).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml")))
def test_every_manifest_validates(name: str) -> None:
    docs = yaml_docs(K8S / name)
    assert docs, name
    for doc in docs:
        if doc["kind"] == "Kustomization":  # kustomize's own file: checked below
            continue
        _validate(doc)


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", ("spec", "replica"), 2),  # misspelt field
        ("Deployment", ("spec", "template", "spec", "terminationGracePeriodSeconds"), "60"),
        ("PodDisruptionBudget", ("spec", "maxUnavailabel"), 1),
        ("ScaledObject", ("spec", "maxReplicas"), 4),
        ("ScaledObject", ("spec", "triggers", 0, "metadata", "lagThreshold"), 1000),  # not a str
    ],
)
def test_the_validators_reject_a_broken_manifest(
    kind: str, path: tuple[str | int, ...], value: object
) -> None:
    doc = copy.deepcopy(_one(kind))
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        _validate(doc)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    [kustomization] = yaml_docs(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_into_one_namespace() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert len(docs) == sum(
        len(v)
        for k, v in _manifests().items()
        if k not in ("kustomization.yaml", "secret.example.yaml")
    )
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "llmroute", doc["kind"]
        _validate(doc)


def test_configmap_worker_config_loads_with_the_worker_loader() -> None:
    text = _one("ConfigMap")["data"]["worker.toml"]
    config, _ = worker_config(text)
    assert config.kafka.group_instance_id == "${POD_NAME}"
    assert config.metrics.enabled and config.metrics.host == "0.0.0.0"
    assert config.router.artifact == "/opt/llmroute/router"  # where the Dockerfile puts it
    broken = text.replace("[loop]\n", "[loop]\nmax_in_flite = 3\n")
    with pytest.raises(config_mod.ConfigError, match="max_in_flite"):
        worker_config(broken)


def test_deployment_static_membership_probes_and_drain() -> None:
    config, container = _config(), _container()
    pod = _one("Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in container["env"]}
    # the pod name is the static member id
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # probes on the worker's own endpoints and port
    [port] = container["ports"]
    assert port["containerPort"] == config.metrics.port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    # the kubelet waits longer than the drain before SIGKILL
    assert pod["terminationGracePeriodSeconds"] > config.loop.drain_timeout_s + 5
    assert container["args"] == ["run", "--config", "/etc/llmroute/worker.toml"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert mount["mountPath"] == "/etc/llmroute/worker.toml"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_every_secret_the_config_names_comes_from_a_secret_reference() -> None:
    config = _config()
    env = {e["name"]: e for e in _container()["env"]}
    for name in env_names(config):
        assert name in env, f"{name} is named in worker.toml but not set in the Deployment"
        assert "secretKeyRef" in env[name]["valueFrom"], name
    secrets = {d["metadata"]["name"]: d for d in yaml_docs(K8S / "secret.example.yaml")}
    for item in env.values():
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in secrets[ref["name"]]["stringData"], ref


def test_scaledobject_matches_the_group_topic_and_partitions() -> None:
    config, so = _config(), _one("ScaledObject")
    deployment, job = _one("Deployment"), _one("Job")
    assert so["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert so["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    [trigger] = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert set(meta) <= KAFKA_SCALER_KEYS
    assert meta["consumerGroup"] == config.kafka.group_id
    assert meta["topic"] == config.topics.requests
    assert host_port(meta["bootstrapServers"]) == host_port(config.kafka.bootstrap_servers)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--topic") + 1] == config.topics.requests
    assert host_port(args[args.index("--bootstrap-server") + 1]) == host_port(
        config.kafka.bootstrap_servers
    )
    partitions = int(args[args.index("--partitions") + 1])
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= partitions
    assert deployment["spec"]["replicas"] <= partitions
    assert int(meta["lagThreshold"]) > 0


def test_selectors_match_the_pods() -> None:
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget", "Service"):
        spec = _one(kind)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), kind
    assert _one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_manifests_are_plain_json_compatible() -> None:
    # what `kubectl apply` sends is JSON: no YAML-only values (dates, anchors) in our files
    for docs in _manifests().values():
        for doc in docs:
            assert json.loads(json.dumps(doc)) == doc
