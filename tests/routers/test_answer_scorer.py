"""The learned cascade scorer: features of (prompt, cheap answer), training, artifacts, the
`llmroute train --router cascade` / `score` commands, and (when the file is beside the repo) its
held-out quality on gsm8k_feedback.jsonl."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from routers.answer_scorer import (
    ANSWER_FEATURE_NAMES,
    AnswerScorerParams,
    LearnedAnswerScorer,
    answer_features,
    load_answer_scorer,
    safe_arith,
    save_answer_scorer,
    train_answer_scorer,
)
from routers.dataset import record_from_obj, split_by_id
from routers.errors import ArtifactError, TrainingDataError
from routers.metrics import two_model_report
from worker.__main__ import main

from . import synth

REPO = Path(__file__).resolve().parents[2]
GSM8K = [
    p / "shared" / "data" / "routing" / "gsm8k_feedback.jsonl"
    for p in (REPO.parent, REPO.parents[1])
]
GSM8K_FILE = next((p for p in GSM8K if p.exists()), None)


def feature(prompt: str, answer: str, name: str) -> float:
    return answer_features(prompt, answer)[ANSWER_FEATURE_NAMES.index(name)]


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("2*3+4", 10.0),
        ("2 + 3 * 4", 14.0),
        ("(2+3)*4", 20.0),
        ("$1,200 / 4", 300.0),
        ("12 x 3", 36.0),
        ("2^3^2", 512.0),
        ("8/2/2", 2.0),
        ("2-3-4", -5.0),
        ("50% * 8", 4.0),
        ("1/0", None),
        ("abc", None),
        ("2**", None),
        ("((2)", None),
        ("3(4)", None),
        ("__import__('os')", None),
        ("9^9^9", None),
    ],
)
def test_safe_arith_evaluates_arithmetic_only(expr, value):
    got = safe_arith(expr)
    assert got == (pytest.approx(value) if value is not None else None)


def test_arithmetic_slips_are_found_in_annotations_and_plain_steps():
    p = "Tom has 4 bags of 12 apples. How many apples?"
    ok = "4 x 12 = <<4*12=48>>48 apples.\n#### 48"
    slip_annot = "4 x 12 = <<4*12=46>>46 apples.\n#### 46"
    slip_plain = "He has 4 x 12 = 46 apples in all.\n#### 46"
    assert feature(p, ok, "wrong_step_frac") == 0.0
    assert feature(p, slip_annot, "wrong_step_frac") == 1.0
    assert feature(p, slip_plain, "wrong_step_frac") == 1.0
    # rounding as written is not a slip
    assert feature(p, "So 10 / 60 = 0.17 hours.", "wrong_step_frac") == 0.0


def test_final_answer_markers_and_number_overlap():
    p = "Sara buys 3 pens at $2 each and a book for $15. How much does she spend?"
    a = "Pens: 3 * 2 = 6. Total: 6 + 15 = 21.\n#### 21"
    assert feature(p, a, "has_final_marker") == 1.0
    assert feature(p, a, "final_is_integer") == 1.0
    assert feature(p, a, "final_matches_last_result") == 1.0
    assert feature(p, a, "prompt_numbers_used_frac") == 1.0
    vague = "She spends about 7.5 dollars, I think"
    assert feature(p, vague, "has_final_marker") == 0.0
    assert feature(p, vague, "final_is_integer") == 0.0
    assert feature(p, vague, "hedges") >= 1.0
    assert feature(p, vague, "prompt_numbers_used_frac") < 1.0


def test_features_are_finite_for_any_text():
    for p, a in [
        ("", ""),
        ("x", "\x00\u2019" * 50),
        ("1" * 5000, "=" * 3000),
        ("9" * 400, "9^9^9=1"),
    ]:
        f = answer_features(p, a)
        assert len(f) == len(ANSWER_FEATURE_NAMES)
        assert all(math.isfinite(v) for v in f)


def _train_split():
    rows = synth.answered_records(400, seed=1)
    recs = [record_from_obj(r) for r in rows]
    return recs[:300], recs[300:]


def test_learned_scorer_ranks_unseen_flawed_answers_for_escalation():
    fit, test = _train_split()
    scorer = train_answer_scorer(fit)
    esc = scorer.escalate_score([r.text for r in test], [r.answers[synth.CHEAP] for r in test])
    qs = np.array([r.scores[synth.STRONG] for r in test])
    qw = np.array([r.scores[synth.CHEAP] for r in test])
    # the flaws that show are learned; misreads with clean working are not (cap well below 1)
    assert two_model_report(esc, qs, qw).apgr > 0.75
    assert two_model_report(-esc, qs, qw).apgr < 0.5


def test_roles_default_to_the_cheapest_model_and_the_best_other():
    fit, _ = _train_split()
    scorer = train_answer_scorer(fit)
    assert (scorer.weak, scorer.strong) == (synth.CHEAP, synth.STRONG)


def test_too_few_answered_rows_is_a_training_data_error():
    rows = [record_from_obj({**r, "answers": {}}) for r in synth.answered_records(30)]
    with pytest.raises(TrainingDataError, match="answers"):
        train_answer_scorer(rows)


def test_verdict_explains_what_pulled_the_score_down():
    fit, _ = _train_split()
    scorer = train_answer_scorer(fit)
    p = fit[0].text
    bad = "Each crate has 3 x 4 = <<3*4=13>>13 apples.\nSo about 6.21 apples a day."
    v = scorer.verdict(p, bad, 0.5)
    assert not v.accept
    assert v.reasons and "escalate" in v.reason


def test_artifact_round_trip_scores_identically(tmp_path):
    fit, test = _train_split()
    scorer = train_answer_scorer(fit)
    save_answer_scorer(scorer, tmp_path / "a", calibration={"x": 0.5, "inf": math.inf})
    loaded, meta = load_answer_scorer(tmp_path / "a")
    prompts, answers = [r.text for r in test], [r.answers[synth.CHEAP] for r in test]
    assert np.allclose(
        loaded.escalate_score(prompts, answers), scorer.escalate_score(prompts, answers)
    )
    assert meta["calibration"] == {"x": 0.5}
    assert loaded.version == scorer.version and loaded.version.startswith("cascade-")


def test_loading_something_else_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError):
        load_answer_scorer(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"router": "classifier"}))
    with pytest.raises(ArtifactError, match="not a cascade"):
        load_answer_scorer(tmp_path)


def test_features_other_than_this_build_are_refused():
    n = len(ANSWER_FEATURE_NAMES)
    with pytest.raises(ArtifactError, match="retrain"):
        LearnedAnswerScorer(
            version="v",
            strong="s",
            weak="w",
            weights=np.zeros(n),
            bias=0.0,
            center=np.zeros(n),
            scale=np.ones(n),
            params=AnswerScorerParams(),
            feature_names=("other",) * n,
        )


def test_answers_must_be_texts():
    with pytest.raises(TrainingDataError, match="answers"):
        record_from_obj({"id": "a", "prompt": "p", "scores": {"m": 1.0}, "answers": {"m": 4}})
    r = record_from_obj({"id": "a", "prompt": "p", "scores": {"m": 1.0}, "answers": {"m": "4"}})
    assert r.answers == {"m": "4"}


# --- the commands ---------------------------------------------------------------------------


def test_train_cascade_and_score_write_escalation_scores(tmp_path, capsys):
    train = synth.write_jsonl(tmp_path / "train.jsonl", synth.answered_records(300, seed=2))
    test = synth.write_jsonl(tmp_path / "test.jsonl", synth.answered_records(100, seed=3))
    out = tmp_path / "cascade"
    args = ["--router", "cascade", "--data", str(train), "--out", str(out), "--holdout", "0.3"]
    rc = main(["train", *args])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["weak"] == synth.CHEAP and summary["strong"] == synth.STRONG
    assert summary["heldout"]["apgr"] > 0.6
    assert "quality_95pct" in summary["calibration"]
    scores = tmp_path / "s.jsonl"
    assert main(["score", "--router", str(out), "--data", str(test), "--out", str(scores)]) == 0
    lines = [json.loads(x) for x in scores.read_text().splitlines()]
    rows = [json.loads(x) for x in test.read_text().splitlines()]
    assert [x["id"] for x in lines] == [r["id"] for r in rows]
    assert all(set(x) == {"id", "score"} and 0.0 <= x["score"] <= 1.0 for x in lines)
    esc = np.array([x["score"] for x in lines])
    qs = np.array([r["scores"][synth.STRONG] for r in rows])
    qw = np.array([r["scores"][synth.CHEAP] for r in rows])
    assert two_model_report(esc, qs, qw).apgr > 0.7


def test_score_with_a_cascade_scorer_needs_the_cheap_answers(tmp_path, capsys):
    train = synth.write_jsonl(tmp_path / "train.jsonl", synth.answered_records(100, seed=2))
    bare = synth.write_jsonl(tmp_path / "bare.jsonl", synth.records(5))
    out = tmp_path / "cascade"
    assert main(["train", "--router", "cascade", "--data", str(train), "--out", str(out)]) == 0
    capsys.readouterr()
    rc = main(["score", "--router", str(out), "--data", str(bare), "--out", str(tmp_path / "s")])
    assert rc == 2
    assert "no answer of the cheap model" in capsys.readouterr().err


# --- real data ------------------------------------------------------------------------------


@pytest.mark.skipif(GSM8K_FILE is None, reason="gsm8k_feedback.jsonl not beside the repo")
def test_held_out_gsm8k_cheap_answers_rank_well_above_prompt_only():
    assert GSM8K_FILE is not None
    recs = [record_from_obj(json.loads(x)) for x in GSM8K_FILE.read_text().splitlines()]
    held = split_by_id([r.id for r in recs], 0.3, "cascade-test")
    fit = [r for r, h in zip(recs, held, strict=True) if not h]
    test = [r for r, h in zip(recs, held, strict=True) if h]
    strong, weak = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
    scorer = train_answer_scorer(fit, strong=strong, weak=weak)
    esc = scorer.escalate_score([r.text for r in test], [r.answers[weak] for r in test])
    apgr = two_model_report(
        esc, [r.scores[strong] for r in test], [r.scores[weak] for r in test]
    ).apgr
    # 5x5-fold CV gives ~0.72 (bench/cascade_eval.py); one 30% split of 522 rows varies ~±0.04
    assert apgr > 0.64


def test_a_huge_answer_is_read_in_part_and_keeps_its_length():
    huge = "So 2 + 2 = 4 and <<3*3=9>>9. " * 40_000 + "\n#### 4"
    f = answer_features("What is 2 + 2? " * 5_000, huge)
    assert f[ANSWER_FEATURE_NAMES.index("log_answer_chars")] == pytest.approx(math.log1p(len(huge)))
    assert f[ANSWER_FEATURE_NAMES.index("has_final_marker")] == 1.0  # the tail is read
    assert all(math.isfinite(v) for v in f)
