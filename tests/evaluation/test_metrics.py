"""The metrics table drives scoring and the result line: a metric added to it is computed, stored and printed;
one whose needs the pass does not meet is None; every entry is well-formed."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from archbench.evaluation.metrics import (
    HEADLINE,
    METRICS,
    NEEDS,
    Metric,
    ScoringPass,
    compute_metrics,
    csv_values,
    metric_columns,
    result_line,
)
from archbench.evaluation.score import score_samples
from archbench.evaluation.stats import FeatureStats


class _MeanPool:
    """A real (trivial) feature network: per-image mean and standard deviation."""

    name, dim, checksum, score_name = "meanpool", 2, "none", "FD-meanpool"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([images.mean((1, 2, 3)), images.std((1, 2, 3))], 1)


def _images(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 6, 6, generator=g) * 2 - 1) * scale


def _reference(n: int = 64) -> FeatureStats:
    return FeatureStats.from_features(_MeanPool()(_images(n, 1)), keep=n)


def _mean_feature(scored: ScoringPass) -> dict[str, Any]:
    return {"mean_feature": float(scored.stats.mu.mean()), "mean_feature_items": scored.stats.n}


def test_every_entry_is_well_formed():
    assert HEADLINE in METRICS and METRICS[HEADLINE].key == "score"  # eval.json keeps its old field name
    for name, metric in METRICS.items():
        assert metric.name == name and metric.description and metric.label
        assert set(metric.needs) <= set(NEEDS)
        assert f"{1.5:{metric.fmt}}" and f"{1.5:{metric.table_fmt}}"  # valid format specs
    assert len(set(metric_columns())) == len(metric_columns())  # no two metrics share a column
    with pytest.raises(ValueError, match="valid needs"):
        Metric("x", "x", needs=("telepathy",), lower_is_better=True, fmt=".3f", label="x", column=None,
               compute=_mean_feature)


def test_a_metric_added_to_the_table_is_computed_and_printed(monkeypatch):
    samples, reference = _images(40, 2, scale=0.5), _reference()
    before = score_samples(samples, _MeanPool(), reference, batch_size=16)
    assert "mean_feature" not in before
    monkeypatch.setitem(METRICS, "mean_feature", Metric(
        "mean_feature", "mean of the sample features", needs=("features",), lower_is_better=False, fmt=".4f",
        label="mean feature", column="mean_feature", compute=_mean_feature, details=("mean_feature_items",)))
    after = score_samples(samples, _MeanPool(), reference, batch_size=16)
    expected = float(_MeanPool()(samples).double().mean())
    assert after["mean_feature"] == pytest.approx(expected, rel=1e-9) and after["mean_feature_items"] == 40
    assert {k: v for k, v in after.items() if not k.startswith("mean_feature")} == before  # nothing else moved
    assert f"mean feature {after['mean_feature']:.4f}" in result_line(after)
    assert csv_values(after)["mean_feature"] == after["mean_feature"] and "mean_feature" in metric_columns()


@pytest.fixture
def eval_log():
    """The lines logged to ``archbench.eval`` (whether or not a command set up archbench's own handler)."""
    logger, lines = logging.getLogger("archbench.eval"), []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_unmet_needs_give_none_and_the_others_still_count(monkeypatch, eval_log):
    samples = _images(40, 2)
    bare = FeatureStats.from_features(_MeanPool()(_images(64, 1)))  # mu/sigma only, like an ADM batch w/o images
    monkeypatch.setitem(METRICS, "mean_feature", Metric(
        "mean_feature", "x", needs=("inception",), lower_is_better=False, fmt=".4f", label="mean feature",
        column="mean_feature", compute=_mean_feature))
    out = score_samples(samples, _MeanPool(), bare, labels=torch.zeros(40, dtype=torch.long))
    assert out["score"] > 0 and out["num_samples"] == 40
    for key in ("precision", "recall", "kid", "kid_std", "inception_score", "cond_accuracy", "mean_feature"):
        assert out[key] is None, key
    text = "\n".join(eval_log)
    assert "mean feature not computed: it needs Inception-v3" in text
    assert "precision, recall not computed: it needs reference feature rows" in text


def test_precision_recall_and_the_frechet_distance_come_out_as_before():
    samples, reference = _images(40, 2, scale=0.5), _reference()
    out = score_samples(samples, _MeanPool(), reference, batch_size=7)
    features = _MeanPool()(samples)
    assert out["score"] == pytest.approx(FeatureStats.from_features(features).frechet_distance(reference), rel=1e-9)
    assert 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1 and (out["pr_k"], out["pr_items"]) == (3, 40)
    assert out["score_name"] == "FD-meanpool" and out["reference_items"] == 64


def test_result_line_reads_the_table():
    record = {"score_name": "FID", "score": 1.23456, "num_samples": 10, "precision": 0.5, "recall": 0.25,
              "inception_score": 2.0, "inception_score_std": 0.1, "kid": 0.001, "kid_std": 0.0002,
              "cond_accuracy": None}
    assert result_line(record) == ("FID = 1.2346 (10 samples, precision 0.500, recall 0.250, IS 2.000 +- 0.100, "
                                   "KID 0.00100 +- 0.00020)")


def test_csv_values_keep_the_old_columns():
    record = {"score": 3.5, "precision": 0.5, "recall": None, "cond_accuracy": 0.25, "inception_score": None,
              "kid": None}
    assert csv_values({**record, "feature_network": "digits_cnn"}) == {
        "fd": 3.5, "fid": None, "precision": 0.5, "recall": None, "cond_accuracy": 0.25, "composition": None,
        "inception_score": None, "kid": None}
    assert csv_values({**record, "feature_network": "inception"})["fid"] == 3.5  # FD on Inception features is FID
    assert metric_columns() == ("fd", "fid", "precision", "recall", "cond_accuracy", "composition", "inception_score",
                                "kid")


def test_compute_metrics_runs_a_shared_function_once(monkeypatch):
    calls = []

    def both(scored: ScoringPass) -> dict[str, Any]:
        calls.append(1)
        return {"a": 1.0, "b": 2.0}

    for name in ("a", "b"):
        monkeypatch.setitem(METRICS, name, Metric(name, name, needs=("features",), lower_is_better=True,
                                                  fmt=".1f", label=name, column=None, compute=both))
    reference = _reference()
    scored = ScoringPass(stats=reference, reference=reference, extractor=_MeanPool(), outputs={}, labels=None,
                         k=3, pr_items=64)
    out = compute_metrics(scored)
    assert (out["a"], out["b"], len(calls)) == (1.0, 2.0, 1) and out["score"] == pytest.approx(0.0, abs=1e-9)
