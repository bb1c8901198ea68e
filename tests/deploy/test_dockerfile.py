"""The Dockerfile, parsed by BuildKit's own parser (the `dockerfile` package wraps
moby/buildkit's Go parser): multi-stage, slim, non-root, nothing built in the final stage, and
paths and ports that the compose and Kubernetes files rely on. No image is built here (no
daemon, no registry access offline)."""

from __future__ import annotations

from typing import Any

import dockerfile

from tests.deploy.support import COMPOSE, K8S, ROOT, worker_config, yaml_docs

BUILD_TOOLS = ("apt-get", "apk ", "gcc", "build-essential", "make ", "pip install")


def _stages() -> list[list[Any]]:
    stages: list[list[Any]] = []
    for cmd in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if cmd.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(cmd)
    return stages


def _args() -> dict[str, str]:
    out = {}
    for cmd in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if cmd.cmd == "ARG" and "=" in cmd.value[0]:
            name, _, value = cmd.value[0].partition("=")
            out[name] = value
    return out


def _only(stage: list[Any], name: str) -> Any:
    found = [c for c in stage if c.cmd == name]
    assert len(found) == 1, name
    return found[0]


def test_multi_stage_slim_non_root_final_image() -> None:
    stages = _stages()
    assert len(stages) >= 2
    final = stages[-1]
    base = final[0].value[0]
    base = _args().get(base.strip("${}"), base)
    assert "slim" in base
    user = _only(final, "USER").value[0]
    assert user.split(":")[0] not in ("0", "root")
    # nothing is compiled or installed in the final stage: it copies the built venv
    for cmd in final:
        if cmd.cmd == "RUN":
            assert not any(tool in cmd.value[0] for tool in BUILD_TOOLS), cmd.original
    copies = [c for c in final if c.cmd == "COPY" and "--from=build" in c.flags]
    assert copies, "the final stage takes the venv from the build stage"


def test_entrypoint_config_path_port_and_router_path_match_the_deployments() -> None:
    final = _stages()[-1]
    assert _only(final, "ENTRYPOINT").value == ("llmroute",)
    cmd = list(_only(final, "CMD").value)
    assert cmd[:2] == ["run", "--config"]
    config_path = cmd[2]
    [port] = _only(final, "EXPOSE").value
    assert _only(final, "STOPSIGNAL").value == ("SIGTERM",)
    router_copy = [c for c in final if c.cmd == "COPY" and "--from=router" in c.flags]
    router_dir = router_copy[0].value[-1].rstrip("/")

    [configmap] = yaml_docs(K8S / "configmap.yaml")
    k8s_config, _ = worker_config(configmap["data"]["worker.toml"])
    compose_config, _ = worker_config((COMPOSE / "worker.toml").read_text())
    for config in (k8s_config, compose_config):
        assert str(config.metrics.port) == port
        assert config.router.artifact == router_dir
    [deployment] = yaml_docs(K8S / "deployment.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == cmd
    assert config_path in {m["mountPath"] for m in container["volumeMounts"]}
    uid = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert str(uid) == _only(final, "USER").value[0].split(":")[0]


def test_dockerignore_keeps_the_context_small_and_free_of_secrets() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".kafka", ".demo", "tests", "bench"} <= ignored
    # but not what the build copies
    copied = {c.value[0] for stage in _stages() for c in stage if c.cmd == "COPY" and not c.flags}
    assert copied and not copied & ignored
