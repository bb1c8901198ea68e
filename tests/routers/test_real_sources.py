"""`unfamiliar` on the shared data (when present beside the repo): a router trained on MMLU and
part of GSM8K knows the rest of GSM8K, and finds chat prompts unlike both."""

import json
from pathlib import Path

import numpy as np
import pytest

from routers.dataset import record_from_obj, split_by_id
from routers.learned import SHRINK_ABOVE, ClassifierParams
from routers.training import TrainOptions, train

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "routing"
MMLU, GSM8K = DATA / "mmlu_dev.jsonl", DATA / "gsm8k_feedback.jsonl"

# Written for this test: requests a chat service gets (no labels; only their distance is used).
CHAT = [
    "hi",
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Can you help me write an email to my landlord asking to fix the heating?",
    "Explain quantum entanglement to a 10 year old.",
    "How do I reverse a linked list in Python? Show code.",
    "What's the difference between a list and a tuple in python",
    "Translate 'good morning, how are you' into Spanish and German.",
    "Write a short story about a robot who learns to paint. About 500 words.",
    "Summarize the plot of Hamlet in three sentences.",
    "I have a headache and a fever, what should I do?",
    "Give me 10 name ideas for a coffee shop.",
    "Write a SQL query that returns the top 5 customers by total order value from tables "
    "customers(id, name) and orders(id, customer_id, amount).",
    "What are the pros and cons of remote work?",
    "tell me a joke",
    "My React component re-renders infinitely when I call setState inside useEffect. Why?",
    "Write a cover letter for a junior data analyst position.",
    "Role-play as a medieval innkeeper greeting a traveler.",
    "Create a weekly meal plan for a vegetarian athlete, with macros.",
    "Write a bash script that renames all .jpeg files in a folder to .jpg",
    "Draft a tweet announcing our new product launch, an AI note-taking app.",
    "Implement a thread-safe LRU cache in Java with generics and explain its complexity.",
    "Rewrite this sentence to be more formal: hey guys, the meeting got moved to 3pm lol",
    "Plan a 5-day itinerary for Tokyo for a family with two kids.",
    "Can you recommend some sci-fi books similar to Dune?",
]


def _read(path: Path) -> list:
    with path.open() as fh:
        return [record_from_obj(json.loads(line)) for line in fh if line.strip()]


@pytest.mark.skipif(
    not (MMLU.exists() and GSM8K.exists()), reason="shared data not beside the repo"
)
def test_after_feedback_a_new_domain_is_familiar_and_chat_is_not():
    mmlu = _read(MMLU)[::2]  # a spread over every subject, ~4,900 items
    gsm = _read(GSM8K)
    held = split_by_id([r.id for r in gsm], 0.4, "gsm8k-test")
    added = [r for r, h in zip(gsm, held, strict=True) if not h]
    unseen = [r.text for r, h in zip(gsm, held, strict=True) if h]
    options = TrainOptions(router="classifier", classifier=ClassifierParams(iters=5))
    router = train(mmlu + added, options)
    assert router.familiarity is not None

    def far(texts: list[str]) -> np.ndarray:
        return router.familiarity.distance(router.featurizer.transform(texts))

    # One distance model over both sources put 17% of the unseen GSM8K prompts over 1.0 (26%
    # with all of MMLU) and 2 of these 25 chat prompts under the threshold; now 4% and none.
    assert float((far(unseen) > 1.0).mean()) <= 0.10
    assert float((far(CHAT) > SHRINK_ABOVE).mean()) >= 0.95
