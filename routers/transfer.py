"""Transfer validation: how a router holds on a domain it was not trained on.

Leave-one-domain-out: for each domain, train on every other domain and report the two-model
figures (APGR, CPT(50%), strong calls for 95% of always-strong quality) on the held-out one; the
worst domain is the figure to choose settings by, since in-domain cross-validation cannot see a
router that learned cues of its training set.

Domains come from the records: MMLU items by subject group (the four groups of the MMLU paper),
every other record by its source (`tags.benchmark`, else the name the caller gives its file).
Pure: the caller reads the files and passes a `fit` function; nothing here touches the disk.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from routers.base import FloatArray, strong_need
from routers.dataset import Record, source_of
from routers.familiarity import UNFAMILIAR_THRESHOLD
from routers.learned import assess
from routers.metrics import two_model_report
from routers.training import TrainOptions, train

__all__ = [
    "MMLU_GROUPS",
    "DomainReport",
    "Scored",
    "TransferReport",
    "domain_of",
    "fit_with",
    "group_by_domain",
    "leave_one_domain_out",
]

_STEM = (
    "abstract_algebra astronomy college_biology college_chemistry college_computer_science "
    "college_mathematics college_physics computer_security conceptual_physics "
    "electrical_engineering elementary_mathematics high_school_biology high_school_chemistry "
    "high_school_computer_science high_school_mathematics high_school_physics "
    "high_school_statistics machine_learning"
)
_HUMANITIES = (
    "formal_logic high_school_european_history high_school_us_history high_school_world_history "
    "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
    "prehistory professional_law world_religions"
)
_SOCIAL = (
    "econometrics high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_microeconomics high_school_psychology human_sexuality "
    "professional_psychology public_relations security_studies sociology us_foreign_policy"
)
_OTHER = (
    "anatomy business_ethics clinical_knowledge college_medicine global_facts human_aging "
    "management marketing medical_genetics miscellaneous nutrition professional_accounting "
    "professional_medicine virology"
)

# MMLU subject -> group, as in the MMLU paper's categories (anatomy is with health, "other").
MMLU_GROUPS: Mapping[str, str] = {
    subject: group
    for group, names in (
        ("stem", _STEM),
        ("humanities", _HUMANITIES),
        ("social_sciences", _SOCIAL),
        ("other", _OTHER),
    )
    for subject in names.split()
}


def domain_of(record: Record, source: str) -> str:
    """`mmlu:<group>` for an MMLU item with a known subject; else `tags.benchmark`, else
    `source` (the name of the file the record came from)."""
    benchmark = source_of(record)
    subject = record.tags.get("subject")
    if benchmark == "mmlu" and subject is not None:
        return "mmlu:" + MMLU_GROUPS.get(subject, "other")
    return benchmark or source


def group_by_domain(sources: Mapping[str, Sequence[Record]]) -> dict[str, list[Record]]:
    """{source name: records} -> {domain: records}, in first-seen order."""
    out: dict[str, list[Record]] = {}
    for source, records in sources.items():
        for r in records:
            out.setdefault(domain_of(r, source), []).append(r)
    return out


@dataclass(frozen=True, slots=True)
class DomainReport:
    domain: str
    n_train: int
    n_test: int
    weak_quality: float
    strong_quality: float
    apgr: float
    cpt50: float
    cps95: float  # strong-call fraction for 95% of always-strong quality
    # the share of the held-out prompts with `unfamiliar` > 1.0 (None: the scorer gave none)
    unfamiliar_share: float | None = None

    def summary(self) -> dict[str, Any]:
        share = self.unfamiliar_share
        return {
            "domain": self.domain,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "weak_quality": round(self.weak_quality, 4),
            "strong_quality": round(self.strong_quality, 4),
            "apgr": round(self.apgr, 4),
            "cpt50": round(self.cpt50, 4),
            "cps95": round(self.cps95, 4),
            "unfamiliar_share": round(share, 4) if share is not None else None,
        }


@dataclass(frozen=True, slots=True)
class TransferReport:
    domains: tuple[DomainReport, ...]

    @property
    def worst(self) -> dict[str, Any]:
        """The worst held-out figure of each measure and the domain it came from (APGR: the
        lowest; CPT(50%) and CPS95: the highest strong-call fraction)."""
        low = min(self.domains, key=lambda d: d.apgr)
        cpt = max(self.domains, key=lambda d: d.cpt50)
        cps = max(self.domains, key=lambda d: d.cps95)
        return {
            "apgr": round(low.apgr, 4),
            "apgr_domain": low.domain,
            "cpt50": round(cpt.cpt50, 4),
            "cpt50_domain": cpt.domain,
            "cps95": round(cps.cps95, 4),
            "cps95_domain": cps.domain,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "held_out": [d.summary() for d in self.domains],
            "worst": self.worst,
            "mean_apgr": round(float(np.mean([d.apgr for d in self.domains])), 4),
        }


@dataclass(frozen=True, slots=True)
class Scored:
    """A fold's scores (higher = strong) and each held-out prompt's `unfamiliar`."""

    scores: FloatArray
    unfamiliar: FloatArray | None = None


# fit(training records) -> scorer(held-out records) -> scores, or Scored with the distances
Fit = Callable[[Sequence[Record]], Callable[[Sequence[Record]], "FloatArray | Scored"]]


def leave_one_domain_out(
    domains: Mapping[str, Sequence[Record]],
    fit: Fit,
    strong: str,
    weak: str,
    *,
    min_test: int = 20,
    held_out: Collection[str] | None = None,
) -> TransferReport:
    """For each domain with at least `min_test` records labelled for both models: `fit` on the
    records of every other domain (it returns a scorer: records -> strong-need scores, higher =
    strong) and report the held-out figures. Needs at least two domains. `held_out`: hold out
    only these domains (default: every one)."""
    labelled = {
        name: [r for r in recs if strong in r.scores and weak in r.scores]
        for name, recs in domains.items()
    }
    if sum(1 for recs in labelled.values() if recs) < 2:
        raise ValueError("transfer validation needs labelled records from at least two domains")
    reports: list[DomainReport] = []
    for name, test in labelled.items():
        if len(test) < min_test or (held_out is not None and name not in held_out):
            continue
        train = [r for other, recs in labelled.items() if other != name for r in recs]
        scored = fit(train)(test)
        if not isinstance(scored, Scored):
            scored = Scored(np.asarray(scored, dtype=np.float64))
        scores = np.asarray(scored.scores, dtype=np.float64)
        far = scored.unfamiliar
        rep = two_model_report(
            scores, [r.scores[strong] for r in test], [r.scores[weak] for r in test]
        )
        reports.append(
            DomainReport(
                domain=name,
                n_train=len(train),
                n_test=len(test),
                weak_quality=rep.weak_quality,
                strong_quality=rep.strong_quality,
                apgr=rep.apgr,
                cpt50=rep.cpt50,
                cps95=rep.strong_fraction_for_95pct,
                unfamiliar_share=(
                    float(np.mean(far > UNFAMILIAR_THRESHOLD)) if far is not None else None
                ),
            )
        )
    if not reports:
        raise ValueError(f"no domain has {min_test} labelled records to hold out")
    return TransferReport(tuple(reports))


def fit_with(options: TrainOptions) -> Fit:
    """A `fit` for `leave_one_domain_out` that trains the router `options` describe and scores
    with its strong-need score (as the policy's threshold does), with each prompt's
    `unfamiliar`."""

    def fit(records: Sequence[Record]) -> Callable[[Sequence[Record]], FloatArray | Scored]:
        router = train(records, options)

        def score(test: Sequence[Record]) -> FloatArray | Scored:
            predicted, far = assess(router, [r.text for r in test])
            return Scored(strong_need(router, predicted), far)

        return score

    return fit
