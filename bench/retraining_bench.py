"""Retraining through the whole pipeline: does retraining from outcomes raise APGR on a new
domain, with a real broker, a real worker process and the real commands?

    .venv/bin/python bench/retraining_bench.py [--rounds 3] [--stream 0] [--fresh-limit 0]
        [--feedback-rate 0.5] [--shadow-rate 1.0] [--reload control|watch] [--no-cache]
    .venv/bin/python bench/retraining_bench.py --in-process      # the pure-core variant (below)

Uses KAFKA_BOOTSTRAP when set, else starts the project's local broker (and stops it). The provider
simulator runs in its own process (`llmroute sim-provider --data mmlu_dev.jsonl`: every answer
is right exactly when the dataset's label for that prompt and model says so), the worker in its
own (`llmroute run`), the two commands of each retraining in their own (`llmroute dataset build`,
`llmroute retrain --publish`), as a scheduler would run them.

1. Domains: mmlu_dev split by subject. The first router (classifier) learns the non-STEM
   subjects (law, humanities, social sciences, ...), calibrated on a held-out slice of them, and
   is written as v0001 of a registry folder (`CURRENT`). The worker's `router.artifact` is that
   registry; its default policy routes `--strong-fraction` of the traffic to the strong model
   (the artifact's score quantiles).
2. Traffic: the STEM and medicine subjects, split by id hash into a fresh set (`--fresh` share,
   never trained on; `--fresh-limit` caps it) and a stream (`--stream` caps it) cut into
   `--rounds` rounds. Tenants keep them apart: shadow mode is on for tenant `stream` only, and
   only the stream gets feedback, so fresh traffic never becomes training data.
3. Each round: the round's stream prompts go through Kafka to the worker. Shadow mode
   (`--shadow-rate`, `model = "other"`, judge = the simulated strong model, which grades both
   answers and errs 10% of the time) calls the model the router did not choose for a stable
   sample and publishes the pairwise verdict as `judge` feedback for both answers. The bench,
   as the application, sends `task` feedback (`task_success`, true/false) for a stable
   `--feedback-rate` sample of the answers users got: whether the answer was right (read from
   the simulator's grading marker, so a perfect task signal; it sees only user-facing answers,
   never shadow ones).
4. Then `llmroute dataset build` (all outcomes on the topics so far; `--prefer judge,task`: a
   judged pair keeps its judge scores for both answers, so a pair is scored on one scale) and
   `llmroute retrain --strong-fraction F --min-eval N --publish` (train on the non-held-out
   rows, compare with CURRENT on held-out rows with both models scored, promote if at least as
   good, announce a `reload_router` Control event). With `--reload watch` the worker polls the
   registry's CURRENT instead (`router.watch_s`) and retrain does not publish. Retrain runs with
   `--keep-rejected`, so a rejected candidate is saved too (CURRENT does not move) and scored on
   the fresh set in process (`candidate_apgr_in_process`): was the promotion rule right?
5. After a promotion the bench sends probe requests until a response's decision carries the new
   `router_version` (reload_s: promotion to first such decision). Then the fresh set is routed
   THROUGH THE WORKER (tenant `fresh`, new request ids each round) and measured from its
   responses: APGR from the decisions' scores against the dataset labels, the billed cost
   (`cost_usd`, simulator prices and token counts), the accuracy users got (answers graded),
   the strong-call share, and the router versions seen (all must be CURRENT). `apgr_in_process`
   scores the same prompts with the CURRENT artifact in this process, as a cross-check.

Round 0 is the first router before any outcome. Then `cache_lookup_p99_ms_100k` comes from
bench/cache_bench.py (`--no-cache` skips it: null). Prints one JSON object.

`--in-process`: the same split, rounds and retrain/promotion functions without Kafka, the worker
or provider calls (routing by the artifact's calibrated threshold, feedback and judge verdicts
simulated from the labels); much faster, for exploring parameters.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer

import schemas
from routers import split
from routers.artifact import load_artifact
from routers.base import strong_need
from routers.calibration import (
    score_quantiles,
    threshold_for_quality,
    threshold_for_strong_fraction,
)
from routers.dataset import Record, data_sha256, record_from_obj, split_by_id
from routers.evaluation import evaluate
from routers.metrics import two_model_report
from routers.outcomes import Answered, Label, ScoreRules, build_dataset
from routers.policy import ModelPrice, estimate_cost_usd, estimate_input_tokens
from routers.promotion import CostTarget
from routers.training import TrainOptions, label_matrix, train
from worker.config.models import STRONG_MODEL, WEAK_MODEL, simulator_catalogue
from worker.providers.types import Usage
from worker.sim import grade
from worker.sim.harness import (
    ROOT,
    SIM_KEYS,
    create_topics,
    localkafka,
    produce,
    spawn_member,
    start_sim_ready,
    worker_config_data,
)
from worker.training.registry import Registry
from worker.training.retrain import RetrainOptions, retrain

DATA = ROOT.parent / "shared" / "data" / "routing" / "mmlu_dev.jsonl"
# simulator catalogue list prices (worker.config.models.simulator_catalogue)
PRICES = {STRONG_MODEL: ModelPrice(10.0, 30.0), WEAK_MODEL: ModelPrice(0.6, 0.6)}
OUTPUT_TOKENS = 16  # in process: the simulator's answers, a short rationale and a letter
MAX_TOKENS = 64  # pipeline: the requests' max_tokens
PARTITIONS = 6
TARGET_SUBJECTS = {
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "electrical_engineering",
    "elementary_mathematics",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_mathematics",
    "high_school_physics",
    "high_school_statistics",
    "machine_learning",
    "medical_genetics",
    "nutrition",
    "professional_medicine",
    "virology",
    "econometrics",
}


def _unit(*parts: object) -> float:
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def _log(msg: str) -> None:
    sys.stderr.write(f"[retraining_bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- domains and the first router


def _domains(data: Path, fresh_share: float) -> tuple[list[Record], list[Record], list[Record]]:
    """(source, stream, fresh): the first router's subjects, and the new domain split by id."""
    with data.open(encoding="utf-8") as fh:  # not splitlines(): prompts hold U+2028
        records = [record_from_obj(json.loads(line)) for line in fh if line.strip()]
    # mmlu_dev repeats a few questions under one id: keep each id once (the worker would answer
    # a repeated request id once anyway, and the metrics would count it twice)
    records = list({r.id: r for r in reversed(records)}.values())[::-1]
    is_target = [r.tags.get("subject") in TARGET_SUBJECTS for r in records]
    source = [r for r, t in zip(records, is_target, strict=True) if not t]
    target = [r for r, t in zip(records, is_target, strict=True) if t]
    fresh_flags = split_by_id([r.id for r in target], fresh_share, "fresh")
    fresh = [r for r, f in zip(target, fresh_flags, strict=True) if f]
    stream = [r for r, f in zip(target, fresh_flags, strict=True) if not f]
    stream.sort(key=lambda r: _unit("order", r.id))
    return source, stream, fresh


