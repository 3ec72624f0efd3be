"""The FD regression check must be able to fail: degrade a trained model on purpose and see it flagged."""

import json
import shutil

import pytest
import torch
import yaml

from archbench.commands import ci as ci_command
from archbench.console.args import parse_args
from archbench.study import regression as ci
from archbench.study.job import eval_path
from archbench.study.schema import StudySpec
from archbench.training import checkpoint as ckpt

SETTINGS = ci.RunSettings(steps=250, num_samples=200, sampler="ddim", sample_steps=10, seed=0, cfg_scale=4.0)
ARM = "dit_t4"  # a CI arm (its tuned learning rate), 16 tokens: the cheapest model that learns in 250 steps


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """One short CI run of ARM, trained once for the module; tests copy it before changing anything."""
    work = tmp_path_factory.mktemp("ci-fid")
    spec = ci.ci_spec([ARM], steps=SETTINGS.steps, num_samples=SETTINGS.num_samples, sampler=SETTINGS.sampler,
                      sample_steps=SETTINGS.sample_steps, seeds=[SETTINGS.seed], work_dir=work, threads=1)
    ci.run_ci_study(spec)
    return work


@pytest.fixture
def trained(trained_dir, tmp_path):
    """A private copy of the trained study (resumed, so nothing retrains) and its result row."""
    work = tmp_path / "ci-fid"
    shutil.copytree(trained_dir, work)
    spec = ci.ci_spec([ARM], steps=SETTINGS.steps, num_samples=SETTINGS.num_samples, sampler=SETTINGS.sampler,
                      sample_steps=SETTINGS.sample_steps, seeds=[SETTINGS.seed], work_dir=work, threads=1)
    return spec, ci.run_ci_study(spec, fresh=False)[(ARM, 0)]


def test_noise_in_the_weights_is_flagged(trained, tmp_path):
    spec, good = trained
    baseline_path = ci.write_baseline(good, [good["fd"]], min_tolerance=0.10, directory=tmp_path)
    baseline = ci.load_baseline(ARM, tmp_path)
    assert baseline_path.exists() and ci.verdict(good, baseline) == "ok"
    assert good["settings"] == SETTINGS.as_dict() and good["feature_checksum"] == baseline["feature_checksum"]

    run_dir = ci.Path(spec.study_dir) / "runs" / f"{ARM}-s0"
    newest = ckpt.latest_checkpoint(run_dir)
    state = ckpt.load_checkpoint(newest)
    generator = torch.Generator().manual_seed(0)
    for value in state["ema"]["model"].values():
        if value.is_floating_point():
            value.add_(value.std().nan_to_num(0.0) * torch.randn(value.shape, generator=generator))
    ckpt.save_checkpoint(state, newest)
    eval_path(run_dir, SETTINGS.steps).unlink()  # the study re-scores the damaged weights, without retraining
    degraded = ci.run_ci_study(spec, fresh=False)[(ARM, 0)]
    assert degraded["fd"] > good["fd"] * 1.1
    assert ci.verdict(degraded, baseline) == "REGRESSED"


def test_cli_exits_nonzero_on_regression(trained, tmp_path, capsys):
    """A baseline far better than what the code can reach: the command prints REGRESSED and exits 1 (on a copy of
    the trained study, which it resumes: nothing retrains)."""
    spec, _ = trained
    row = {
        "backbone": ARM, "dataset": None, "score_name": "FD", "fd": 1e-3, "params": 0, "gmacs": 0.0,
        "feature_checksum": None, "settings": SETTINGS.as_dict(), "s_per_step": 0.0,
    }
    ci.write_baseline(row, [row["fd"]], 0.1, tmp_path)
    args = ["fid", "--backbones", ARM, "--steps", "250", "--num-samples", "200", "--sample-steps", "10",
            "--work-dir", spec.study_dir, "--baselines", str(tmp_path), "--resume=true"]
    # fill in the facts the real run will report, so only the FD can make the verdict fail
    from archbench.data import default_dataset
    from archbench.evaluation import sha256_file

    stored = json.loads((tmp_path / f"{ARM}.json").read_text())
    stored["dataset"] = default_dataset()
    stored["feature_checksum"] = sha256_file(ci.feature_weights())
    (tmp_path / f"{ARM}.json").write_text(json.dumps(stored))
    assert ci_command.main(args) == 1
    out = capsys.readouterr()
    assert "REGRESSED" in out.out and f"FD regression check failed for {ARM}" in out.err
    assert "step 1/" not in out.err + out.out  # resumed: the finished run was not trained again


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


def _spec(*flags: str) -> StudySpec:
    return ci_command.fid_spec(parse_args(ci_command.FidArgs, flags))


