"""The static word embedding (`routers.embedding`) and its block in the hashing features: read
from the installed `wordllama` wheel, nothing downloaded; unit rows that depend only on their
own text, by meaning; safe with hostile text and threads."""

import gc
import threading

import numpy as np
import pytest

from routers import embedding
from routers.embedding import StaticEmbedding, static_embedding
from routers.features import HashingFeaturizer, HashingParams, featurizer_from_spec

NAME = "wordllama-l2-256"
STEW = "How long should I simmer the stew with garlic and onions in the saucepan?"
BREAD = "Knead the dough, let the yeast rise, then bake the bread in a hot oven."
PROOF = "Prove that every symmetric matrix has real eigenvalues and orthogonal eigenvectors."


@pytest.fixture(scope="module")
def emb():
    return static_embedding(NAME)


def test_unit_rows_that_depend_only_on_their_own_text(emb):
    texts = [STEW, BREAD, PROOF, "", "   \n\t "]
    out = emb.embed(texts)
    assert out.shape == (5, 256) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out[:3], axis=1), 1.0, rtol=1e-5)
    assert not out[3:].any()  # no tokens: zeros
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(emb.embed([text])[0], out[i])
    fresh = StaticEmbedding(NAME)  # another instance, its own (empty) cache
    np.testing.assert_array_equal(fresh.embed(texts), out)


def test_the_same_topic_in_other_words_is_closer_than_another_topic(emb):
    stew, bread, proof = emb.embed([STEW, BREAD, PROOF])
    assert stew @ bread > stew @ proof + 0.1
    assert bread @ stew > bread @ proof + 0.1


def test_the_chunk_cache_starts_afresh_when_full_and_keeps_answers(emb, monkeypatch):
    texts = [f"word{i} other{i} {STEW}" for i in range(40)]
    expected = StaticEmbedding(NAME).embed(texts)
    small = StaticEmbedding(NAME)
    monkeypatch.setattr(embedding, "CACHE_CHUNKS", 20)
    got = small.embed(texts)
    np.testing.assert_array_equal(got, expected)
    assert len(small._chunks) <= 20 + len(texts[-1].split())


@pytest.mark.parametrize(
    "text",
    [
        "\x00\x00 nul \x00bytes",
        "🦙" * 500,
        "x" * 20_000,
        "\ud800 lone surrogate",
        "混合 text العربية ελληνικά",
        " ".join(str(i) for i in range(3_000)),
    ],
)
def test_hostile_text_gives_a_finite_unit_row(emb, text):
    row = emb.embed([text])[0]
    assert np.isfinite(row).all()
    assert abs(float(np.linalg.norm(row)) - 1.0) < 1e-5


def test_threads_share_one_embedding(emb):
    texts = [f"{STEW} {i} {PROOF[: i % 40]}" for i in range(200)]
    expected = StaticEmbedding(NAME).embed(texts)
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        results[k] = np.stack([emb.embed([t])[0] for t in texts[k::4]])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        np.testing.assert_array_equal(results[k], expected[k::4])


def test_unknown_embedding_is_refused():
    with pytest.raises(ValueError, match="unknown static embedding"):
        StaticEmbedding("glove-840b")
    with pytest.raises(ValueError, match="unknown static_embedding"):
        HashingParams(static_embedding="glove-840b")


def test_the_block_sits_between_the_chars_and_the_structural_features(emb):
    plain = HashingFeaturizer(HashingParams(word_dim=256, char_dim=512))
    joined = HashingFeaturizer(HashingParams(word_dim=256, char_dim=512, static_embedding=NAME))
    assert joined.dim == plain.dim + 256
    assert joined.embedding_columns == slice(768, 1024) and joined.sparse_dim == 1024
    assert plain.embedding_columns == slice(768, 768) and plain.sparse_dim == 768
    x, y = plain.transform([STEW, PROOF]), joined.transform([STEW, PROOF])
    np.testing.assert_array_equal(y[:, :768], x[:, :768])
    np.testing.assert_array_equal(y[:, 1024:], x[:, 768:])
    np.testing.assert_array_equal(y[:, 768:1024], emb.embed([STEW, PROOF]))
    # clipped like the hashed blocks: a long prompt is embedded from its head and tail
    long = STEW + " filler" * 3000 + " " + PROOF
    clip = joined.params.max_chars // 2
    np.testing.assert_array_equal(
        joined.transform([long])[0, 768:1024],
        emb.embed([long[:clip] + " " + long[-clip:]])[0],
    )


def test_spec_round_trips_and_old_specs_have_no_embedding():
    f = HashingFeaturizer(HashingParams(static_embedding=NAME))
    again = featurizer_from_spec(f.spec())
    assert again.params == f.params and again.dim == f.dim
    old = {k: v for k, v in HashingFeaturizer().spec().items() if k != "static_embedding"}
    assert featurizer_from_spec(old).params.static_embedding == ""


def test_a_full_chunk_cache_gives_the_garbage_collector_nothing_to_scan():
    # a worker keeps up to CACHE_CHUNKS entries for its life: as lists they were containers
    # every full collection walked (5 ms per 100,000 here); tuples of ints are left untracked
    fresh = StaticEmbedding(NAME)
    fresh.embed([" ".join(f"w{i}x{j}" for j in range(50)) for i in range(40)])
    gc.collect()
    assert len(fresh._chunks) == 2000
    assert not any(gc.is_tracked(ids) for ids in fresh._chunks.values())