def _first_router(source: list[Record], registry: Path, fraction: float) -> str:
    held = split_by_id([r.id for r in source], 0.2, "first")
    fit = [r for r, h in zip(source, held, strict=True) if not h]
    cal = [r for r, h in zip(source, held, strict=True) if h]
    router = train(fit, TrainOptions(router="classifier", strong=STRONG_MODEL, weak=WEAK_MODEL))
    need = strong_need(router, router.predict([r.text for r in cal]))
    y = label_matrix(cal, (STRONG_MODEL, WEAK_MODEL))
    calibration = {
        f"strong_fraction_{fraction:.2f}": threshold_for_strong_fraction(need, fraction),
        "quality_95pct": threshold_for_quality(need, y[:, 0], y[:, 1], 0.95),
    }
    version, _ = Registry(registry).add(
        router,
        data_hash=data_sha256(fit),
        metrics={"n_train": len(fit)},
        calibration=calibration,
        quantiles=score_quantiles(need),
    )
    Registry(registry).promote(version)
    return version


# ---------------------------------------------------------------- the pipeline run


class Outcomes:
    """Follows the worker's output topics from their beginnings (no group) in the background."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.responses: dict[str, schemas.RouteResponse] = {}
        self.decisions: dict[str, schemas.RoutingDecision] = {}
        self.shadow_decisions: set[str] = set()
        self.shadow_answers: dict[str, schemas.RouteResponse] = {}
        self.judge: Counter[str] = Counter()  # request id -> judge feedback events
        self.task: set[str] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Outcomes:
        t = self.topics
        consumer = AIOKafkaConsumer(
            t["responses"],
            t["decisions"],
            t["feedback"],
            t["shadow"],
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_poll_records=5000,
        )
        await consumer.start()
        self._task = asyncio.create_task(self._follow(consumer))
        return self

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        t = self.topics
        try:
            while not self._stop.is_set():
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    for r in records:
                        self._take(tp.topic, r.value or b"", t)
        finally:
            await consumer.stop()

    def _take(self, topic: str, value: bytes, t: dict[str, str]) -> None:
        if topic == t["responses"]:
            resp = schemas.decode(value, schemas.RouteResponse)
            self.responses[resp.request_id] = resp
        elif topic == t["decisions"]:
            d = schemas.decode(value, schemas.RoutingDecision)
            if d.shadow:
                self.shadow_decisions.add(d.request_id)
            else:
                self.decisions[d.request_id] = d
        elif topic == t["shadow"]:
            resp = schemas.decode(value, schemas.RouteResponse)
            self.shadow_answers[resp.request_id] = resp
        else:
            f = schemas.decode(value, schemas.Feedback)
            if f.request_id is None:
                return
            if f.source == "judge":
                self.judge[f.request_id] += 1
            elif f.source == "task":
                self.task.add(f.request_id)

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def wait(self, done: Any, what: str, timeout_s: float, stall_s: float = 0.0) -> bool:
        """Poll `done()` -> (finished, progress count) until finished, `timeout_s` passes, or
        (with `stall_s`) the count has not moved for that long."""
        loop = asyncio.get_running_loop()
        start = last_move = loop.time()
        last = -1
        while True:
            finished, count = done()
            if finished:
                return True
            now = loop.time()
            if count != last:
                last, last_move = count, now
            if now - start > timeout_s or (stall_s and now - last_move > stall_s):
                _log(f"gave up waiting for {what} at {count}")
                return False
            await asyncio.sleep(0.2)


def _request(rid: str, tenant: str, prompt: str) -> tuple[bytes, bytes]:
    event = schemas.RouteRequest(
        schema_version=1,
        request_id=rid,
        tenant=tenant,
        messages=[schemas.Message(role="user", content=prompt)],
        created_at=datetime.now(UTC),
        params=schemas.GenerationParams(max_tokens=MAX_TOKENS, temperature=0.0),
    )
    return rid.encode(), schemas.encode(event)


def _command(argv: list[str]) -> dict[str, Any]:
    """Run `llmroute ARGV...` in its own process, as a scheduler would; its JSON output."""
    done = subprocess.run(
        [sys.executable, "-m", "worker", *argv], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"llmroute {argv[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _fresh_metrics(
    fresh: list[Record], rids: list[str], got: dict[str, schemas.RouteResponse], registry: Path
) -> dict[str, Any]:
    """APGR, cost and accuracy of the fresh slice as the worker routed and answered it."""
    catalogue = simulator_catalogue("http://127.0.0.1:1")
    strong_price = catalogue[STRONG_MODEL]
    kept = [(r, got[rid]) for r, rid in zip(fresh, rids, strict=True) if rid in got]
    ok = [(r, resp) for r, resp in kept if resp.status == "ok" and resp.decision is not None]
    records = [r for r, _ in ok]
    y = label_matrix(records, (STRONG_MODEL, WEAK_MODEL))
    scores = np.array([resp.decision.score for _, resp in ok if resp.decision is not None])
    report = two_model_report(scores, y[:, 0], y[:, 1])
    right = [grade(resp.message.content if resp.message else "", r.text) for r, resp in ok]
    cost = sum(resp.cost_usd for _, resp in ok)
    # the same token counts priced at the strong model: an estimate of always-strong cost
    all_strong = sum(
        strong_price.cost_usd(
            Usage(input_tokens=resp.usage.input_tokens, output_tokens=resp.usage.output_tokens)
        )
        for _, resp in ok
    )
    versions = Counter(resp.decision.router_version for _, resp in ok if resp.decision)
    current = Registry(registry).current()
    assert current is not None
    art = load_artifact(current)
    in_process = evaluate(art.router, records)["two_model"]["apgr"]
    accuracy = sum(1 for g in right if g) / max(1, len(right))
    return {
        "router_version": current.name,
        "apgr": round(report.apgr, 4),
        "apgr_in_process": round(float(in_process), 4),
        "cost_usd": round(cost, 6),
        "cost_ratio_est": round(cost / all_strong, 4) if all_strong else None,
        "accuracy": round(accuracy, 4),
        "quality_ratio": round(accuracy / float(y[:, 0].mean()), 4),
        "strong_fraction": round(
            sum(1 for _, resp in ok if resp.model == STRONG_MODEL) / max(1, len(ok)), 4
        ),
        "fresh_requests": len(rids),
        "fresh_answered": len(ok),
        "fresh_lost": len(rids) - len(kept),
        "ungraded": sum(1 for g in right if g is None),
        "decision_versions": dict(versions),
    }


async def _wait_version(
    bootstrap: str, topics: dict[str, str], seen: Outcomes, version: str, tag: str, timeout_s: float
) -> tuple[float | None, int]:
    """Send probe requests until a response's decision carries `version`; (seconds, probes)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while loop.time() - start < timeout_s:
        rid = f"probe-{tag}-{n}"
        n += 1
        await produce(
            bootstrap, topics["requests"], [_request(rid, "probe", f"probe {rid}")], linger_ms=20
        )
        deadline = loop.time() + 5.0
        while rid not in seen.responses and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        resp = seen.responses.get(rid)
        if resp is not None and resp.decision and resp.decision.router_version == version:
            return loop.time() - start, n
        await asyncio.sleep(0.25)
    return None, n


