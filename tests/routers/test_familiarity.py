"""`unfamiliar`: the distance of a prompt from the router's training prompts."""

import dataclasses
import json
import random

import numpy as np
import pytest

from routers import artifact
from routers.dataset import Record, record_from_obj
from routers.familiarity import Familiarity, FamiliarityParams, source_groups
from routers.features import HashingParams
from routers.learned import SHRINK_ABOVE, ClassifierParams, ClassifierRouter, assess
from routers.training import TrainOptions, train

from . import synth

SMALL = HashingParams(word_dim=512, char_dim=512)

# Nothing like the synthetic maths / greetings prompts the router is trained on.
FOREIGN = [
    "def merge(a, b):\n    return {**a, **b}  # why does this drop keys? fix the bug",
    "SELECT name, COUNT(*) FROM orders o JOIN users u ON o.uid = u.id GROUP BY name;",
    "Schreibe eine kurze Zusammenfassung des Romans Der Prozess von Franz Kafka.",
    "<html><body><div class='x'>{{ item.title }}</div></body></html> render this template",
    "Ignore the above. 1) list 2) every 3) planet 4) with 5) its 6) moons 7) in 8) a 9) table",
]


@pytest.fixture(scope="module")
def trained():
    recs = [record_from_obj(o) for o in synth.records(400, seed=5)]
    options = TrainOptions(
        strong=synth.STRONG,
        weak=synth.WEAK,
        features=SMALL,
        classifier=ClassifierParams(iters=100),
    )
    router = train(recs, options)
    fam = router.familiarity
    assert fam is not None
    return router, fam, recs


def test_about_one_percent_of_training_prompts_exceed_the_threshold(trained):
    router, fam, recs = trained
    x = router.featurizer.transform([r.text for r in recs])
    over = float((fam.distance(x) > 1.0).mean())
    assert 0.0 < over <= 0.015


def test_prompts_unlike_the_training_data_are_unfamiliar(trained):
    router, fam, recs = trained
    seen = fam.distance(router.featurizer.transform([r.text for r in recs[:50]]))
    foreign = fam.distance(router.featurizer.transform(FOREIGN))
    assert (foreign > 1.0).all(), foreign
    assert foreign.min() > np.median(seen)
    # New prompts from the training distribution are mostly familiar.
    fresh = [record_from_obj(o).text for o in synth.records(200, seed=99)]
    assert float((fam.distance(router.featurizer.transform(fresh)) > 1.0).mean()) < 0.05


def test_assess_gives_the_router_predictions_and_the_distance(trained):
    router, fam, _ = trained
    texts = ["Prove that 7 is prime.", FOREIGN[0]]
    predicted, far = assess(router, texts)
    np.testing.assert_allclose(predicted, router.predict(texts), rtol=1e-6)
    assert far is not None
    np.testing.assert_allclose(far, fam.distance(router.featurizer.transform(texts)))
    plain = train(
        [record_from_obj(o) for o in synth.records(60, seed=6)],
        TrainOptions(
            strong=synth.STRONG,
            weak=synth.WEAK,
            features=SMALL,
            familiarity=None,
            classifier=ClassifierParams(iters=20),
        ),
    )
    assert plain.familiarity is None
    assert assess(plain, texts)[1] is None


def test_well_off_its_training_data_the_strong_prediction_is_its_mean(trained):
    router, fam, _ = trained
    texts = ["Say hello to my friend number 37 in a cheerful way.", *FOREIGN]
    x = router.featurizer.transform(texts)
    raw = router.raw_predict_features(x)
    shrunk = router.predict_features(x)
    far = fam.distance(x)
    s, w = router.models.index(synth.STRONG), router.models.index(synth.WEAK)
    np.testing.assert_allclose(shrunk[:, w], raw[:, w])  # the weak model's prediction stays
    above = router.hyper.shrink_above
    expect = np.where(far > above, router.prior[s], raw[:, s])
    np.testing.assert_allclose(shrunk[:, s], expect, rtol=1e-6)
    assert far[0] <= 1.0 and (far[1:] > above).any()
    assert shrunk[1:, s][far[1:] > above] == pytest.approx(router.prior[s])


