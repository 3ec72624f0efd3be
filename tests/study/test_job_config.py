"""A study job composes its run's training config once and hands training that typed object."""

from __future__ import annotations

import pytest

from archbench.study import job as study_job
from archbench.study.plan import Job
from archbench.study.schema import EvalSpec
from archbench.training import launch
from archbench.training.config import compose_config, to_container
from archbench.training.schema import RunConfig


def _job(tmp_path) -> Job:
    from dataclasses import asdict

    return Job(label="dit_t2", arm="dit_t2", backbone="dit_t2", seed=3, sweep={},
               overrides=["recipe=ci_fid", "backbone=dit_t2", "train.lr=2e-3"], steps=6, eval_steps=[3, 6],
               ckpt_every=3, log_every=1, run_dir=str(tmp_path / "run"), eval=asdict(EvalSpec()), params=1,
               gmacs=0.001, batch_size=16, dataset="digits", device="cpu", threads=1)


class _Handed(Exception):
    """Stops the run once training has been handed its config."""


def _capture(monkeypatch) -> list[RunConfig]:
    handed: list[RunConfig] = []

    def fake(config):
        handed.append(config)
        raise _Handed

    monkeypatch.setattr(launch, "train_from_config", fake)
    return handed


def test_the_job_hands_training_the_config_its_overrides_compose_to(tmp_path, monkeypatch):
    job = _job(tmp_path)
    handed = _capture(monkeypatch)
    with pytest.raises(_Handed):
        study_job._train(job)
    (config,) = handed
    strings = study_job.run_overrides(job)
    assert isinstance(config, RunConfig) and config == launch.compose_run(strings)
    assert launch.config_record(config) == to_container(compose_config(strings))  # the run's record is unchanged
    assert (config.run_dir, config.seed, config.train.steps, config.train.lr) == (job.run_dir, 3, 6, 2e-3)


def test_timing_hands_training_a_config(tmp_path, monkeypatch):
    handed = _capture(monkeypatch)
    with pytest.raises(_Handed):
        study_job.time_point(["recipe=ci_fid", "backbone=dit_t2"], str(tmp_path / "t"), 4, "cpu", 1)
    (config,) = handed
    assert isinstance(config, RunConfig) and config.run_dir == str(tmp_path / "t")
    assert config.train.resume is None and config.train.log_every == 1 and config.train.logger == "none"
    assert config.train.steps == 4 + study_job.TIMING_WARMUP  # threads=1 measures nothing before the timed steps


def test_training_from_overrides_is_training_from_their_config(monkeypatch):
    handed = _capture(monkeypatch)
    with pytest.raises(_Handed):
        launch.train_from_overrides(["recipe=ci_fid", "train.steps=2"])
    assert handed == [launch.compose_run(["recipe=ci_fid", "train.steps=2"])]