def _first_timed(source: list[Record], registry: Path, fraction: float) -> float:
    t0 = time.perf_counter()
    first = _first_router(source, registry, fraction)
    took = time.perf_counter() - t0
    _log(f"first router {first} on {len(source)} source prompts in {took:.1f} s")
    return took


async def _pipeline(
    args: argparse.Namespace,
    bootstrap: str,
    workdir: Path,
    domains: tuple[list[Record], list[Record], list[Record]],
    first_train_s: float,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    source, stream, fresh = domains
    per_round = -(-len(stream) // args.rounds)
    registry = workdir / "registry"

    base = f"retrainbench-{os.getpid()}-{int(time.time())}"
    topics = {
        "requests": base,
        "responses": f"{base}.responses",
        "decisions": f"{base}.decisions",
        "feedback": f"{base}.feedback",
        "shadow": f"{base}.shadow",
        "control": f"{base}.control",
        "dlq": f"{base}.dlq",
        "done": f"{base}.done",
        "batch_jobs": f"{base}.batch-jobs",
        "cache": f"{base}.cache",
    }
    names = ("requests", "responses", "decisions", "feedback", "shadow")
    await create_topics(bootstrap, [topics[k] for k in names], PARTITIONS)
    sim, ready = start_sim_ready(args.latency, "--data", str(args.data))
    base_url, sim_rows = str(ready["base_url"]), int(ready["dataset_rows"])
    watch = args.reload == "watch"
    data = worker_config_data(
        bootstrap,
        topics,
        registry,
        base_url,
        router={"artifact": str(registry), "watch_s": 1.0 if watch else 0.0},
        policies={"default": {"kind": "threshold", "strong_fraction": args.strong_fraction}},
        shadow={
            "sample": args.shadow_rate,
            "model": "other",
            "tenants": ["stream"],
            "judge_model": args.judge_model,
            "max_in_flight": 100_000,
        },
        loop={"max_in_flight": 512, "resume_below": 384, "commit_interval_ms": 200},
    )
    config = workdir / "worker.json"
    config.write_text(json.dumps(data))
    worker = spawn_member(config, workdir / "worker.log", "INFO")
    rules = ["--prefer", args.prefer] if args.prefer else []
    out_rounds: list[dict[str, Any]] = []
    try:
        async with Outcomes(bootstrap, topics) as seen:

            async def route(rids: list[str], recs: list[Record], tenant: str, what: str) -> None:
                values = [_request(rid, tenant, r.text) for rid, r in zip(rids, recs, strict=True)]
                await produce(bootstrap, topics["requests"], values, linger_ms=20)
                ok = await seen.wait(
                    lambda: (
                        all(r in seen.responses for r in rids),
                        sum(r in seen.responses for r in rids),
                    ),
                    what,
                    timeout_s=args.timeout_s,
                    stall_s=60.0,
                )
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited ({worker.returncode}); see its log")
                if not ok:
                    _log(f"{what}: {sum(r in seen.responses for r in rids)}/{len(rids)} answered")

            async def measure(k: int) -> dict[str, Any]:
                rids = [f"fresh{k}-{r.id}" for r in fresh]
                t = time.perf_counter()
                await route(rids, fresh, "fresh", f"fresh round {k}")
                m = _fresh_metrics(fresh, rids, seen.responses, registry)
                m["fresh_s"] = round(time.perf_counter() - t, 1)
                return m

            out_rounds.append({"round": 0, **await measure(0), "promoted": None})
            _log(f"round 0: {out_rounds[-1]}")
            for k in range(args.rounds):
                t_round = time.perf_counter()
                batch = stream[k * per_round : (k + 1) * per_round]
                rids = [f"stream-{r.id}" for r in batch]
                await route(rids, batch, "stream", f"stream round {k + 1}")
                # shadow answers and their verdicts arrive after the user's response
                want = [rid for rid in rids if split.sampled(rid, args.shadow_rate, "shadow")]
                await seen.wait(
                    lambda want=want: (
                        all(seen.judge[r] >= 2 and r in seen.shadow_decisions for r in want),
                        sum(seen.judge[r] for r in want),
                    ),
                    f"shadow verdicts round {k + 1}",
                    timeout_s=args.timeout_s,
                    stall_s=20.0,
                )
                # the application's task signal on part of the answers users got
                feedback = []
                for rid, r in zip(rids, batch, strict=True):
                    resp = seen.responses.get(rid)
                    if resp is None or resp.status != "ok" or resp.message is None:
                        continue
                    if not split.sampled(rid, args.feedback_rate, "task-feedback"):
                        continue
                    right = grade(resp.message.content, r.text)
                    if right is None:
                        continue
                    event = schemas.Feedback(
                        schema_version=1,
                        name="task_success",
                        value=right,
                        source="task",
                        created_at=datetime.now(UTC),
                        request_id=rid,
                    )
                    feedback.append((rid.encode(), schemas.encode(event)))
                await produce(bootstrap, topics["feedback"], feedback, linger_ms=20)
                fb_ids = {key.decode() for key, _ in feedback}
                await seen.wait(
                    lambda fb_ids=fb_ids: (fb_ids <= seen.task, len(seen.task)),
                    "task feedback",
                    timeout_s=60.0,
                )
                # the scheduled job: dataset build, then retrain (+ publish)
                t = time.perf_counter()
                out = workdir / "outcomes.jsonl"
                built = await asyncio.to_thread(
                    _command,
                    ["dataset", "build", "--config", str(config), "--out", str(out), *rules],
                )
                build_s = time.perf_counter() - t
                t = time.perf_counter()
                argv = [
                    "retrain",
                    "--data",
                    str(out),
                    "--registry",
                    str(registry),
                    "--strong-fraction",
                    str(args.strong_fraction),
                    "--min-eval",
                    str(args.min_eval),
                    "--tolerance",
                    str(args.tolerance),
                    "--keep-rejected",  # saved, not promoted: scored below as a diagnostic
                ]
                if not watch:
                    argv += ["--publish", "--config", str(config)]
                report = await asyncio.to_thread(_command, argv)
                retrain_s = time.perf_counter() - t
                reload_s: float | None = None
                probes = 0
                if report["promoted"]:
                    reload_s, probes = await _wait_version(
                        bootstrap, topics, seen, report["version"], str(k + 1), 120.0
                    )
                    if reload_s is None:
                        _log(f"the worker never routed with {report['version']}")
                candidate = load_artifact(Path(report["artifact_path"]))
                row = {
                    "round": k + 1,
                    **await measure(k + 1),
                    "promoted": report["promoted"],
                    "reason": report["verdict"]["reason"],
                    "candidate": report["version"],
                    "candidate_apgr_in_process": round(
                        float(evaluate(candidate.router, fresh)["two_model"]["apgr"]), 4
                    ),
                    "stream_requests": len(batch),
                    "stream_answered": sum(r in seen.responses for r in rids),
                    "shadow_sampled": len(want),
                    "shadow_judged": sum(1 for r in want if seen.judge[r] >= 2),
                    "task_feedback": len(feedback),
                    "dataset": {
                        k2: built[k2]
                        for k2 in (
                            "decisions",
                            "responses",
                            "feedback",
                            "records",
                            "one_model",
                            "multi_model",
                            "skipped_no_prompt",
                            "labels_used",
                        )
                    },
                    "n_eval": report["n_eval"],
                    "build_s": round(build_s, 1),
                    "retrain_s": round(retrain_s, 1),
                    "reload_s": round(reload_s, 2) if reload_s is not None else None,
                    "reload_probes": probes,
                    "round_s": round(time.perf_counter() - t_round, 1),
                }
                out_rounds.append(row)
                _log(f"round {k + 1}: {row}")
            shadow_cost = sum(r.cost_usd for r in seen.shadow_answers.values())
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        sim.terminate()
        sim.wait(timeout=30)
    return {
        "bench": "retraining",
        "mode": "pipeline",
        "note": "broker + simulator process + `llmroute run` worker process; dataset build and "
        "retrain --publish as subprocesses each round; fresh traffic routed through the worker",
        "reload": args.reload,
        "source_records": len(source),
        "target_stream": len(stream),
        "per_round": per_round,
        "fresh_test": len(fresh),
        "sim_dataset_rows": sim_rows,
        "feedback_rate": args.feedback_rate,
        "shadow_rate": args.shadow_rate,
        "prefer": args.prefer,
        "target": {"kind": "strong_fraction", "value": args.strong_fraction},
        "min_eval": args.min_eval,
        "first_router_train_s": round(first_train_s, 1),
        "rounds": out_rounds,
        "apgr_gain": round(out_rounds[-1]["apgr"] - out_rounds[0]["apgr"], 4),
        "shadow_answer_cost_usd": round(shadow_cost, 6),
        "seconds": round(time.perf_counter() - t_start, 1),
    }


# ---------------------------------------------------------------- in process (no Kafka)


def _route(artifact_path: Path, records: list[Record], fraction: float) -> tuple[np.ndarray, Any]:
    """True where the router, at its threshold calibrated for `fraction` strong calls, sends
    the prompt to the strong model (the worker's `strong_fraction` policy)."""
    art = load_artifact(artifact_path)
    need = strong_need(art.router, art.router.predict([r.text for r in records]))
    # a missing threshold: retrain left out an infinite one (no strong call at all)
    return need >= art.calibration.get(f"strong_fraction_{fraction:.2f}", math.inf), art


def _measure(artifact_path: Path, fresh: list[Record], fraction: float) -> dict[str, Any]:
    strong, art = _route(artifact_path, fresh, fraction)
    result = evaluate(art.router, fresh)
    y = label_matrix(fresh, (STRONG_MODEL, WEAK_MODEL))
    acc = np.where(strong, y[:, 0], y[:, 1])
    cost = 0.0
    strong_cost = 0.0
    for r, s in zip(fresh, strong, strict=True):
        n_in = estimate_input_tokens(r.text)
        strong_cost += estimate_cost_usd(PRICES[STRONG_MODEL], n_in, OUTPUT_TOKENS)
        cost += estimate_cost_usd(PRICES[STRONG_MODEL if s else WEAK_MODEL], n_in, OUTPUT_TOKENS)
    return {
        "router_version": art.router.version,
        "apgr": round(result["two_model"]["apgr"], 4),
        "cost_usd": round(cost, 6),
        "cost_ratio": round(cost / strong_cost, 4),
        "accuracy": round(float(acc.mean()), 4),
        "quality_ratio": round(float(acc.mean() / y[:, 0].mean()), 4),
        "strong_fraction": round(float(strong.mean()), 4),
    }


def _in_process(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    source, stream, fresh = _limit(args, _domains(args.data, args.fresh))
    per_round = -(-len(stream) // args.rounds)
    options = RetrainOptions(
        target=CostTarget("strong_fraction", args.strong_fraction),
        min_eval=args.min_eval,
        tolerance=args.tolerance,
        strong=STRONG_MODEL,
        weak=WEAK_MODEL,
    )
    out_rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="retraining-bench-") as tmp:
        registry = Path(tmp) / "registry"
        _first_router(source, registry, args.strong_fraction)
        first = Registry(registry).current()
        assert first is not None
        out_rounds.append(
            {"round": 0, **_measure(first, fresh, args.strong_fraction), "promoted": None}
        )
        parts: list[Answered] = []
        labels: list[Label] = []
        for k in range(args.rounds):
            batch = stream[k * per_round : (k + 1) * per_round]
            current = Registry(registry).current()
            assert current is not None
            strong, art = _route(current, batch, args.strong_fraction)
            for r, s in zip(batch, strong, strict=True):
                routed = STRONG_MODEL if s else WEAK_MODEL
                other = WEAK_MODEL if s else STRONG_MODEL
                parts.append(
                    Answered(
                        r.id,
                        prompt=r.text,
                        routed_model=routed,
                        answer_model=routed,
                        router_version=art.router.version,
                    )
                )
                if _unit("feedback", r.id) < args.feedback_rate:
                    labels.append(
                        Label("task_success", r.scores[routed] >= 0.5, "task", request_id=r.id)
                    )
                if _unit("shadow", r.id) < args.shadow_rate:
                    truth = r.scores[other] >= 0.5
                    right = _unit("judge", r.id) < args.judge_accuracy
                    labels.append(
                        Label(
                            "judge",
                            truth if right else not truth,
                            "judge",
                            request_id=r.id,
                            model=other,
                        )
                    )
            dataset_rows, stats = build_dataset(
                {a.request_id: a for a in parts}, labels, ScoreRules()
            )
            outcome_records = [record_from_obj(row) for row in dataset_rows]
            t0 = time.perf_counter()
            report = retrain(
                outcome_records,
                registry,
                options,
                base_records=source if args.with_base else (),
            )
            now = Registry(registry).current()
            assert now is not None
            out_rounds.append(
                {
                    "round": k + 1,
                    **_measure(now, fresh, args.strong_fraction),
                    "promoted": report["promoted"],
                    "reason": report["verdict"]["reason"],
                    "outcome_rows": stats.records,
                    "rows_one_model": stats.one_model,
                    "rows_two_models": stats.multi_model,
                    "retrain_s": round(time.perf_counter() - t0, 2),
                }
            )
    return {
        "bench": "retraining",
        "mode": "in_process",
        "skips_worker": True,
        "note": "in process: pure core + retrain/promotion functions, feedback simulated from "
        "labels (the judge as an absolute verdict on the other model); no Kafka, no worker, "
        "no provider calls",
        "source_records": len(source),
        "target_stream": len(stream),
        "fresh_test": len(fresh),
        "feedback_rate": args.feedback_rate,
        "shadow_rate": args.shadow_rate,
        "target": {"kind": "strong_fraction", "value": args.strong_fraction},
        "rounds": out_rounds,
        "apgr_gain": round(out_rounds[-1]["apgr"] - out_rounds[0]["apgr"], 4),
        "seconds": round(time.perf_counter() - started, 1),
    }


# ---------------------------------------------------------------- main


def _limit(
    args: argparse.Namespace, domains: tuple[list[Record], list[Record], list[Record]]
) -> tuple[list[Record], list[Record], list[Record]]:
    source, stream, fresh = domains
    if args.stream:
        stream = stream[: args.stream]
    if args.fresh_limit:
        fresh = sorted(fresh, key=lambda r: _unit("fresh-order", r.id))[: args.fresh_limit]
    return source, stream, fresh


async def _run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.update(SIM_KEYS)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    lk, name = None, f"retrainbench-{os.getpid()}"
    domains = _limit(args, _domains(args.data, args.fresh))
    try:
        with tempfile.TemporaryDirectory(prefix="retraining-bench-") as tmp:
            workdir = Path(args.workdir) if args.workdir else Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            # the first router trains while the broker starts
            training = asyncio.to_thread(
                _first_timed, domains[0], workdir / "registry", args.strong_fraction
            )
            if bootstrap:
                first_train_s = await training
            else:
                lk = localkafka()
                instance, first_train_s = await asyncio.gather(
                    asyncio.to_thread(lk.start, name, 1, 0, heap_mb=1024), training
                )
                bootstrap = instance.bootstrap
                _log(f"started a local broker at {bootstrap}")
            try:
                return await _pipeline(args, bootstrap, workdir, domains, first_train_s)
            except BaseException:
                log = workdir / "worker.log"
                if log.exists():
                    sys.stderr.write(log.read_text(errors="replace")[-4000:])
                raise
    finally:
        if lk is not None:
            lk.stop(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--in-process", action="store_true", help="no Kafka, no worker (fast)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--stream", type=int, default=0, help="stream prompts to use (0: all)")
    p.add_argument("--fresh", type=float, default=0.3, help="target share kept as a fresh test")
    p.add_argument("--fresh-limit", type=int, default=0, help="fresh prompts to use (0: all)")
    p.add_argument("--feedback-rate", type=float, default=0.5, help="task feedback sample")
    p.add_argument("--shadow-rate", type=float, default=1.0, help="shadow + judge sample")
    p.add_argument("--judge-model", default=STRONG_MODEL, help="the shadow pairwise judge")
    p.add_argument("--prefer", default="judge,task", help="dataset build --prefer ('' : mean)")
    p.add_argument("--strong-fraction", type=float, default=0.5, help="the cost target")
    p.add_argument("--min-eval", type=int, default=100)
    p.add_argument("--tolerance", type=float, default=0.0, help="allowed shortfall at target")
    p.add_argument("--reload", choices=("control", "watch"), default="control")
    p.add_argument("--latency", default="fixed:0", help="simulator latency (sim-provider)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per wait for responses")
    p.add_argument("--workdir", help="keep registry, config, datasets and worker log here")
    p.add_argument("--no-cache", action="store_true", help="skip the semantic-cache figure")
    p.add_argument("--judge-accuracy", type=float, default=0.9, help="in process only")
    p.add_argument("--with-base", action="store_true", help="in process only: + first data")
    args = p.parse_args(argv)
    started = time.perf_counter()
    result = _in_process(args) if args.in_process else asyncio.run(_run_pipeline(args))
    if args.no_cache:
        result["cache_lookup_p99_ms_100k"] = None
    else:
        from cache_bench import cache_lookup_p99_ms_100k

        t0 = time.perf_counter()
        result["cache_lookup_p99_ms_100k"] = round(cache_lookup_p99_ms_100k(), 4)
        result["cache_bench_s"] = round(time.perf_counter() - t0, 1)
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
