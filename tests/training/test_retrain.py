"""Retrain and promote into a versioned registry (files only; the Kafka control event is in
test_retraining_kafka.py)."""

from __future__ import annotations

import dataclasses
import json
import random

from routers.artifact import load_artifact
from routers.dataset import record_from_obj, split_by_id
from routers.promotion import CostTarget
from tests.routers.synth import STRONG, WEAK, records, write_jsonl
from worker.__main__ import main
from worker.training.registry import CURRENT, Registry
from worker.training.retrain import RetrainOptions, retrain

OPTIONS = RetrainOptions(target=CostTarget("strong_fraction", 0.4), min_eval=30)


def _records(seed: int, shuffle: bool = False):
    rows = records(450, seed=seed)
    if shuffle:  # training labels from other prompts (the held-out slice stays true)
        held = split_by_id([r["id"] for r in rows], OPTIONS.holdout, OPTIONS.split_salt)
        fit = [i for i, h in enumerate(held) if not h]
        scores = [rows[i]["scores"] for i in fit]
        random.Random(seed).shuffle(scores)
        for i, s in zip(fit, scores, strict=True):
            rows[i] = {**rows[i], "scores": s}
    return [record_from_obj(r) for r in rows]


def test_first_version_then_as_good_then_worse(tmp_path):
    registry = tmp_path / "registry"
    first = retrain(_records(1), registry, OPTIONS)
    assert first["promoted"], first["verdict"]
    assert first["version"].startswith("v0001-classifier-")
    assert (registry / CURRENT).read_text().strip() == first["version"]
    art = load_artifact(Registry(registry).current())
    assert art.router.version == first["version"]  # the artifact carries its version
    assert (art.router.strong, art.router.weak) == (STRONG, WEAK)
    assert "strong_fraction_0.30" in art.calibration and art.meta["score_quantiles"]

    second = retrain(_records(1), registry, OPTIONS)  # same data: as good -> promoted
    assert second["promoted"] and second["version"].startswith("v0002-")
    assert second["current_version"] == first["version"]
    assert second["verdict"]["candidate"]["quality"] >= second["verdict"]["current"]["quality"]

    worse = retrain(_records(1, shuffle=True), registry, OPTIONS)
    assert not worse["promoted"], worse["verdict"]
    assert "keep the current router" in worse["verdict"]["reason"]
    assert (registry / CURRENT).read_text().strip() == second["version"]
    assert sorted(p.name for p in registry.iterdir() if not p.name.startswith(".")) == sorted(
        [CURRENT, first["version"], second["version"]]
    )


def test_too_little_evidence_is_not_promoted(tmp_path):
    only_strong = [
        record_from_obj({**r, "scores": {STRONG: r["scores"][STRONG], WEAK: r["scores"][WEAK]}})
        if i % 10 == 0
        else record_from_obj(
            {**r, "scores": {STRONG: r["scores"][STRONG]}}
            if i % 2
            else {**r, "scores": {WEAK: r["scores"][WEAK]}}
        )
        for i, r in enumerate(records(300, seed=4))
    ]
    report = retrain(only_strong, tmp_path / "reg", OPTIONS)
    assert not report["promoted"]
    assert "need 30" in report["verdict"]["reason"]
    assert Registry(tmp_path / "reg").current() is None


def test_retrain_command(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", records(300, seed=5))
    registry = tmp_path / "reg"
    argv = ["retrain", "--data", str(data), "--registry", str(registry), "--min-eval", "30"]
    assert main([*argv, "--strong-fraction", "0.3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["promoted"] and out["verdict"]["target"] == {"kind": "strong_fraction", "value": 0.3}
    assert main([*argv, "--strong-fraction", "0.3", "--quality-ratio", "0.9"]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_retrained_router_keeps_the_current_ones_features(tmp_path):
    # the current router was trained with the static embedding (`llmroute train
    # --static-embedding ...`): its successor is too, not silently the default features
    from routers.artifact import save
    from routers.features import HashingParams
    from routers.training import TrainOptions, train

    chosen = HashingParams(word_dim=1024, char_dim=1024, static_embedding="wordllama-l2-256")
    first = train(_records(1), TrainOptions(features=chosen))
    current = save(first, tmp_path / "current")
    keep = dataclasses.replace(OPTIONS, keep_rejected=True)  # saved, promoted or not
    report = retrain(_records(2), tmp_path / "registry", keep, current=current)
    art = load_artifact(tmp_path / "registry" / report["version"])
    assert art.meta["features"] == first.featurizer.spec()
