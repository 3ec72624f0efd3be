"""The FD regression check must be able to fail: degrade a trained model on purpose and see it flagged."""

import json

import pytest
import torch

from archbench.study import regression as ci
from archbench.study.job import eval_path
from archbench.training import checkpoint as ckpt

SETTINGS = ci.RunSettings(steps=250, num_samples=200, sampler="ddim", sample_steps=10, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("ci-fid")
    spec = ci.ci_spec(["dit_t2"], SETTINGS, [SETTINGS.seed], work, threads=1)
    return spec, ci.run_ci_study(spec)[("dit_t2", 0)]


def test_noise_in_the_weights_is_flagged(trained, tmp_path):
    spec, good = trained
    baseline_path = ci.write_baseline(good, [good["fd"]], min_tolerance=0.10, directory=tmp_path)
    baseline = ci.load_baseline("dit_t2", tmp_path)
    assert baseline_path.exists() and ci.verdict(good, baseline) == "ok"
    assert good["settings"] == SETTINGS.as_dict() and good["feature_checksum"] == baseline["feature_checksum"]

    run_dir = ci.Path(spec["study_dir"]) / "runs" / "dit_t2-s0"
    newest = ckpt.latest_checkpoint(run_dir)
    state = ckpt.load_checkpoint(newest)
    generator = torch.Generator().manual_seed(0)
    for value in state["ema"]["model"].values():
        if value.is_floating_point():
            value.add_(value.std().nan_to_num(0.0) * torch.randn(value.shape, generator=generator))
    ckpt.save_checkpoint(state, newest)
    eval_path(run_dir, SETTINGS.steps).unlink()  # the study re-scores the damaged weights, without retraining
    degraded = ci.run_ci_study(spec, fresh=False)[("dit_t2", 0)]
    assert degraded["fd"] > good["fd"] * 1.1
    assert ci.verdict(degraded, baseline) == "REGRESSED"


def test_cli_exits_nonzero_on_regression(tmp_path, capsys):
    """A baseline far better than what the code can reach: the command prints REGRESSED and exits 1."""
    row = {
        "backbone": "dit_t2", "dataset": None, "score_name": "FD", "fd": 1e-3, "params": 0, "gmacs": 0.0,
        "feature_checksum": None, "settings": SETTINGS.as_dict(), "s_per_step": 0.0,
    }
    ci.write_baseline(row, [row["fd"]], 0.1, tmp_path)
    args = ["fid", "--backbones", "dit_t2", "--steps", "250", "--num-samples", "200", "--sample-steps", "10",
            "--work-dir", str(tmp_path / "runs"), "--baselines", str(tmp_path)]
    # fill in the facts the real run will report, so only the FD can make the verdict fail
    from archbench.data import default_dataset
    from archbench.evaluation import sha256_file

    stored = json.loads((tmp_path / "dit_t2.json").read_text())
    stored["dataset"] = default_dataset()
    stored["feature_checksum"] = sha256_file(ci.feature_weights())
    (tmp_path / "dit_t2.json").write_text(json.dumps(stored))
    assert ci.main(args) == 1
    out = capsys.readouterr()
    assert "REGRESSED" in out.out and "FD regression check failed for dit_t2" in out.err


def test_settings_mismatch_is_not_a_pass():
    row = {"dataset": "fashion_mnist", "feature_checksum": "x", "settings": SETTINGS.as_dict(), "fd": 1.0}
    baseline = {**row, "settings": {**SETTINGS.as_dict(), "steps": 600}, "tolerance": 0.1}
    assert ci.verdict(row, baseline) == "MISMATCH (settings)"
    assert ci.verdict(row, None) == "NO BASELINE"
    assert ci.verdict({**row, "fd": 1.05}, {**row, "tolerance": 0.1}) == "ok"
    assert ci.verdict({**row, "fd": 1.2}, {**row, "tolerance": 0.1}) == "REGRESSED"
    assert ci.verdict({**row, "fd": 0.8}, {**row, "tolerance": 0.1}) == "better"


def test_the_ci_recipe_grid_uses_enough_sampling_steps_to_show_samples():
    from archbench.training.config import compose_config, to_container

    config = to_container(compose_config(["recipe=ci_fid"]))
    assert config["sample"]["steps"] >= 25  # one respaced step returns the input noise unchanged
    assert config["train"]["sample_every"] == 0  # one grid, at the end of the run
