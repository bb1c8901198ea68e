"""Latency of the learned cascade scorer: one (prompt, ~500-token answer) pair at a time, as the
worker scores a cheap answer. Synthetic answers (no data needed): step-by-step arithmetic with
calculator annotations, plain steps, prose and a final-answer marker, ~2,000 characters
(~500 tokens at 4 characters a token). Prints one JSON object.

    .venv/bin/python bench/cascade_bench.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from routers.answer_scorer import fit_answer_scorer

REPO = Path(__file__).resolve().parents[1]

PROMPT = (
    "A shop sells pencils at $0.25 each and notebooks at $3 each. Maria buys 12 pencils and "
    "4 notebooks, then pays with a $20 bill. How much change does she get?"
)


def synthetic_answer(rng: random.Random, target_chars: int = 2000) -> str:
    lines: list[str] = []
    total = 0
    while sum(len(x) + 1 for x in lines) < target_chars - 40:
        a, b = rng.randint(2, 400), rng.randint(2, 60)
        op = rng.choice("+-*")
        value = a + b if op == "+" else a - b if op == "-" else a * b
        if rng.random() < 0.1:
            value += 1  # an arithmetic slip now and then
        if rng.random() < 0.5:
            lines.append(f"Next, the amount is {a} {op} {b} = <<{a}{op}{b}={value}>>{value} items.")
        else:
            lines.append(f"So we have {a} {op} {b} = {value}, which we carry to the next step.")
        total = value
    lines.append(f"#### {total}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=2000)
    args = ap.parse_args()
    rng = random.Random(0)
    train_answers = [synthetic_answer(rng, rng.randint(200, 2000)) for _ in range(200)]
    labels = [float(rng.random() < 0.6) for _ in train_answers]
    scorer = fit_answer_scorer(
        [PROMPT] * len(train_answers), train_answers, labels, strong="s", weak="w", version="b"
    )
    answers = [synthetic_answer(rng) for _ in range(200)]
    for a in answers[:20]:  # warm-up
        scorer.verdict(PROMPT, a, 0.5)
    timings, cpu = [], []
    for i in range(args.runs):
        a = answers[i % len(answers)]
        t0, c0 = time.perf_counter(), time.thread_time()
        scorer.verdict(PROMPT, a, 0.5)
        timings.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
    t = np.array(timings)
    c = np.array(cpu)
    out = {
        "what": "LearnedAnswerScorer.verdict, one (prompt, answer) pair, one thread",
        "answer_chars_mean": round(float(np.mean([len(a) for a in answers])), 1),
        "answer_tokens_est": round(float(np.mean([len(a) for a in answers])) / 4),
        "runs": args.runs,
        "p50_ms": round(float(np.percentile(t, 50)), 4),
        "p99_ms": round(float(np.percentile(t, 99)), 4),
        "max_ms": round(float(t.max()), 4),
        "cpu_mean_ms": round(float(c.mean()), 4),
        "note": "wall times include other processes' load on a shared machine; cpu_mean_ms is "
        "this thread's CPU time per answer",
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
