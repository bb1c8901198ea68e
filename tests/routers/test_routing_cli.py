"""End-to-end `llmroute train/score/calibrate/eval` on a small dataset written to tmp_path."""

import json

import pytest

from routers.artifact import load_artifact
from worker.__main__ import main

from . import synth


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    train = synth.write_jsonl(d / "train.jsonl", synth.records(160, seed=2, with_mid=True))
    test = synth.write_jsonl(d / "test.jsonl", synth.records(80, seed=3, with_mid=True))
    prices = d / "prices.json"
    prices.write_text(
        json.dumps(
            {
                synth.STRONG: {"input_per_mtok": 10.0, "output_per_mtok": 30.0},
                synth.MID: {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
                synth.WEAK: {"input_per_mtok": 0.5, "output_per_mtok": 0.5},
            }
        )
    )
    return d, train, test, prices


@pytest.fixture(scope="module")
def trained(files):
    d, train, _, _ = files
    out = d / "router"
    rc = main(["train", "--data", str(train), "--router", "default", "--out", str(out),
               "--strong", synth.STRONG, "--weak", synth.WEAK, "--holdout", "0.25"])  # fmt: skip
    assert rc == 0
    return out


def test_train_writes_an_artifact_with_metrics_and_calibration(trained):
    art = load_artifact(trained)
    assert art.router.name == "pooled"  # `default` for three or more models
    assert art.meta["strong"] == synth.STRONG
    assert set(art.calibration) >= {"strong_fraction_0.30", "quality_95pct"}
    assert 0.0 <= art.metrics["heldout"]["apgr"] <= 1.5
    assert len(art.meta["data_sha256"]) == 64


def test_score_writes_one_line_per_prompt(files, trained, capsys):
    d, _, test, _ = files
    out = d / "scores.jsonl"
    assert main(["score", "--router", str(trained), "--data", str(test), "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    ids = [json.loads(x)["id"] for x in test.read_text().splitlines()]
    assert [x["id"] for x in lines] == ids
    for x in lines:
        assert set(x["predicted"]) == {synth.STRONG, synth.WEAK, synth.MID}
        assert x["score"] == pytest.approx(
            x["predicted"][synth.STRONG] - x["predicted"][synth.WEAK]
        )
    hard = [x["score"] for x, r in zip(lines, synth.records(80, seed=3, with_mid=True), strict=True)
            if r["tags"]["kind"] == "hard"]  # fmt: skip
    easy = [x["score"] for x, r in zip(lines, synth.records(80, seed=3, with_mid=True), strict=True)
            if r["tags"]["kind"] == "easy"]  # fmt: skip
    assert sum(hard) / len(hard) > sum(easy) / len(easy)


def test_calibrate_stores_thresholds(files, trained, capsys):
    _, _, test, _ = files
    rc = main(["calibrate", "--router", str(trained), "--data", str(test),
               "--strong-fraction", "0.4", "--quality-ratio", "0.95"])  # fmt: skip
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    cal = load_artifact(trained).calibration
    assert cal["strong_fraction_0.40"] == printed["thresholds"]["strong_fraction_0.40"]
    assert "quality_95pct" in cal


def test_eval_json_and_plot(files, trained, capsys, tmp_path):
    _, _, test, prices = files
    png = tmp_path / "curve.png"
    rc = main(["eval", "--router", str(trained), "--data", str(test), "--json",
               "--prices", str(prices), "--plot", str(png)])  # fmt: skip
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    two = result["two_model"]
    assert two["apgr"] > 0.6
    assert result["random"]["apgr"] == 0.5
    assert result["oracle"]["apgr"] >= two["apgr"]
    assert 0.0 < two["cost_ratio_at_cpt50"] < 1.0
    assert result["n_model"]["aiq"] > 0
    assert len(two["curve"]) == 101
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_text_summary(files, trained, capsys):
    _, _, test, _ = files
    assert main(["eval", "--router", str(trained), "--data", str(test)]) == 0
    assert "APGR" in capsys.readouterr().out


def test_bad_input_is_a_clean_error(tmp_path, capsys, trained):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "x", "scores": {"m": 1}}\nnot json\n')
    rc = main(["train", "--data", str(bad), "--router", "classifier", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "bad.jsonl:2: not JSON" in capsys.readouterr().err
    rc = main(["eval", "--router", str(tmp_path / "missing"), "--data", str(bad)])
    assert rc == 2
    assert "no meta.json" in capsys.readouterr().err
