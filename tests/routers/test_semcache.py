"""The semantic cache core: tenant isolation, TTL on an injected clock, size bounds, thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routers.semcache import (
    CacheParams,
    PromptVector,
    PromptVectorizer,
    SemanticCache,
    numbers_signature,
)

VEC = PromptVectorizer()

QUESTION = (
    "Which of the following best describes the function of the mitochondria in a eukaryotic "
    "cell?\nA. Protein synthesis\nB. Energy production\nC. Lipid storage\nD. Cell division\n"
    "Answer:"
)
# a different question with the same answer choices
OTHER_QUESTION = (
    "Which organelle is mainly responsible for breaking down waste inside an animal cell?\n"
    "A. Protein synthesis\nB. Energy production\nC. Lipid storage\nD. Cell division\nAnswer:"
)
NEAR_DUPLICATES = [
    QUESTION.upper(),
    QUESTION.replace(" ", "  ").replace("\n", " \n"),
    QUESTION.replace("best describes", "best explains"),
    QUESTION.replace("eukaryotic", "eukaryotik"),
    "Please answer: " + QUESTION,
]
CORPUS = [
    QUESTION,
    OTHER_QUESTION,
    "Using Fermat's theorem, find the remainder of 3^47 when it is divided by 23.",
    "Translate 'good morning' into French.",
    "Write a haiku about autumn leaves falling on a quiet pond.",
    "What is the boiling point of water at sea level in degrees Celsius?",
    "Summarise the causes of the First World War in three sentences.",
    "def add(a, b): return a + b  # what does this Python function return for (2, 3)?",
]


def _pv(text: str) -> PromptVector:
    return VEC.encode_one(text)


def _cache(**kw: float | int | bool) -> SemanticCache[str]:
    return SemanticCache(CacheParams(**kw), dim=VEC.dim)  # type: ignore[arg-type]


# ---------------------------------------------------------------- vectors


def test_vectors_are_unit_length_and_the_same_in_every_instance() -> None:
    a = PromptVectorizer().transform(CORPUS)
    b = PromptVectorizer().transform(list(reversed(CORPUS)))[::-1]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert not np.any(PromptVectorizer().transform([""]))


def test_numbers_signature_is_order_free_and_sees_every_number() -> None:
    assert numbers_signature("no digits here") == 0
    assert numbers_signature("3 then 47") == numbers_signature("47 then 3")
    assert numbers_signature("3^47 mod 23") != numbers_signature("3^47 mod 24")
    assert numbers_signature("0.25 mol") != numbers_signature("0.0025 mol")


# ---------------------------------------------------------------- thresholds


@pytest.mark.parametrize("edited", NEAR_DUPLICATES)
def test_near_duplicates_hit_at_the_default_threshold(edited: str) -> None:
    cache = _cache()
    for i, text in enumerate(CORPUS):
        cache.put("t", "p", str(i), _pv(text), text, now=0.0)
    hit = cache.lookup("t", "p", _pv(edited), now=1.0)
    assert hit is not None
    assert hit.value == QUESTION
    assert cache.params.similarity_threshold <= hit.similarity <= 1.0 + 1e-5


def test_a_different_question_with_the_same_choices_misses() -> None:
    cache = _cache()
    cache.put("t", "p", "q", _pv(QUESTION), QUESTION, now=0.0)
    assert cache.lookup("t", "p", _pv(OTHER_QUESTION), now=1.0) is None
    similarity = float(_pv(QUESTION).vector @ _pv(OTHER_QUESTION).vector)
    assert similarity < cache.params.similarity_threshold
    # a threshold below that similarity would serve it: the threshold is what decides
    low = _cache(similarity_threshold=similarity - 0.01)
    low.put("t", "p", "q", _pv(QUESTION), QUESTION, now=0.0)
    assert low.lookup("t", "p", _pv(OTHER_QUESTION), now=1.0) is not None


def test_threshold_one_serves_only_texts_that_normalise_the_same() -> None:
    cache = _cache(similarity_threshold=1.0 - 1e-6)
    cache.put("t", "p", "q", _pv(QUESTION), QUESTION, now=0.0)
    assert cache.lookup("t", "p", _pv(QUESTION.upper()), now=1.0) is not None
    assert cache.lookup("t", "p", _pv(NEAR_DUPLICATES[2]), now=1.0) is None


def test_changed_numbers_miss_unless_numbers_need_not_match() -> None:
    asked = CORPUS[2]
    changed = asked.replace("23", "29")
    strict = _cache()
    strict.put("t", "p", "q", _pv(asked), asked, now=0.0)
    assert strict.lookup("t", "p", _pv(changed), now=1.0) is None
    loose = _cache(match_numbers=False)
    loose.put("t", "p", "q", _pv(asked), asked, now=0.0)
    assert loose.lookup("t", "p", _pv(changed), now=1.0) is not None


def test_prefilter_finds_what_the_exhaustive_search_finds() -> None:
    fast, full = _cache(), _cache(prefilter_margin=2.0)
    for i, text in enumerate(CORPUS):
        for cache in (fast, full):
            cache.put("t", "p", str(i), _pv(text), text, now=0.0)
    for text in [*NEAR_DUPLICATES, *CORPUS, "an unrelated question about rivers"]:
        a, b = fast.lookup("t", "p", _pv(text), 1.0), full.lookup("t", "p", _pv(text), 1.0)
        assert (a and a.value) == (b and b.value)


# ---------------------------------------------------------------- isolation (property)

TENANTS = ["acme", "globex", "initech"]
PARAMS = ["p0", "p1"]
TEXTS = [*CORPUS, *NEAR_DUPLICATES]

op = st.one_of(
    st.tuples(
        st.just("put"),
        st.sampled_from(TENANTS),
        st.sampled_from(PARAMS),
        st.integers(0, len(TEXTS) - 1),
    ),
    st.tuples(
        st.just("remove"),
        st.sampled_from(TENANTS),
        st.sampled_from(PARAMS),
        st.integers(0, len(TEXTS) - 1),
    ),
    st.tuples(
        st.just("lookup"),
        st.sampled_from(TENANTS),
        st.sampled_from(PARAMS),
        st.integers(0, len(TEXTS) - 1),
    ),
)
VECTORS = [_pv(t) for t in TEXTS]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=60), st.integers(2, 6))
def test_a_tenant_never_sees_another_tenants_entry(
    ops: list[tuple[str, str, str, int]], per_tenant: int
) -> None:
    cache: SemanticCache[tuple[str, str, int]] = SemanticCache(
        CacheParams(max_entries=10, max_entries_per_tenant=per_tenant), dim=VEC.dim
    )
    for kind, tenant, params_key, i in ops:
        if kind == "put":
            cache.put(tenant, params_key, str(i), VECTORS[i], (tenant, params_key, i), now=0.0)
        elif kind == "remove":
            cache.remove(tenant, params_key, str(i))
        else:
            hit = cache.lookup(tenant, params_key, VECTORS[i], now=1.0)
            if hit is not None:
                assert hit.value[:2] == (tenant, params_key)
                assert hit.prompt_key == str(hit.value[2])
        assert len(cache) <= 10
        for t in TENANTS:
            assert cache.tenant_size(t) <= per_tenant
    # whatever is still cached is found by its own text, under its own tenant only
    for tenant in TENANTS:
        for params_key in PARAMS:
            for i, vector in enumerate(VECTORS):
                if (tenant, params_key, str(i)) in cache._by_key:
                    hit = cache.lookup(tenant, params_key, vector, now=1.0)
                    assert hit is not None and hit.value[:2] == (tenant, params_key)


def test_same_text_under_another_tenant_or_params_misses() -> None:
    cache = _cache()
    cache.put("acme", "p0", "q", _pv(QUESTION), "acme's answer", now=0.0)
    assert cache.lookup("globex", "p0", _pv(QUESTION), now=1.0) is None
    assert cache.lookup("acme", "p1", _pv(QUESTION), now=1.0) is None
    hit = cache.lookup("acme", "p0", _pv(QUESTION), now=1.0)
    assert hit is not None and hit.value == "acme's answer"


# ---------------------------------------------------------------- TTL


def test_entries_expire_on_the_injected_clock() -> None:
    cache = _cache(ttl_s=10.0)
    cache.put("t", "p", "q", _pv(QUESTION), "a", now=100.0)
    assert cache.lookup("t", "p", _pv(QUESTION), now=109.9) is not None
    assert cache.lookup("t", "p", _pv(QUESTION), now=110.0) is None
    assert len(cache) == 1  # dropped lazily ...
    assert cache.purge(110.0) == 1  # ... as time passes
    assert len(cache) == 0 and cache.partitions() == 0
    assert cache.stats.expired == 1


def test_explicit_expiry_and_already_expired_puts() -> None:
    cache = _cache(ttl_s=10.0)
    assert not cache.put("t", "p", "old", _pv(QUESTION), "a", now=50.0, expires_at=50.0)
    assert cache.stats.rejected_expired == 1 and len(cache) == 0
    assert cache.put("t", "p", "q", _pv(QUESTION), "a", now=50.0, expires_at=1_000.0)
    assert cache.lookup("t", "p", _pv(QUESTION), now=999.0) is not None


def test_a_replaced_entry_keeps_its_new_expiry() -> None:
    cache = _cache(ttl_s=10.0)
    cache.put("t", "p", "q", _pv(QUESTION), "first", now=0.0)
    cache.put("t", "p", "q", _pv(QUESTION), "second", now=8.0)
    assert len(cache) == 1 and cache.stats.replaced == 1
    cache.purge(12.0)  # the first expiry passed; the entry was renewed at 8
    hit = cache.lookup("t", "p", _pv(QUESTION), now=12.0)
    assert hit is not None and hit.value == "second"


# ---------------------------------------------------------------- size bounds


def test_per_tenant_bound_evicts_that_tenants_least_recently_used() -> None:
    cache = _cache(max_entries_per_tenant=3, max_entries=100)
    cache.put("other", "p", "x", _pv(CORPUS[3]), "other", now=0.0)
    for i in range(3):
        cache.put("t", "p", str(i), _pv(CORPUS[i + 4]), str(i), now=float(i))
    assert cache.lookup("t", "p", _pv(CORPUS[4]), now=5.0) is not None  # "0" is now recent
    cache.put("t", "p", "3", _pv(CORPUS[7]), "3", now=6.0)
    assert cache.tenant_size("t") == 3
    assert cache.lookup("t", "p", _pv(CORPUS[5]), now=7.0) is None  # "1" was evicted
    assert cache.lookup("t", "p", _pv(CORPUS[4]), now=7.0) is not None
    assert cache.lookup("other", "p", _pv(CORPUS[3]), now=7.0) is not None
    assert cache.stats.evicted == 1


def test_total_bound_evicts_the_least_recently_used_of_all() -> None:
    cache = _cache(max_entries_per_tenant=100, max_entries=4)
    for i, text in enumerate(CORPUS[2:6]):
        cache.put(f"t{i}", "p", "q", _pv(text), text, now=0.0)
    cache.lookup("t0", "p", _pv(CORPUS[2]), now=1.0)
    cache.put("t9", "p", "q", _pv(CORPUS[6]), CORPUS[6], now=2.0)
    assert len(cache) == 4
    assert cache.lookup("t1", "p", _pv(CORPUS[3]), now=3.0) is None
    assert cache.lookup("t0", "p", _pv(CORPUS[2]), now=3.0) is not None


def test_many_puts_and_removes_keep_rows_and_entries_in_step() -> None:
    cache: SemanticCache[int] = SemanticCache(
        CacheParams(max_entries=50, max_entries_per_tenant=50), dim=VEC.dim
    )
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((300, VEC.dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    for i in range(300):
        cache.put("t", "p", str(i), PromptVector(rows[i], 0), i, now=float(i))
        if i % 3 == 0:
            cache.remove("t", "p", str(i - 1))
    assert len(cache) == 50
    for key, entry_id in cache._by_key.items():
        i = int(key[2])
        hit = cache.lookup("t", "p", PromptVector(rows[i], 0), now=1_000.0)
        assert hit is not None and hit.value == i, entry_id


def test_bad_parameters_are_rejected() -> None:
    for kw in (
        {"similarity_threshold": 0.0},
        {"ttl_s": 0.0},
        {"max_entries": 0},
        {"prefilter_margin": -0.1},
    ):
        with pytest.raises(ValueError):
            CacheParams(**kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coarse_dim"):
        SemanticCache(CacheParams(coarse_dim=200), dim=128)
    with pytest.raises(ValueError, match="shape"):
        _cache().put("t", "p", "q", PromptVector(np.ones(3, np.float32), 0), "x", now=0.0)