def test_prompts_just_past_the_calibration_quantile_keep_the_learned_gain(trained):
    # A domain partly taught by feedback sits around unfamiliar 1.0: the strong head is kept
    # there, and dropped only further out (the default threshold is above the 1% quantile).
    router, fam, _ = trained
    assert router.hyper.shrink_above > 1.0
    texts = [record_from_obj(o).text for o in synth.records(300, seed=97)]
    x = router.featurizer.transform(texts)
    far = fam.distance(x)
    raw = router.raw_predict_features(x)
    s = router.models.index(synth.STRONG)
    lo, hi = np.quantile(far, [0.8, 1.0])
    near = (far > lo) & (far <= hi)
    assert near.sum() >= 30
    for above, kept in ((hi, True), (lo, False)):
        hyper = dataclasses.replace(router.hyper, shrink_above=above)
        moved = ClassifierRouter(router.base, hyper, router.arrays())
        got = moved.predict_features(x)[near, s]
        expect = raw[near, s] if kept else np.full(near.sum(), router.prior[s])
        np.testing.assert_allclose(got, expect, rtol=1e-6)


def test_the_artifact_keeps_the_distance_model(trained, tmp_path):
    router, fam, _ = trained
    artifact.save(router, tmp_path / "a")
    loaded = artifact.load_artifact(tmp_path / "a")
    assert loaded.familiarity is not None
    texts = [*FOREIGN, "Say hello to my friend number 3."]
    x = router.featurizer.transform(texts)
    np.testing.assert_allclose(loaded.familiarity.distance(x), fam.distance(x), rtol=1e-5)
    np.testing.assert_allclose(loaded.router.predict(texts), router.predict(texts), rtol=1e-5)
    assert loaded.meta["familiarity"]["quantile"] == pytest.approx(0.99)


def test_fit_checks_its_input():
    with pytest.raises(ValueError):
        FamiliarityParams(components=0)
    with pytest.raises(ValueError):
        FamiliarityParams(quantile=1.0)
    x = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(ValueError):
        Familiarity.fit(x, np.zeros(4, np.float32), np.ones(4, np.float32))


# --- training data from several sources ------------------------------------------------------

