"""A resume never silently mixes two configurations, and config.yaml keeps describing the weights."""

from __future__ import annotations

import json

import pytest
import yaml
from train_support import one_thread, run_train  # noqa: F401

from archbench.training.config import compose_config, to_container
from archbench.training.resume_config import RESUMABLE, changed_keys, check_resume_config


@pytest.fixture()
def trained(tmp_path):
    run_dir = tmp_path / "run"
    assert run_train(run_dir, "train.steps=2", "train.lr=1e-3") == 0
    return run_dir


@pytest.mark.parametrize(
    ("override", "key", "old", "new"),
    [
        ("train.lr=1e6", "train.lr", "0.001", "1000000.0"),
        ("diffusion=flow", "diffusion.objective", "'ddpm'", "'flow'"),
        ("seed=3", "seed", "0", "3"),
        ("train.batch_size=8", "train.batch_size", "16", "8"),
    ],
)
def test_a_changed_training_setting_is_refused_in_one_line(trained, capsys, override, key, old, new):
    before = (trained / "config.yaml").read_text()
    capsys.readouterr()
    assert run_train(trained, "train.steps=4", "train.lr=1e-3", override) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume" in err[0] and f"{key}: {old} -> {new}" in err[0]
    assert "new run_dir=" in err[0]
    assert (trained / "config.yaml").read_text() == before  # the record of the weights is untouched


def test_allowed_changes_resume_and_are_recorded_in_the_history(trained):
    original = (trained / "config.yaml").read_text()
    assert run_train(trained, "train.steps=4", "train.lr=1e-3", "train.log_every=2", "sample.steps=3") == 0
    assert (trained / "config.yaml").read_text() == original
    (entry,) = [json.loads(line) for line in (trained / "config_history.jsonl").read_text().splitlines()]
    assert entry["resumed_at_step"] == 2
    assert entry["changed"]["train.steps"] == [2, 4] and entry["changed"]["train.log_every"] == [1, 2]
    assert entry["changed"]["sample.steps"] == [2, 3]
    assert yaml.safe_load(original)["train"]["steps"] == 2


def test_the_rule_itself():
    base = to_container(compose_config(["recipe=digits"]))
    later = to_container(compose_config(["recipe=digits", "train.steps=5000", "data.num_workers=2"]))
    assert check_resume_config(base, later, "ckpt")["train.steps"] == [base["train"]["steps"], 5000]
    other = to_container(compose_config(["recipe=digits", "train.weight_decay=0.1"]))
    with pytest.raises(ValueError, match=r"train.weight_decay: 0.0 -> 0.1"):
        check_resume_config(base, other, "ckpt")
    # A key the saved config predates (an older archbench) is not a change.
    older = {k: v for k, v in base.items() if k != "sample"}
    assert "sample.steps" not in changed_keys(older, base)
    assert "train.steps" in RESUMABLE and "train.lr" not in RESUMABLE


def test_digits_and_fashion_mnist_runs_get_different_default_run_dirs():
    digits = to_container(compose_config(["data.name=digits"]))["run_dir"]
    fashion = to_container(compose_config(["data.name=fashion_mnist"]))["run_dir"]
    assert digits == "runs/default-digits-dis_t4" and fashion == "runs/default-fashion_mnist-dis_t4"
