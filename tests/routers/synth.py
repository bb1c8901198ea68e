"""A small synthetic routing dataset with a learnable signal: 'hard' topics need the strong
model, 'easy' ones do not. Deterministic for a seed."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

STRONG = "big-model"
WEAK = "small-model"
MID = "mid-model"

HARD = [
    "Prove that the sum of the first {n} odd numbers is a perfect square.",
    "Compute the integral of x^{n} times log x from 1 to e, step by step.",
    "Find all primes p such that p^2 + {n} is also prime and justify it.",
    "Derive the closed form of the recurrence a(n) = 3 a(n-1) - 2 a(n-2) with a(0) = {n}.",
]
EASY = [
    "Say hello to my friend number {n} in a cheerful way.",
    "What colour is the sky on a sunny day? Answer in {n} words.",
    "Translate 'thank you' into French for guest {n}.",
    "Give me a short greeting for a birthday card, version {n}.",
]


def records(n: int, seed: int = 0, with_mid: bool = False) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        hard = rng.random() < 0.4
        template = rng.choice(HARD if hard else EASY)
        text = template.format(n=rng.randint(2, 999))
        if hard:
            strong, weak = float(rng.random() < 0.9), float(rng.random() < 0.15)
        else:
            strong, weak = float(rng.random() < 0.95), float(rng.random() < 0.9)
        scores = {STRONG: strong, WEAK: weak}
        costs = {STRONG: 0.01, WEAK: 0.001}
        if with_mid:
            scores[MID] = float(rng.random() < (0.6 if hard else 0.92))
            costs[MID] = 0.004
        rec: dict[str, Any] = {"id": f"syn-{seed}-{i}", "scores": scores, "costs": costs}
        if i % 5 == 0:
            rec["messages"] = [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": text}]},
            ]
        else:
            rec["prompt"] = text
        rec["tags"] = {"kind": "hard" if hard else "easy"}
        out.append(rec)
    return out


def write_jsonl(path: Path, recs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path