def _edited_ci_yaml(tmp_path, **changes) -> str:
    """A copy of the committed ci.yaml with some keys replaced, as someone editing the file would."""
    raw = yaml.safe_load((ci.recipes_dir() / "studies" / "ci.yaml").read_text())
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) and isinstance(value, dict) else value
    path = tmp_path / "ci.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def test_default_command_runs_what_ci_ran_before(tmp_path):
    """`.ci/run`'s `python -m archbench.ci fid --work-dir DIR`: every family's 16-token member on the recipe that
    learns, each at its tuned learning rate, 1000 steps, 250 guided DDIM-25 samples on the committed CNN, seed 0,
    one thread per run, on the CPU."""
    from backbones.registry import list_backbones

    spec = _spec("--work-dir", str(tmp_path))
    assert sorted(a.backbone for a in spec.arms) == list_backbones(tag="cpu_study")
    assert all(any(o.startswith("train.lr=") for o in a.overrides) for a in spec.arms)
    assert spec.budget.match == "steps" and spec.budget.steps == 1000 and spec.seeds == [0]
    ev = spec.eval
    assert (ev.num_samples, ev.sampler, ev.steps, ev.every, ev.cfg_scale) == (250, "ddim", 25, 0, 4.0)
    assert ev.features == ci.FEATURES and ev.weights == str(ci.feature_weights())
    assert (spec.threads, spec.device, spec.recipe, spec.study_dir) == (1, "cpu", "cpu_study",
                                                                                   str(tmp_path))
    assert _spec().study_dir == "runs/ci-fid"
    named = _spec("--backbones", "unet_t,dit_t2").arms  # a named arm keeps the file's learning rate
    assert named[0].overrides == ["train.lr=1.0e-3"] and named[1].overrides == []


def test_every_baseline_is_of_a_ci_arm_and_was_measured_over_three_seeds():
    spec = _spec()
    for arm in spec.arms:
        baseline = ci.load_baseline(arm.backbone, ci.baselines_dir())
        assert baseline is not None, arm.backbone
        assert len(baseline["spread"]["seed_fds"]) == 3 and baseline["settings"]["steps"] == spec.budget.steps
        assert baseline["settings"]["cfg_scale"] == spec.eval.cfg_scale
        assert baseline["measured"]["cond_accuracy"] > 0.3  # recognisable: far above chance (0.1)
    kept = {p.stem for p in ci.baselines_dir().glob("*.json")} - {"fashion_mnist_cnn"}
    assert kept == {a.backbone for a in spec.arms}, "a stale baseline of a backbone CI no longer runs"


def test_ci_yaml_settings_take_effect_and_flags_override_them(tmp_path):
    study = _edited_ci_yaml(tmp_path, arms=[{"backbone": "unet_t"}], seeds=[3], threads=2, study_dir="elsewhere",
                            budget={"steps": 123}, eval={"num_samples": 77, "sampler": "ddpm", "steps": 9})
    spec = _spec("--study", study)
    assert [a.backbone for a in spec.arms] == ["unet_t"] and spec.seeds == [3]
    assert spec.budget.steps == 123 and spec.threads == 2 and spec.study_dir == "elsewhere"
    assert (spec.eval.num_samples, spec.eval.sampler, spec.eval.steps) == (77, "ddpm", 9)

    spec = _spec("--study", study, "--backbones", "dit_t2,dis_t2", "--steps", "5", "--num-samples", "8",
                 "--sampler", "ddim", "--sample-steps", "4", "--seed", "1", "--threads", "1", "--work-dir", "w")
    assert [a.backbone for a in spec.arms] == ["dit_t2", "dis_t2"] and spec.seeds == [1]
    assert spec.budget.steps == 5 and spec.threads == 1 and spec.study_dir == "w"
    assert (spec.eval.num_samples, spec.eval.sampler, spec.eval.steps) == (8, "ddim", 4)
    assert _spec("--study", study, "--seeds", "0,1,2").seeds == [0, 1, 2]

    one_flag = _spec("--study", study, "--steps", "7")  # one flag changes one setting; the file keeps the rest
    assert one_flag.budget.steps == 7 and one_flag.eval.num_samples == 77 and one_flag.seeds == [3]

    keys = _spec(f"study={study}", "backbones=dit_t2,dis_t2", "train_steps=5", "num_samples=8", "sampler=ddim",
                 "sample_steps=4", "seed=1", "threads=1", "work_dir=w")  # the key=value grammar: the same spec
    assert keys == _spec(f"--study={study}", "--backbones", "dit_t2,dis_t2", "--steps", "5", "--num-samples", "8",
                         "--sampler", "ddim", "--sample-steps", "4", "--seed", "1", "--threads", "1", "--work-dir", "w")


def test_the_command_trains_what_the_edited_file_says(tmp_path, capsys):
    """End to end through the command: the file's budget and sample count reach the run, the flag's sampling
    steps replace the file's, and several seeds in the file are refused outside --update-baselines."""
    study = _edited_ci_yaml(tmp_path, arms=[{"backbone": "dit_t2"}], budget={"steps": 3},
                            eval={"num_samples": 20, "steps": 6, "batch_size": 20},
                            overrides=["train.batch_size=8", "train.warmup_steps=1"])
    work, baselines = tmp_path / "work", tmp_path / "baselines"
    baselines.mkdir()
    rc = ci_command.main(["fid", "--study", study, "--sample-steps", "2", "--work-dir", str(work), "--baselines",
                  str(baselines)])
    assert rc == 1  # no baseline for these settings: never a pass
    rows = json.loads((work / "ci_fid.json").read_text())
    assert [r["backbone"] for r in rows] == ["dit_t2"] and rows[0]["verdict"] == "NO BASELINE"
    assert rows[0]["settings"] == {"steps": 3, "num_samples": 20, "sampler": "ddim", "sample_steps": 2, "seed": 0,
                                   "cfg_scale": 4.0}
    assert "20 samples, ddim 2 steps, seed 0" in capsys.readouterr().out

    several = _edited_ci_yaml(tmp_path, seeds=[0, 1])
    assert ci_command.main(["fid", "--study", several, "--work-dir", str(work)]) == 1
    assert "CI compares one seed, got [0, 1]" in capsys.readouterr().err
