"""The metrics table: every sample-quality metric once, with what it needs, how it reads and where it goes.

Scoring (:func:`archbench.evaluation.score.score_samples`), the result line ``python -m archbench.eval`` prints,
the study's ``results.csv`` columns and its ``summary.md`` all read :data:`METRICS`, so a new metric is one
:class:`Metric` entry here plus the function that computes it::

    def _feature_norm(scored: ScoringPass) -> dict[str, Any]:
        return {"feature_norm": float(np.linalg.norm(scored.stats.mu))}

    METRICS["feature_norm"] = Metric("feature_norm", "norm of the samples' mean feature", needs=("features",),
                                     lower_is_better=False, fmt=".3f", label="feature norm",
                                     column="feature_norm", compute=_feature_norm, heading="feat. norm")

``needs`` names entries of :data:`NEEDS` (the feature pass, reference statistics or rows, Inception's logits, a
classifier with the conditioning labels): a metric whose needs a pass does not meet is None, and the log says
why. ``column`` adds a ``results.csv`` column, ``heading`` a ``summary.md`` column.

The record keys (``eval.json``) and the column names are the ones archbench has always written: the Fréchet
distance is ``score`` in a record and ``fd`` in ``results.csv`` (plus ``fid`` when the features are Inception's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from archbench.evaluation.extractor import FeatureExtractor
from archbench.evaluation.fidelity import inception_score, isc_splits, kernel_inception_distance
from archbench.evaluation.precision_recall import precision_recall
from archbench.evaluation.stats import FeatureStats

log = logging.getLogger("archbench.eval")


@dataclass(frozen=True)
class ScoringPass:
    """What one pass of the feature network over the samples gives every metric's compute function."""

    stats: FeatureStats  # the samples' features: mean, covariance and the first ``pr_items`` rows
    reference: FeatureStats  # the real data's (``features`` is None for a mu/sigma-only reference batch)
    extractor: FeatureExtractor
    outputs: Mapping[str, torch.Tensor]  # the pass's other per-sample outputs (CPU): isc_logits, class_logits
    labels: torch.Tensor | None  # conditioning labels, only when the network classifies their classes
    k: int  # neighbours of the k-NN precision/recall
    pr_items: int  # most points per side for the k-NN metrics and KID


@dataclass(frozen=True)
class Need:
    """Something a metric cannot be computed without; ``met`` says whether a scoring pass has it."""

    name: str
    description: str
    met: Callable[[ScoringPass], bool]


def _has_reference_rows(scored: ScoringPass) -> bool:
    return scored.reference.features is not None and len(scored.reference.features) >= 2


NEEDS: dict[str, Need] = {
    "features": Need("features", "a feature network", lambda s: True),
    "reference_stats": Need("reference_stats", "reference statistics (mu, sigma)", lambda s: True),
    "reference_features": Need(
        "reference_features", "reference feature rows (this reference holds only mu/sigma)", _has_reference_rows
    ),
    "inception": Need(
        "inception", "Inception-v3's logits (features=inception)", lambda s: "isc_logits" in s.outputs
    ),
    "classifier": Need(
        "classifier",
        "a classifier of the samples' classes and their conditioning labels",
        lambda s: "class_logits" in s.outputs and s.labels is not None and s.labels.ndim == 1,
    ),
    "captions": Need(
        "captions", "captioned samples and a classifier of their parts (fashion_pairs with the fashion_mnist CNN)",
        lambda s: "quadrants_right" in s.outputs,
    ),
}