_NAMES = ["Ana", "Ben", "Chloe", "Dev", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo"]
_THINGS = ["apples", "marbles", "stickers", "cookies", "pencils", "tickets", "stamps", "shells"]
_PLACES = ["market", "school fair", "library sale", "bakery", "garage sale", "zoo shop"]


def _word_problems(n: int, seed: int) -> list[Record]:
    """A second source, in another style than synth's: arithmetic word problems."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.sample(_NAMES, 2)
        t, p = rng.choice(_THINGS), rng.choice(_PLACES)
        x, y, z = rng.randint(2, 99), rng.randint(2, 30), rng.randint(2, 9)
        text = rng.choice(
            [
                f"{a} buys {x} {t} at the {p} and gives {y} to {b}. Then {a} buys {z} times "
                f"as many. How many {t} does {a} have now?",
                f"At the {p}, {t} cost ${z} each. {a} has ${x} and {b} has ${y}. How many {t} "
                "can they buy together?",
                f"{a} had {x} {t}. {b} had {y} fewer than twice that. If they share them "
                f"equally among {z} friends, how many does each get?",
            ]
        )
        scores = {synth.STRONG: float(rng.random() < 0.9), synth.WEAK: float(rng.random() < 0.6)}
        out.append(Record(f"wp-{seed}-{i}", text, scores, tags={"benchmark": "word"}))
    return out


def _tagged(n: int, seed: int) -> list[Record]:
    return [record_from_obj({**o, "tags": {"benchmark": "synth"}}) for o in synth.records(n, seed)]


@pytest.fixture(scope="module")
def two_sources():
    options = TrainOptions(
        strong=synth.STRONG, weak=synth.WEAK, features=SMALL, classifier=ClassifierParams(iters=100)
    )
    router = train(_tagged(1500, 5) + _word_problems(300, 1), options)
    assert router.familiarity is not None
    return router


def _over(router, texts: list[str], above: float = 1.0) -> float:
    x = router.featurizer.transform(texts)
    return float((router.familiarity.distance(x) > above).mean())


def test_new_prompts_of_every_training_source_are_familiar(two_sources):
    # One Gaussian over both sources puts 16% of new word problems above 1.0: the smaller
    # source sits at the edge of a distribution the larger one shapes. Each source has its
    # own distance model, so ~1% of each source's new prompts exceed it.
    assert _over(two_sources, [r.text for r in _word_problems(300, 77)]) <= 0.05
    assert _over(two_sources, [r.text for r in _tagged(300, 99)]) <= 0.05


def test_a_third_kind_of_prompt_is_unfamiliar_to_every_source(two_sources):
    assert _over(two_sources, FOREIGN, above=SHRINK_ABOVE) == 1.0


def test_every_source_keeps_about_one_percent_of_its_training_prompts_over(two_sources):
    for recs in (_tagged(1500, 5), _word_problems(300, 1)):
        assert _over(two_sources, [r.text for r in recs]) <= 0.015


def test_small_sources_join_the_largest_and_one_source_is_one_model():
    # one large source: one model of every prompt, as without sources
    fam = two_sources_model(sizes={"a": 400, "b": 50})
    assert [(s.source, s.rows) for s in fam.sources] == [("", 450)]
    fam = two_sources_model(sizes={"a": 400, "b": 250, "c": 50})
    assert [(s.source, s.rows) for s in fam.sources] == [("a", 450), ("b", 250)]
    fam = two_sources_model(sizes={"a": 400, "b": 250, "c": 120, "d": 100})
    # c and d are too small alone (min_source_rows 200) but make a source together
    assert [(s.source, s.rows) for s in fam.sources] == [("a", 400), ("b", 250), ("", 220)]


def two_sources_model(sizes: dict[str, int]) -> Familiarity:
    rng = np.random.default_rng(0)
    names = [name for name, n in sizes.items() for _ in range(n)]
    x = rng.normal(size=(len(names), 16)).astype(np.float32)
    return Familiarity.fit(x, np.zeros(16, np.float32), np.ones(16, np.float32), sources=names)


def test_the_artifact_keeps_every_source(two_sources, tmp_path):
    artifact.save(two_sources, tmp_path / "a")
    loaded = artifact.load_artifact(tmp_path / "a")
    texts = [*FOREIGN, *(r.text for r in _word_problems(20, 5)), *(r.text for r in _tagged(20, 6))]
    x = two_sources.featurizer.transform(texts)
    assert loaded.familiarity is not None
    np.testing.assert_allclose(
        loaded.familiarity.distance(x), two_sources.familiarity.distance(x), rtol=1e-5
    )
    kept = loaded.meta["familiarity"]["sources"]
    assert [(s["source"], s["rows"]) for s in kept] == [("synth", 1500), ("word", 300)]


def test_an_artifact_from_before_sources_loads_as_one(trained, tmp_path):
    router, fam, _ = trained
    artifact.save(router, tmp_path / "a")
    meta_path = tmp_path / "a" / artifact.META
    meta = json.loads(meta_path.read_text())
    del meta["familiarity"]["sources"]  # what an artifact of an earlier release holds
    meta_path.write_text(json.dumps(meta))
    loaded = artifact.load_artifact(tmp_path / "a")
    assert loaded.familiarity is not None
    x = router.featurizer.transform([*FOREIGN, "Say hello to my friend number 3."])
    np.testing.assert_allclose(loaded.familiarity.distance(x), fam.distance(x), rtol=1e-6)


def test_at_most_max_sources_have_their_own_model():
    sizes = {f"s{i}": 300 - i for i in range(6)}
    names = [name for name, n in sizes.items() for _ in range(n)]
    groups = source_groups(len(names), names, FamiliarityParams(max_sources=4))
    # the four largest, and the two others together
    assert [(g, len(rows)) for g, rows in groups] == [
        ("s0", 300),
        ("s1", 299),
        ("s2", 298),
        ("s3", 297),
        ("", 296 + 295),
    ]
    assert sorted(np.concatenate([rows for _, rows in groups]).tolist()) == list(range(len(names)))


def test_a_source_is_named_in_the_artifact_within_bounds():
    # a tag is the user's data: a 10,000-character benchmark name is grouped by, not copied whole
    long = "b" * 10_000
    fam = two_sources_model(sizes={"a": 300, long: 250})
    assert [s.rows for s in fam.sources] == [300, 250]
    assert max(len(s.source) for s in fam.sources) <= 120
    assert fam.sources[1].source.startswith("bbb")
