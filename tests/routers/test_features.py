import os
import subprocess
import sys

import numpy as np
import pytest

from routers.features import (
    STRUCTURAL_NAMES,
    HashingFeaturizer,
    HashingParams,
    featurizer_from_spec,
    prompt_text,
    structural_features,
)

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url"}]},
]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "second"),
        ({"include_system": True}, "Be brief.\n\nsecond"),
        ({"include_history": True}, "first question\n\nfirst answer\n\nsecond"),
        (
            {"include_system": True, "include_history": True},
            "Be brief.\n\nfirst question\n\nfirst answer\n\nsecond",
        ),
    ],
)
def test_prompt_text_picks_the_turns_asked_for(kwargs, expected):
    assert prompt_text(CHAT, **kwargs) == expected


def test_prompt_text_without_a_user_message_is_empty():
    assert prompt_text([{"role": "system", "content": "x"}]) == ""
    assert prompt_text([]) == ""


def test_prompt_text_ignores_turns_after_the_last_user_message():
    msgs = [*CHAT, {"role": "assistant", "content": "trailing"}]
    assert prompt_text(msgs, include_history=True).endswith("second")


def test_shape_dtype_and_unit_blocks():
    f = HashingFeaturizer(HashingParams(word_dim=256, char_dim=512))
    x = f.transform(["Hello, world!", "", "déjà vu ∫ x dx", "a" * 20000])
    assert x.shape == (4, 256 + 512 + len(STRUCTURAL_NAMES))
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    norms = np.linalg.norm(x[:, :256], axis=1)
    np.testing.assert_allclose(norms[[0, 2, 3]], 1.0, rtol=1e-5)
    # An empty text has no n-grams but the separators' spaces: still finite, no crash.
    assert x[1, :256].sum() == 0.0


def test_a_row_does_not_depend_on_the_rest_of_the_batch():
    f = HashingFeaturizer(HashingParams(word_dim=512, char_dim=512))
    texts = ["alpha beta", "", "  spaced\n\nout  ", "gamma, delta; epsilon?", "x"]
    batch = f.transform(texts)
    for i, t in enumerate(texts):
        np.testing.assert_array_equal(batch[i], f.transform_one(t))
    np.testing.assert_array_equal(f.transform(texts[::-1])[::-1], batch)


def test_whitespace_layout_and_case_do_not_change_ngram_blocks():
    f = HashingFeaturizer(HashingParams(word_dim=512, char_dim=512, structural=False))
    a, b = f.transform(["Hello   World\n", "hello world"])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("embedding", ["", "wordllama-l2-256"])
def test_features_are_the_same_in_another_process_with_another_hash_seed(embedding):
    make = f"HashingFeaturizer(HashingParams(static_embedding={embedding!r}))"
    code = (
        "import sys, numpy as np\n"
        "from routers.features import HashingFeaturizer, HashingParams\n"
        f"x = {make}.transform(['What is 2+2?', 'Écris un poème'])\n"
        "a, b = float(np.abs(x).sum()), float((x * np.arange(x.shape[1])).sum())\n"
        "sys.stdout.write(repr(a) + ' ' + repr(b))\n"
    )
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        res = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        outs.add(res.stdout)
    f = HashingFeaturizer(HashingParams(static_embedding=embedding))
    x = f.transform(["What is 2+2?", "Écris un poème"])
    here = repr(float(np.abs(x).sum())) + " " + repr(float((x * np.arange(x.shape[1])).sum()))
    assert outs == {here}


def test_structural_features_by_hand():
    feats = dict(zip(STRUCTURAL_NAMES, structural_features("Ab 12?\n\nx = y"), strict=True))
    assert feats["log_chars"] == pytest.approx(np.log1p(13))
    assert feats["log_words"] == pytest.approx(np.log1p(5))
    assert feats["digit_frac"] == pytest.approx(2 / 13)
    assert feats["upper_frac"] == pytest.approx(1 / 13)
    assert feats["log_question_marks"] == pytest.approx(np.log1p(1))
    assert feats["log_lines"] == pytest.approx(np.log1p(2))
    assert feats["log_paragraphs"] == pytest.approx(np.log1p(1))


def test_spec_round_trip_and_bad_params():
    f = HashingFeaturizer(HashingParams(word_dim=64, char_dim=128, seed=3))
    g = featurizer_from_spec(f.spec())
    np.testing.assert_array_equal(f.transform(["abc def"]), g.transform(["abc def"]))
    with pytest.raises(ValueError, match="power of two"):
        HashingParams(word_dim=100)
    with pytest.raises(ValueError, match="unknown featurizer"):
        featurizer_from_spec({"kind": "bert"})