@dataclass(frozen=True)
class Metric:
    """One metric: what it is, what it needs, how it is shown and where it is stored.

    ``key`` is its field in an evaluation record (``eval.json``; default ``name``), ``spread`` the field of its
    +- (a standard deviation) and ``details`` the other fields its computation writes (the settings it used).
    ``column`` is its ``results.csv`` column (None: not in the table) and ``feature_columns`` extra columns
    holding the same value when it was computed on the named features (FD on Inception features is FID).
    ``heading`` puts its mean over seeds in ``summary.md`` under that heading. Metrics with the same ``compute``
    function are computed together, once (precision and recall).
    """

    name: str
    description: str
    needs: tuple[str, ...]
    lower_is_better: bool
    fmt: str  # format spec of a value in result lines, e.g. ".3f"
    label: str  # what result lines and summaries call it
    column: str | None
    compute: Callable[[ScoringPass], dict[str, Any]]
    key: str = ""
    spread: str | None = None
    details: tuple[str, ...] = ()
    heading: str | None = None
    table_fmt: str = ""  # format spec in summary.md (default ``fmt``)
    feature_columns: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        unknown = [n for n in self.needs if n not in NEEDS]
        if unknown:
            raise ValueError(f"metric {self.name!r} needs {unknown}; valid needs: {', '.join(NEEDS)}")
        if not self.key:
            object.__setattr__(self, "key", self.name)
        if not self.table_fmt:
            object.__setattr__(self, "table_fmt", self.fmt)

    @property
    def record_keys(self) -> tuple[str, ...]:
        """Every field this metric writes into an evaluation record."""
        return (self.key, *((self.spread,) if self.spread else ()), *self.details)

    def text(self, record: Mapping[str, Any]) -> str | None:
        """``label value`` (``+- spread``) for a result line; None when the record has no value."""
        value = record.get(self.key)
        if value is None:
            return None
        spread = record.get(self.spread) if self.spread else None
        return f"{self.label} {value:{self.fmt}}" + ("" if spread is None else f" +- {spread:{self.fmt}}")

    def csv_values(self, record: Mapping[str, Any]) -> dict[str, float | None]:
        """Its ``results.csv`` cells from an evaluation record (empty when it has no column)."""
        if self.column is None:
            return {}
        value = record.get(self.key)
        number = None if value is None else float(value)
        cells = {self.column: number}
        for features, column in self.feature_columns:
            cells[column] = number if record.get("feature_network") == features else None
        return cells


def _frechet(scored: ScoringPass) -> dict[str, Any]:
    return {"score": scored.stats.frechet_distance(scored.reference)}


def _precision_recall(scored: ScoringPass) -> dict[str, Any]:
    """On equal-size sets: the k-NN estimate is biased by set size, so both manifolds get the same count."""
    reference = scored.reference.features
    m = min(scored.stats.n, scored.pr_items, len(reference))
    if m <= scored.k:
        return {"precision": None, "recall": None, "pr_k": scored.k, "pr_items": 0}
    pr = precision_recall(reference[:m], scored.stats.features[:m], k=scored.k)
    return {"precision": pr.precision, "recall": pr.recall, "pr_k": scored.k, "pr_items": m}


def _inception_score(scored: ScoringPass) -> dict[str, Any]:
    logits = scored.outputs["isc_logits"]
    if len(logits) < 2:
        return {}
    mean, std = inception_score(logits)
    return {"inception_score": mean, "inception_score_std": std, "isc_splits": isc_splits(len(logits))}


def _kid(scored: ScoringPass) -> dict[str, Any]:
    if scored.stats.features is None or len(scored.stats.features) < 2:
        return {}
    kid, std, size = kernel_inception_distance(
        torch.from_numpy(scored.stats.features), torch.from_numpy(scored.reference.features)
    )
    return {"kid": kid, "kid_std": std, "kid_subset_size": size}


def _cond_accuracy(scored: ScoringPass) -> dict[str, Any]:
    predicted = scored.outputs["class_logits"].argmax(dim=1)
    wanted = scored.labels[: len(predicted)].to(torch.long).cpu()
    return {"cond_accuracy": int((predicted == wanted).sum()) / len(predicted)}


def _composition(scored: ScoringPass) -> dict[str, Any]:
    right = scored.outputs["quadrants_right"]
    return {"composition": float(right.all(dim=1).float().mean())}


