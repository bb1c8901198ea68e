"""`unfamiliar`: the distance of a prompt from the router's training prompts."""

import dataclasses

import numpy as np
import pytest

from routers import artifact
from routers.dataset import record_from_obj
from routers.familiarity import Familiarity, FamiliarityParams
from routers.features import HashingParams
from routers.learned import ClassifierParams, ClassifierRouter, assess
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
