"""End-to-end `llmroute train/score/calibrate/eval` on a small dataset written to tmp_path."""

import json

import numpy as np
import pytest

from routers.artifact import load_artifact
from routers.learned import assess
from tests.routers import synth
from worker.__main__ import main


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
    rc = main(
        [
            "train",
            "--data",
            str(train),
            "--router",
            "default",
            "--out",
            str(out),
            "--strong",
            synth.STRONG,
            "--weak",
            synth.WEAK,
            "--holdout",
            "0.25",
        ]
    )
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
    hard = [
        x["score"]
        for x, r in zip(lines, synth.records(80, seed=3, with_mid=True), strict=True)
        if r["tags"]["kind"] == "hard"
    ]
    easy = [
        x["score"]
        for x, r in zip(lines, synth.records(80, seed=3, with_mid=True), strict=True)
        if r["tags"]["kind"] == "easy"
    ]
    assert sum(hard) / len(hard) > sum(easy) / len(easy)


def test_calibrate_stores_thresholds(files, trained, capsys):
    _, _, test, _ = files
    rc = main(
        [
            "calibrate",
            "--router",
            str(trained),
            "--data",
            str(test),
            "--strong-fraction",
            "0.4",
            "--quality-ratio",
            "0.95",
        ]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    cal = load_artifact(trained).calibration
    assert cal["strong_fraction_0.40"] == printed["thresholds"]["strong_fraction_0.40"]
    assert "quality_95pct" in cal


def test_eval_json_and_plot(files, trained, capsys, tmp_path):
    _, _, test, prices = files
    png = tmp_path / "curve.png"
    rc = main(
        [
            "eval",
            "--router",
            str(trained),
            "--data",
            str(test),
            "--json",
            "--prices",
            str(prices),
            "--plot",
            str(png),
        ]
    )
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


def test_eval_on_the_training_file_scores_only_its_held_out_items(files, trained, capsys):
    _, train, _, _ = files
    assert main(["eval", "--router", str(trained), "--data", str(train), "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    art = load_artifact(trained)
    n_all = len(train.read_text().splitlines())
    assert result["n"] == n_all - art.metrics["n_train"]
    assert result["n"] == art.metrics["heldout"]["n"]
    assert "not trained on (its held-out split)" in out.err


def test_eval_all_on_the_training_file_warns_it_is_in_sample(files, trained, capsys):
    _, train, _, _ = files
    assert main(["eval", "--router", str(trained), "--data", str(train), "--all"]) == 0
    err = capsys.readouterr().err
    assert "records were trained on (in-sample)" in err


def test_eval_on_new_data_neither_drops_nor_warns(files, trained, capsys):
    _, _, test, _ = files
    assert main(["eval", "--router", str(trained), "--data", str(test), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["n"] == len(test.read_text().splitlines())
    assert "warning" not in out.err


def test_eval_reports_the_deployed_operating_point_and_the_oracle_curve(files, trained, capsys):
    _, _, test, _ = files
    assert main(["eval", "--router", str(trained), "--data", str(test), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    art = load_artifact(trained)
    deployed = result["deployed"]
    assert deployed["threshold"] == pytest.approx(art.calibration["quality_95pct"])
    assert 0.0 <= deployed["strong_fraction"] <= 1.0
    assert len(result["oracle"]["curve"]) == 101


def test_train_stores_the_unfamiliar_model_and_the_split(trained):
    art = load_artifact(trained)
    assert art.familiarity is not None
    assert art.meta["familiarity"]["quantile"] == pytest.approx(0.99)
    assert art.meta["split"] == {"holdout": 0.25, "salt": "heldout"}
    assert len(art.train_keys) == art.metrics["n_train"]
    # whatever the default router is (three models here: the pooled one), it is assessed too
    predicted, far = assess(art.router, ["Say hello", "SELECT * FROM t JOIN u ON t.a = u.b;"])
    assert far is not None and far.shape == (2,)
    np.testing.assert_allclose(
        predicted, art.router.predict(["Say hello", "SELECT * FROM t JOIN u ON t.a = u.b;"])
    )


def test_eval_transfer_holds_out_each_domain(tmp_path, capsys):
    recs = []
    for name, seed in (("alpha", 11), ("beta", 12)):
        for r in synth.records(60, seed=seed):
            recs.append({**r, "id": name + r["id"], "tags": {"benchmark": name}})
    data = synth.write_jsonl(tmp_path / "two.jsonl", recs)
    extra = synth.write_jsonl(tmp_path / "extra_file.jsonl", synth.records(40, seed=13))
    rc = main(
        [
            "eval",
            "--transfer",
            "--data",
            str(data),
            "--data",
            str(extra),
            "--json",
            "--strong",
            synth.STRONG,
            "--weak",
            synth.WEAK,
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    held = {d["domain"]: d for d in result["held_out"]}
    assert set(held) == {"alpha", "beta", "extra_file"}
    assert held["extra_file"]["n_test"] == 40 and held["extra_file"]["n_train"] == 120
    assert result["worst"]["apgr"] == min(d["apgr"] for d in held.values())
    assert all(d["apgr"] > 0.6 for d in held.values())  # the same signal in every domain
    assert result["static_embedding"] is None  # the default (classifier) features
    # the share of each held-out domain its fold's router found unfamiliar (same templates in
    # every domain, so a minority; the 100-prompt folds calibrate it roughly)
    assert all(0.0 <= d["unfamiliar_share"] < 0.5 for d in held.values())
    rc = main(["eval", "--transfer", "--data", str(data), "--data", str(extra)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "worst: APGR" in text
    assert "unfamiliar" in text.splitlines()[0]


def test_eval_transfer_of_an_artifact_trains_its_folds_on_its_features(files, tmp_path, capsys):
    _, train, test, _ = files
    out = tmp_path / "r"
    args = ["train", "--data", str(train), "--router", "classifier", "--out", str(out)]
    assert main([*args, "--static-embedding", "wordllama-l2-256"]) == 0
    capsys.readouterr()
    data = ["--data", str(train), "--data", str(test)]
    rc = main(["eval", "--transfer", "--router", str(out), *data, "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["static_embedding"] == "wordllama-l2-256"


def test_eval_without_router_needs_transfer(files, capsys):
    _, _, test, _ = files
    assert main(["eval", "--data", str(test)]) == 2
    assert "--router is required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("router", "flag", "expected"),
    [
        ("pooled", "default", "wordllama-l2-256"),
        ("pooled", "none", ""),
        ("classifier", "default", ""),
        ("classifier", "wordllama-l2-256", "wordllama-l2-256"),
    ],
)
def test_train_static_embedding_flag(files, tmp_path, router, flag, expected):
    _, train, _, _ = files
    out = tmp_path / "r"
    args = ["train", "--data", str(train), "--router", router, "--out", str(out)]
    assert main([*args, "--static-embedding", flag]) == 0
    art = load_artifact(out)
    assert art.meta["features"]["static_embedding"] == expected
    texts = ["Compute the integral of x^2.", "Say hi.", "Prove the theorem.", "", "\ud800"]
    assert np.isfinite(art.router.predict(texts)).all()


def test_train_refuses_an_unknown_static_embedding(files, tmp_path, capsys):
    _, train, _, _ = files
    with pytest.raises(SystemExit):
        main(
            [
                "train",
                "--data",
                str(train),
                "--out",
                str(tmp_path / "r"),
                "--static-embedding",
                "glove",
            ]
        )
    assert "invalid choice" in capsys.readouterr().err


def test_train_says_which_sources_unfamiliar_is_measured_against(tmp_path, capsys):
    recs = []
    for name, seed in (("alpha", 21), ("beta", 22)):
        for r in synth.records(220, seed=seed):
            recs.append({**r, "id": name + r["id"], "tags": {"benchmark": name}})
    data = synth.write_jsonl(tmp_path / "two.jsonl", recs)
    out = tmp_path / "r"
    rc = main(["train", "--data", str(data), "--out", str(out), "--router", "classifier"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["unfamiliar_sources"] == [
        {"source": "alpha", "rows": 220},
        {"source": "beta", "rows": 220},
    ]
    kept = load_artifact(out).meta["familiarity"]["sources"]
    assert [(s["source"], s["rows"]) for s in kept] == [("alpha", 220), ("beta", 220)]


def test_lone_surrogates_in_a_dataset_file_do_not_crash_train_score_or_eval(tmp_path, capsys):
    # Valid JSON may escape half of a surrogate pair ("\ud800"); json.loads then gives a str
    # that cannot be encoded as UTF-8. A user's file can hold that in any string.
    recs = synth.records(120, seed=31, with_mid=True)
    recs[0] = {
        **recs[0],
        "id": "odd\ud800id",
        "prompt": "Prove it \ud800 now",
        "tags": {"benchmark": "b\udfff"},
    }
    recs[1] = {**recs[1], "messages": [{"role": "user", "content": "half \udc00 pair"}]}
    recs[1].pop("prompt", None)
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))  # ASCII escapes: valid JSON
    out = tmp_path / "r"
    assert main(["train", "--data", str(path), "--out", str(out), "--holdout", "0.2"]) == 0
    scores = tmp_path / "s.jsonl"
    assert main(["score", "--router", str(out), "--data", str(path), "--out", str(scores)]) == 0
    lines = [json.loads(x) for x in scores.read_text().splitlines()]
    assert [x["id"] for x in lines] == [r["id"] for r in recs]  # ids come back as given
    assert main(["eval", "--router", str(out), "--data", str(path), "--all"]) == 0
    # a tag names a transfer domain, printed as text
    for r in recs[:40]:
        r["tags"] = {"benchmark": "dom\ud800"}
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["eval", "--transfer", "--data", str(path)]) == 0
    assert "dom\ufffd" in capsys.readouterr().out


def test_a_dataset_file_that_is_not_utf8_is_refused_in_one_line(tmp_path, capsys, files):
    _, train, _, _ = files
    path = tmp_path / "latin1.jsonl"
    good = train.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(good[:3]) + '{"id": "x", "prompt": "café"}\n'.encode("latin-1"))
    for argv in (
        ["train", "--data", str(path), "--out", str(tmp_path / "r")],
        ["eval", "--transfer", "--data", str(path)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{path}:4: not UTF-8" in err
        assert "Traceback" not in err


def test_a_dataset_file_with_a_utf8_byte_order_mark_is_read(tmp_path, capsys, files):
    _, train, _, _ = files
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + train.read_bytes())  # as some Windows editors save it
    assert main(["train", "--data", str(path), "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    "price",
    [
        {"input_per_mtok": -1.0, "output_per_mtok": 2.0},
        {"input_per_mtok": 1.0, "output_per_mtok": "nan"},
    ],
)
def test_a_price_table_with_a_negative_or_not_finite_price_is_refused(
    price, trained, files, tmp_path, capsys
):
    _, _, test, _ = files
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({synth.STRONG: price}))
    argv = ["calibrate", "--router", str(trained), "--data", str(test), "--prices", str(table)]
    assert main([*argv, "--budget-usd", "0.001", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"llmroute calibrate: bad price table {table}"), err
