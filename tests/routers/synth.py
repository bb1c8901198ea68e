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


CHEAP = "cheap-model"


def answered_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Arithmetic word problems with the cheap model's step-by-step answer (`answers`). A wrong
    answer usually shows it (an arithmetic slip, a non-integer or missing final answer) but some
    are wrong with clean-looking working (the wrong operation, a misread question); the strong
    model is right 90% of the time."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b, c = rng.randint(2, 40), rng.randint(2, 30), rng.randint(2, 9)
        prompt = (
            f"A crate holds {a} boxes and each box holds {b} apples. {c} crates arrive. "
            f"How many apples arrive in total?"
        )
        first, right = a * b, a * b * c
        step1 = f"Each crate has {a} x {b} = <<{a}*{b}={first}>>{first} apples.\n"
        flaw = 1.0 if rng.random() < 0.6 else rng.random()
        if flaw < 0.4:  # a slip in the last step
            stated = right + rng.randint(1, 9)
            answer = f"{step1}So {c} crates hold {first} x {c} = {stated} apples.\n#### {stated}"
        elif flaw < 0.6:  # no final answer, a non-integer
            stated = -1
            answer = f"{step1}So {c} crates hold about {right / 7:.2f} apples a day."
        elif flaw < 0.75:  # the wrong operation, stated consistently
            stated = first + c
            answer = f"{step1}Adding the crates: {first} + {c} = <<{first}+{c}={stated}>>{stated}."
            answer += f"\n#### {stated}"
        elif flaw < 1.0:  # a misread question, clean working
            stated = right + 10 * rng.randint(1, 5)
            answer = f"{step1}So the crates hold {stated} apples.\n#### {stated}"
        else:
            stated = right
            answer = (
                f"{step1}So {c} crates hold {first} x {c} = <<{first}*{c}={right}>>{right} "
                f"apples.\n#### {right}"
            )
        out.append(
            {
                "id": f"ans-{seed}-{i}",
                "prompt": prompt,
                "scores": {STRONG: float(rng.random() < 0.9), CHEAP: float(stated == right)},
                "costs": {STRONG: 0.01, CHEAP: 0.0005},
                "answers": {CHEAP: answer, STRONG: f"The total is {right}."},
            }
        )
    return out