# The order is the order of results.csv's metric columns and of the result line.
METRICS: dict[str, Metric] = {
    "fd": Metric(
        "fd", "Fréchet distance between sample and reference features (FID on Inception-v3 pool3)",
        needs=("features", "reference_stats"), lower_is_better=True, fmt=".4f", label="FD", column="fd",
        compute=_frechet, key="score", table_fmt=".2f", feature_columns=(("inception", "fid"),),
    ),
    "precision": Metric(
        "precision", "k-NN precision: the fraction of samples inside the real data's feature manifold",
        needs=("features", "reference_features"), lower_is_better=False, fmt=".3f", label="precision",
        column="precision", compute=_precision_recall, details=("pr_k", "pr_items"), heading="precision",
    ),
    "recall": Metric(
        "recall", "k-NN recall: the fraction of real data inside the samples' feature manifold",
        needs=("features", "reference_features"), lower_is_better=False, fmt=".3f", label="recall",
        column="recall", compute=_precision_recall, details=("pr_k", "pr_items"), heading="recall",
    ),
    "cond_accuracy": Metric(
        "cond_accuracy", "the fraction of samples a dataset classifier assigns to their conditioning class",
        needs=("classifier",), lower_is_better=False, fmt=".3f", label="cond. accuracy", column="cond_accuracy",
        compute=_cond_accuracy, heading="cond. acc.",
    ),
    "composition": Metric(
        "composition", "the fraction of captioned samples with every named garment in its place and nothing "
        "elsewhere (archbench.evaluation.composition)", needs=("captions",), lower_is_better=False, fmt=".3f",
        label="composition", column="composition", compute=_composition, heading="composition",
    ),
    "inception_score": Metric(
        "inception_score", "Inception Score: exp(E KL(p(y|x) || p(y))) over splits",
        needs=("inception",), lower_is_better=False, fmt=".3f", label="IS", column="inception_score",
        compute=_inception_score, spread="inception_score_std", details=("isc_splits",),
    ),
    "kid": Metric(
        "kid", "Kernel Inception Distance: unbiased MMD^2 with a cubic kernel over random subsets",
        needs=("inception", "reference_features"), lower_is_better=True, fmt=".5f", label="KID", column="kid",
        compute=_kid, spread="kid_std", details=("kid_subset_size",),
    ),
}
HEADLINE = "fd"  # the metric a score line leads with and a study ranks by


def headline() -> Metric:
    """The metric studies rank by and result lines lead with."""
    return METRICS[HEADLINE]


def metric_columns() -> tuple[str, ...]:
    """The ``results.csv`` columns of every metric in the table, in table order."""
    return tuple(col for m in METRICS.values() if m.column for col in (m.column, *(c for _, c in m.feature_columns)))


def column_metrics() -> dict[str, Metric]:
    """The metrics with a ``results.csv`` column, by name: what a study can select or rank by."""
    return {m.name: m for m in METRICS.values() if m.column}


def csv_values(record: Mapping[str, Any]) -> dict[str, float | None]:
    """Every metric column's cell of one evaluation record."""
    return {col: value for m in METRICS.values() for col, value in m.csv_values(record).items()}


def summary_metrics() -> list[Metric]:
    """The metrics summary.md shows beside the headline, in table order."""
    return [m for m in METRICS.values() if m.heading and m.name != HEADLINE]


def _groups() -> Iterator[list[Metric]]:
    """Metrics sharing a compute function, together, in table order."""
    seen: list[Callable[..., Any]] = []
    for metric in METRICS.values():
        if metric.compute not in seen:
            seen.append(metric.compute)
            yield [m for m in METRICS.values() if m.compute is metric.compute]


def compute_metrics(scored: ScoringPass) -> dict[str, Any]:
    """Every metric of the table whose needs ``scored`` meets; the fields of the others are None (logged why)."""
    out: dict[str, Any] = {}
    for group in _groups():
        keys = dict.fromkeys([*(m.key for m in group), *(key for m in group for key in m.record_keys)])
        missing = [NEEDS[n] for n in dict.fromkeys(n for m in group for n in m.needs) if not NEEDS[n].met(scored)]
        if missing:
            log.info("%s not computed: it needs %s; features=%s", ", ".join(m.label for m in group),
                     " and ".join(n.description for n in missing), scored.extractor.name)
            out.update(keys)
            continue
        values = group[0].compute(scored)
        out.update({key: values.get(key) for key in keys})
    return out


def result_line(record: Mapping[str, Any]) -> str:
    """The headline score and every other metric that was computed, on one line."""
    lead = headline()
    parts = [f"{record['num_samples']} samples"]
    parts += [text for m in METRICS.values() if m is not lead and (text := m.text(record)) is not None]
    name = record.get("score_name") or lead.label
    return f"{name} = {record[lead.key]:{lead.fmt}} ({', '.join(parts)})"
