"""The shell and the pipeline meet in `worker.kafka.records`: the pipeline never imports the
member (the consumer-group shell), so either side can change without dragging in the other."""

from __future__ import annotations

import subprocess
import sys


def _imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(out.stdout.split())


def test_the_pipeline_imports_the_contract_not_the_member() -> None:
    loaded = _imported_after(
        "worker.pipeline.core, worker.pipeline.batch, worker.pipeline.cached, "
        "worker.pipeline.shadow, worker.pipeline.spend"
    )
    assert "worker.kafka.records" in loaded
    assert "worker.kafka.member" not in loaded


def test_the_contract_pulls_in_no_kafka_client() -> None:
    loaded = _imported_after("worker.kafka.records")
    assert not {m for m in loaded if m == "aiokafka" or m.startswith("aiokafka.")}
