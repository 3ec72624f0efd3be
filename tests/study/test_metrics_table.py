"""The study scores through the same typed call as ``python -m archbench.eval``, and the metrics table decides
results.csv's columns and summary.md's: a metric added to the table reaches both, from a real run's evaluation."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from typing import Any

import pytest
from train_support import one_thread, run_train  # noqa: F401

from archbench.commands import eval as ev
from archbench.console.args import parse_args
from archbench.evaluation.evaluate import EvalRequest
from archbench.evaluation.metrics import METRICS, Metric, ScoringPass
from archbench.study.job import eval_path, eval_request, evaluate_step
from archbench.study.plan import Job
from archbench.study.results import collect, columns, numeric_columns, read_csv, write_csv
from archbench.study.schema import EvalSpec
from archbench.study.spec import compose_study
from archbench.study.summary import render

STEPS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step dit_t2 run on 8x8 digits and a digits CNN (one epoch) in a temporary cache."""
    from archbench.evaluation import train_dataset_cnn

    root = tmp_path_factory.mktemp("metrics-table")
    cache = root / "cache"
    train_dataset_cnn("digits", epochs=1, cache=cache, log=lambda _: None)
    assert run_train(root / "run", f"train.steps={STEPS}", f"train.ckpt_every={STEPS}") == 0
    return root, cache


def _job(root) -> Job:
    settings = {**asdict(EvalSpec()), "num_samples": 20, "steps": 2, "batch_size": 10, "features": "digits_cnn"}
    return Job(label="dit_t2", arm="dit_t2", backbone="dit_t2", seed=0, sweep={}, overrides=[], steps=STEPS,
               eval_steps=[STEPS], ckpt_every=STEPS, log_every=1, run_dir=str(root / "run"), eval=settings,
               params=1, gmacs=0.001, batch_size=16, dataset="digits", device="cpu")


def _command_argv(job: Job, cache, out) -> list[str]:
    """What a user types to score the study's checkpoint as the study does."""
    return [f"checkpoint={job.run_dir}/checkpoints/step_{STEPS:07d}.pt", "num_samples=20", "features=digits_cnn",
            "sampler=ddim", "steps=2", "cfg_scale=1.0", "seed=0", "batch_size=10", "feature_batch_size=10",
            "ref_split=test", "device=cpu", "progress=false", f"cache={cache}", f"out={out}"]


def test_the_study_makes_the_commands_request(tmp_path):
    job = _job(tmp_path)
    request = eval_request(job, STEPS, str(tmp_path / "cache"))
    argv = _command_argv(job, tmp_path / "cache", eval_path(job.run_dir, STEPS))
    assert request == parse_args(EvalRequest, argv)


def test_the_studys_scores_are_the_commands(trained, tmp_path):
    root, cache = trained
    job = _job(root)
    record = evaluate_step(job, STEPS, str(cache))
    assert ev.main(_command_argv(job, cache, tmp_path / "command.json")) == 0
    command = json.loads((tmp_path / "command.json").read_text())
    for metric in METRICS.values():
        for key in metric.record_keys:
            assert record[key] == command[key], key
    assert record["score"] > 0 and record["study_eval"]["num_samples"] == 20


def _mean_feature(scored: ScoringPass) -> dict[str, Any]:
    return {"mean_feature": float(scored.stats.mu.mean())}


def test_a_metric_added_to_the_table_reaches_results_and_summary(trained, tmp_path, monkeypatch):
    root, cache = trained
    job = _job(root)
    assert "mean_feature" not in columns()
    monkeypatch.setitem(METRICS, "mean_feature", Metric(
        "mean_feature", "mean of the sample features", needs=("features",), lower_is_better=False, fmt=".4f",
        label="mean feature", column="mean_feature", compute=_mean_feature, heading="mean feat."))
    record = evaluate_step(job, STEPS, str(cache))
    assert isinstance(record["mean_feature"], float)
    rows = collect("t", [job])
    write_csv(rows, tmp_path / "results.csv")
    with open(tmp_path / "results.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == list(columns()) and header.index("mean_feature") == header.index("num_samples") - 1
    (row,) = read_csv(tmp_path / "results.csv")
    assert row["mean_feature"] == record["mean_feature"] and row["fd"] == record["score"]  # read back as numbers
    spec = compose_study({"name": "t", "arms": [{"backbone": "dit_t2"}], "eval": job.eval})
    summary = render(spec, rows, "test machine")
    assert "| cond. acc. | mean feat. | seeds |" in summary
    assert f"| {record['mean_feature']:.4f} | 1 |" in summary  # its mean over the one seed, in its format


def test_every_metric_column_is_written_and_read_back_as_a_number(tmp_path):
    record = {"score": 1.5, "feature_network": "inception", "score_name": "FID"}
    for metric in METRICS.values():
        for key in metric.record_keys:
            record.setdefault(key, 0.25)
    job = _job(tmp_path)
    path = eval_path(job.run_dir, STEPS)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**record, "study_eval": {**job.eval, "seed": 0}}))
    rows = collect("t", [job])
    write_csv(rows, tmp_path / "results.csv")
    (row,) = read_csv(tmp_path / "results.csv")
    for metric in METRICS.values():
        if metric.column is None:
            continue
        assert metric.column in columns() and metric.column in numeric_columns()
        assert row[metric.column] == record[metric.key], metric.name
        for _, column in metric.feature_columns:
            assert row[column] == record[metric.key]  # the Inception record's FD is also its FID
