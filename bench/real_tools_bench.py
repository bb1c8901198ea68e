"""What the real tools accepted: Kafka's own clients, the OpenTelemetry Collector, and Langfuse's
score validation (the stand-in that refuses what Langfuse v3/v4 servers refuse).

    .venv/bin/python bench/real_tools_bench.py [--feedback 500]
        [--out bench/results/real_tools.json]

Uses KAFKA_BOOTSTRAP when set, else starts the project's local broker (and stops it). Needs the
Kafka tools and the collector (`make kafka-tools otelcol`). Prints one JSON object (and writes it
to --out when given):

- kafka / otel_collector: tests/integration/test_real_tools.py run once, its figures: tool
  versions, requests the console producer sent per codec (codecs the worker cannot decode yet are
  listed with the library they need), responses the console consumer read (and how many
  distinct), the consumer group's lag per partition, spans the collector wrote vs expected
- langfuse: `--feedback` events through the worker's feedback consumer to the stand-in, which
  answers every 10th score 503 and every 25th 429 first (retriable refusals): events sent,
  scores accepted, retries, refusals by status; and, for comparison, the same scores posted the
  way the Langfuse SDK 5 does (a JSON array), which Langfuse v3/v4 servers answer with 400
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

import schemas
from worker.config.kafka import KafkaSettings, TopicSettings
from worker.config.telemetry import LangfuseConfig
from worker.feedback import FeedbackRetry, FeedbackStats, run_feedback
from worker.sim.harness import ROOT, create_topics, local_broker
from worker.sim.langfuse import LangfuseReceiver
from worker.telemetry.scores import LangfuseScores, score_body


def _tools(bootstrap: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "real_tools.json"
        env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "LLMROUTE_REAL_TOOLS_JSON": str(out)}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/integration/test_real_tools.py",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        figures: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    figures["pytest"] = summary
    return figures


def _feedback(i: int) -> schemas.Feedback:
    return schemas.Feedback(
        schema_version=1,
        request_id=f"bench-{i}",
        name="correct" if i % 3 else "quality",
        value=(i % 2 == 0) if i % 3 else (i % 10) / 10,
        source="task",
        created_at=datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=i),
    )


async def _langfuse(bootstrap: str, n: int) -> dict[str, Any]:
    receiver = LangfuseReceiver().start()
    try:
        events = [_feedback(i) for i in range(n)]
        # the SDK 5 shape, for comparison: one JSON array per batch of scores
        array = [score_body(e) for e in events]
        old = await asyncio.to_thread(
            httpx.post,
            f"{receiver.url}/api/public/scores",
            json=array,
            auth=("pk-lf-bench", "sk-lf-bench"),
        )
        topic = f"bench-feedback-{os.getpid()}"
        await create_topics(bootstrap, [topic], 6)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        try:
            await producer.start()
            for e in events:
                await producer.send(topic, schemas.encode(e))
            await producer.flush()
            # a retriable refusal first for every 10th (503) and 25th (429) score; 0: as usual
            script: list[int] = []
            for i in range(n):
                script += [503] if i % 10 == 9 else []
                script += [429] if i % 25 == 24 else []
                script.append(0)
            stats = FeedbackStats()
            stop = asyncio.Event()
            lf = LangfuseConfig(
                base_url=receiver.url, public_key="pk-lf-bench", secret_key="sk-lf-bench"
            )
            kafka = KafkaSettings(bootstrap_servers=bootstrap, group_id=f"bench-{os.getpid()}")
            topics = TopicSettings(feedback=topic, feedback_dlq=f"{topic}.dlq", dlq=f"{topic}.x")
            receiver.score_answers = script
            async with LangfuseScores(lf, environ={}) as scores:
                task = asyncio.create_task(
                    run_feedback(
                        kafka,
                        topics,
                        scores,
                        producer,
                        stop,
                        retry=FeedbackRetry(initial_s=0.01, max_s=0.05),
                        stats=stats,
                    )
                )
                await asyncio.to_thread(receiver.wait_for, lambda r: len(r.scores) >= n, 300)
                stop.set()
                await task
        finally:
            await producer.stop()
        return {
            "feedback_events_sent": n,
            "scores_accepted": len(receiver.scores),
            "distinct_scores_accepted": len({s["id"] for s in receiver.scores}),
            "retriable_refusals": dict(sorted(stats.answers.items())),
            "retries": stats.retries,
            "dead_lettered": stats.rejected,
            "unknown_fields_sent": sorted(receiver.unknown_fields),
            "sdk5_array_body": {"scores": n, "answer": old.status_code, "accepted": 0},
        }
    finally:
        receiver.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--feedback", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    async with local_broker("real-tools-bench") as bootstrap:
        out = {
            "langfuse": await _langfuse(bootstrap, args.feedback),
            **_tools(bootstrap),
        }
    text = json.dumps(out, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    asyncio.run(main())
