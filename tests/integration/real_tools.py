"""The real tools the end-to-end tests drive: Kafka's command-line tools (Maven Central jars, via
deploy/kafka/localkafka.py) and an OpenTelemetry Collector built with ocb (deploy/otelcol).
Both are installed by `make test` (targets kafka-tools, otelcol) and cached."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.kafka_support import localkafka
from worker.sim.harness import deploy_script

ROOT = Path(__file__).resolve().parents[2]


def otelcol_build() -> ModuleType:
    """deploy/otelcol/build.py."""
    return deploy_script("otelcol/build.py", "llmroute_otelcol_build")


def kafka_tool(name: str, *args: str, stdin: bytes | None = None, timeout_s: float = 120) -> str:
    """Run one of Kafka's tools; returns its stdout (fails the test on a non-zero exit)."""
    cmd = localkafka().tool_command(name, *args)
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout_s, check=False)
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"{name} {' '.join(args)} exited {proc.returncode}:\n{err}"
    return out


def tool_version(name: str) -> str:
    return kafka_tool(name, "--version").strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- the collector


@dataclass
class CollectedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    status_code: int
    resource: dict[str, Any]
    scope: str


def _value(v: dict[str, Any]) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    return None


def _attrs(kvs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {kv["key"]: _value(kv.get("value", {})) for kv in kvs or []}


class OtelCollector:
    """The ocb-built collector: OTLP/HTTP in on a free port, the file exporter (OTLP JSON lines)
    out. `stop()` shuts it down (flushing the file); `spans()` reads what it wrote."""

    def __init__(self, workdir: Path) -> None:
        self.binary: Path = otelcol_build().ensure_collector()
        self.workdir = workdir
        self.port = free_port()
        self.output = workdir / "otelcol-spans.jsonl"
        self.log = workdir / "otelcol.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def version(self) -> str:
        out = subprocess.run([str(self.binary), "--version"], capture_output=True, check=True)
        return out.stdout.decode().strip()

    def start(self) -> OtelCollector:
        config = self.workdir / "otelcol.yaml"
        config.write_text(
            f"""receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{self.port}
processors:
  batch:
    timeout: 200ms
exporters:
  file:
    path: {self.output}
    format: json
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [file]
"""
        )
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), f"--config=file:{config}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"collector not listening: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def spans(self) -> list[CollectedSpan]:
        out: list[CollectedSpan] = []
        if not self.output.exists():
            return out
        for line in self.output.read_text().splitlines():
            if not line.strip():
                continue
            for rs in json.loads(line).get("resourceSpans", []):
                resource = _attrs(rs.get("resource", {}).get("attributes"))
                for ss in rs.get("scopeSpans", []):
                    for s in ss.get("spans", []):
                        out.append(
                            CollectedSpan(
                                trace_id=s["traceId"],
                                span_id=s["spanId"],
                                parent_span_id=s.get("parentSpanId", ""),
                                name=s["name"],
                                kind=int(s.get("kind", 0)),
                                attributes=_attrs(s.get("attributes")),
                                links=[(x["traceId"], x["spanId"]) for x in s.get("links", [])],
                                status_code=int(s.get("status", {}).get("code", 0)),
                                resource=resource,
                                scope=ss.get("scope", {}).get("name", ""),
                            )
                        )
        return out
