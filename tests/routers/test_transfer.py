"""Leave-one-domain-out transfer validation (`routers.transfer`)."""

import zlib

import numpy as np
import pytest

from routers.dataset import Record, record_from_obj
from routers.learned import ClassifierParams
from routers.training import TrainOptions
from routers.transfer import (
    MMLU_GROUPS,
    domain_of,
    fit_with,
    group_by_domain,
    leave_one_domain_out,
)

from . import synth


def test_every_mmlu_subject_has_one_of_the_four_groups():
    assert len(MMLU_GROUPS) == 57
    groups = {}
    for subject, group in MMLU_GROUPS.items():
        groups.setdefault(group, []).append(subject)
    assert {g: len(s) for g, s in groups.items()} == {
        "stem": 18,
        "humanities": 13,
        "social_sciences": 12,
        "other": 14,
    }


def _rec(i, tags, strong=1.0, weak=0.0, text="x"):
    return Record(f"r{i}", text, {synth.STRONG: strong, synth.WEAK: weak}, tags=tags)


def test_domains_come_from_subject_groups_benchmarks_and_files():
    assert domain_of(_rec(0, {"benchmark": "mmlu", "subject": "virology"}), "f") == "mmlu:other"
    assert domain_of(_rec(1, {"benchmark": "mmlu", "subject": "philosophy"}), "f") == (
        "mmlu:humanities"
    )
    assert domain_of(_rec(2, {"benchmark": "gsm8k"}), "gsm8k_feedback") == "gsm8k"
    assert domain_of(_rec(3, {}), "chat_logs") == "chat_logs"
    grouped = group_by_domain({"a": [_rec(4, {}), _rec(5, {"benchmark": "b"})], "c": [_rec(6, {})]})
    assert {k: [r.id for r in v] for k, v in grouped.items()} == {
        "a": ["r4"],
        "b": ["r5"],
        "c": ["r6"],
    }


def _domain(name, n, seed, cue_works):
    """Synthetic records of one domain: 'hard' prompts need the strong model; in a domain where
    the cue does not work, the labels ignore it."""
    out = []
    for o in synth.records(n, seed=seed):
        r = record_from_obj(o)
        if not cue_works:
            rng = np.random.default_rng(zlib.crc32(r.id.encode()))
            r = Record(r.id, r.text, {synth.STRONG: 1.0, synth.WEAK: float(rng.random() < 0.5)})
        out.append(Record(name + r.id, r.text, r.scores, tags={"benchmark": name}))
    return out


def _cue_fit(train):
    """A 'router' that learned the word 'Prove' etc. from its training data: it scores by the
    mean strong-minus-weak gain of the template's first word."""
    gains = {}
    for r in train:
        gain = r.scores[synth.STRONG] - r.scores[synth.WEAK]
        gains.setdefault(r.text.split()[0], []).append(gain)
    table = {k: float(np.mean(v)) for k, v in gains.items()}
    return lambda test: np.array([table.get(r.text.split()[0], 0.0) for r in test])


def test_leave_one_domain_out_reports_each_domain_and_the_worst():
    domains = {
        "a": _domain("a", 150, 1, True),
        "b": _domain("b", 150, 2, True),
        "noisy": _domain("noisy", 150, 3, False),
    }
    calls = []

    def fit(train):
        calls.append({r.tags["benchmark"] for r in train})
        return _cue_fit(train)

    report = leave_one_domain_out(domains, fit, synth.STRONG, synth.WEAK)
    # each fit saw every domain but the held-out one
    assert calls == [{"b", "noisy"}, {"a", "noisy"}, {"a", "b"}]
    by = {d.domain: d for d in report.domains}
    assert by["a"].apgr > 0.75 and by["b"].apgr > 0.75
    assert by["noisy"].n_train == 300 and by["noisy"].n_test == 150
    worst = report.worst
    assert worst["apgr"] == pytest.approx(min(d.apgr for d in report.domains), abs=1e-4)
    assert worst["apgr_domain"] == "noisy"
    assert worst["cps95"] == pytest.approx(max(d.cps95 for d in report.domains), abs=1e-4)
    summary = report.summary()
    assert [d["domain"] for d in summary["held_out"]] == ["a", "b", "noisy"]


def test_needs_two_labelled_domains_and_skips_small_ones():
    one = {"a": _domain("a", 50, 1, True)}
    with pytest.raises(ValueError):
        leave_one_domain_out(one, _cue_fit, synth.STRONG, synth.WEAK)
    two = {"a": _domain("a", 50, 1, True), "tiny": _domain("tiny", 5, 2, True)}
    report = leave_one_domain_out(two, _cue_fit, synth.STRONG, synth.WEAK, min_test=20)
    assert [d.domain for d in report.domains] == ["a"]
    assert report.domains[0].n_train == 5


def test_each_held_out_domain_says_how_much_of_it_the_router_found_unfamiliar():
    # Two styles of prompt: synth's maths/greetings and a domain written otherwise. Held out,
    # the other style is wholly unfamiliar to a router trained on the first; the share is what
    # tells a user that the held-out figure is the 1 - P(weak right) ranking.
    texts = ["Wie spät ist es in {} gerade?", "Erkläre mir bitte {} in einfachen Worten."]
    other = [
        Record(f"de{i}", texts[i % 2].format(i), {synth.STRONG: 1.0, synth.WEAK: float(i % 3 == 0)})
        for i in range(60)
    ]
    domains = {"synth": _domain("synth", 400, 1, True), "german": other}
    options = TrainOptions(
        strong=synth.STRONG, weak=synth.WEAK, classifier=ClassifierParams(iters=20)
    )
    report = leave_one_domain_out(domains, fit_with(options), synth.STRONG, synth.WEAK)
    by = {d.domain: d for d in report.domains}
    assert by["german"].unfamiliar_share == 1.0
    assert by["synth"].unfamiliar_share is not None
    assert by["german"].summary()["unfamiliar_share"] == 1.0
    # a scorer that gives no distances reports none
    plain = leave_one_domain_out(domains, _cue_fit, synth.STRONG, synth.WEAK)
    assert all(d.unfamiliar_share is None for d in plain.domains)
