"""A bad study fails before any training with one line naming the key and the valid choices."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from study_support import run_study_cli, tiny_study

from archbench.study.plan import describe_arms
from archbench.study.schema import StudySpec, sections
from archbench.study.spec import StudyError, compose_study, load_study, study_names


def _spec(**changes):
    raw = {"name": "x", "arms": [{"backbone": "dit_t2"}], "recipe": "ci_fid", **changes}
    return compose_study(raw)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seed": [0]}, "unknown key 'seed' (did you mean 'seeds'?)"),
        ({"eval": {"num_sample": 5}}, "unknown key eval.'num_sample'"),
        ({"budget": {"match": "flops"}}, "budget.match='flops'; valid: steps, train_flops, wall_clock"),
        ({"arms": []}, "'arms' is empty"),
        ({"arms": [{"backbone": "dit_t2", "overide": []}]}, "unknown key arms[0].overide"),
        ({"arms": [{"backbone": "dit_t2"}, {"backbone": "dit_t2"}]}, "two arms are both called 'dit_t2'"),
        ({"budget": {"reference": "dis_t2"}}, "budget.reference='dis_t2' is not an arm; arms: dit_t2"),
        ({"seeds": []}, "'seeds' must be a non-empty list"),
        ({"launcher": "slurm"}, "launcher='slurm'; valid: local, submitit"),
        ({"overrides": ["train.steps=5"]}, "the study sets train.steps itself"),
        ({"name": "a b"}, "'name' must be a non-empty word"),
    ],
)
def test_schema_errors_name_the_key(changes, message):
    with pytest.raises(StudyError) as info:
        _spec(**changes)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arms": [{"backbone": "dit_t9"}]}, "unknown backbone 'dit_t9'"),
        ({"arms": [{"backbone": "unet_t"}], "sweep": {"backbone.depth": [2, 4]}}, "backbone.depth"),
        ({"arms": [{"backbone": "dit_t2", "overrides": ["train.lr=fast"]}]}, "train.lr"),
    ],
)
def test_registry_and_config_errors_before_training(changes, message):
    spec = _spec(**changes)
    with pytest.raises(StudyError) as info:
        describe_arms(spec)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert "arm " in str(info.value)  # says which arm


def test_overrides_use_the_training_grammar():
    raw = {"name": "x", "arms": [{"backbone": "dit_t2"}], "launcher": "local"}
    spec = compose_study(raw, ["seeds=[0,3]", "launcher=submitit", "launcher.cluster=local", "budget.steps=600",
                               "eval.every=100", "sweep.backbone.depth=[2,4]"])
    assert spec.seeds == [0, 3] and spec.budget.steps == 600 and spec.eval.every == 100
    assert spec.launcher.name == "submitit" and spec.launcher.cluster == "local"
    assert spec.sweep == {"backbone.depth": [2, 4]}
    assert spec.study_dir == "studies/x"
    with pytest.raises(StudyError, match="unknown key 'budget.step'"):
        compose_study(raw, ["budget.step=5"])
    with pytest.raises(StudyError, match="key=value"):
        compose_study(raw, ["seeds"])


def test_yaml_numbers_people_write_are_numbers():
    spec = compose_study({"name": "x", "arms": [{"backbone": "dit_t2", "match_params": "30e6"}]})
    assert spec.arms[0].match_params == 30e6


def test_every_preset_loads_and_every_documented_key_exists():
    assert {"ci", "families_cpu", "scaling_depth", "scaling_width", "scaling_tokens", "mixer_ablation",
            "scan_orders", "paper_table", "hierarchy"} <= set(study_names())
    for name in study_names():
        load_study(name)
    from archbench.commands.study import usage

    help_text = usage()
    for key in fields(StudySpec):
        assert key.name in help_text, key.name
    assert set(sections()) == {"budget", "eval", "tune", "grid", "launcher"}
    for section, schema in sections().items():
        for key in fields(schema):
            assert f"{section}.{key.name}" in help_text, f"{section}.{key.name}"


def test_study_keys_are_documented_once_and_the_readme_table_is_generated():
    """The schema's fields are the one place a study key is described: every key, an arm's included, has its line
    there, and the README's table and ``study --help`` come from it."""
    from archbench.study.schema import README_BEGIN, README_END, ArmSpec, key_rows, key_table

    rows = {key: doc for key, _, doc in key_rows()}
    assert all(rows.values()), [key for key, doc in rows.items() if not doc]
    assert {f"arms[].{f.name}" for f in fields(ArmSpec)} <= set(rows) and "budget.match" in rows
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert table == key_table(), "regenerate the README's study key table from archbench.study.spec.key_table()"


def test_cli_bad_study_is_one_line_and_trains_nothing(tmp_path):
    path = tiny_study(tmp_path, arms=[{"backbone": "dit_t2"}, {"backbone": "nope_t2"}])
    proc = run_study_cli(str(path))
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("[archbench]")]
    assert len(lines) == 1 and "unknown backbone 'nope_t2'" in lines[0], proc.stderr
    assert not (tmp_path / "tiny" / "runs").exists()
    missing = run_study_cli("no_such_study")
    assert missing.returncode == 1 and "families_cpu" in missing.stderr


def test_cli_plan_lists_runs_without_training(tmp_path):
    path = tiny_study(tmp_path)
    proc = run_study_cli(str(path), "--plan", "seeds=[0]")
    assert proc.returncode == 0, proc.stderr
    assert "| dis_t2-s0 | dis_t2 |" in proc.stdout and "dit_t2-s1" not in proc.stdout
    assert not (tmp_path / "tiny").exists()
    assert yaml.safe_load(path.read_text())["seeds"] == [0, 1]  # overrides never edit the file


def test_arms_by_registry_tag():
    """``arms: {tag: tiny}`` is one arm per backbone the registry tags, so a new family joins the study by itself."""
    from backbones.registry import list_backbones

    tiny = list_backbones(tag="tiny")
    assert [a.backbone for a in _spec(arms={"tag": "tiny"}).arms] == tiny
    mixed = _spec(arms=[{"backbone": "dis_t4"}, {"tag": "tiny", "overrides": ["train.lr=1e-3"]}]).arms
    assert [a.backbone for a in mixed] == ["dis_t4", *tiny] and [a.name for a in mixed] == ["dis_t4", *tiny]
    assert mixed[0].overrides == [] and all(a.overrides == ["train.lr=1e-3"] for a in mixed[1:])
    assert mixed[1].overrides is not mixed[2].overrides
    from_cli = compose_study({"name": "x", "arms": []}, ["arms={tag: tiny_variant}"])
    assert [a.backbone for a in from_cli.arms] == list_backbones(tag="tiny_variant")


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ({"tag": "tiy"}, "arms[0]: unknown backbone tag 'tiy'; known tags: cpu_study, tiny, tiny_variant"),
        ([{"backbone": "dit_t2"}, {"tag": "tiny", "name": "t"}], "arms[1] selects backbones by tag, so it cannot "
                                                                 "have 'name'"),
        ({"tag": "tiny", "backbone": "dit_t2"}, "cannot have 'backbone'"),
        ({"tag": ["tiny"]}, "arms[0].tag must be a word"),
        ([{"backbone": "dit_t2"}, {"tag": "tiny"}], "two arms are both called 'dit_t2'"),
    ],
)
def test_bad_tag_arms_name_the_problem(arms, message):
    with pytest.raises(StudyError) as info:
        _spec(arms=arms)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("preset", "tag"), [("ci", "cpu_study"), ("families_cpu", "cpu_study")])
def test_family_presets_run_the_tiny_member_of_every_family(preset, tag):
    """The family comparisons follow the registry: every family of the DiS paper's comparison, each by its 16-token
    member (the hourglass skeleton is compared with isotropy in the hierarchy preset), and no stale list."""
    from backbones.registry import get_spec, list_backbones

    arms = [a.backbone for a in load_study(preset).arms]
    assert sorted(arms) == list_backbones(tag=tag)
    assert sorted(get_spec(n).family for n in arms) == ["dis", "dit", "unet", "uvit"]


CPU_PRESETS = ("families_cpu", "scaling_depth", "scaling_width", "scaling_tokens", "mixer_ablation", "scan_orders",
               "hierarchy")


@pytest.mark.parametrize("preset", CPU_PRESETS)
def test_cpu_presets_learn_on_the_study_recipe_and_plan(preset):
    """Every CPU preset trains on the recipe that learns (min-SNR, guided evaluation) and composes: each arm
    builds, is counted, and its reference arm trains the 2000 steps that take dis_t4 past 0.70 accuracy."""
    from archbench.study.runner import plan_study

    spec = load_study(preset)
    assert spec.recipe == "cpu_study" and spec.eval.cfg_scale > 1 and len(spec.seeds) >= 3
    points, jobs = plan_study(spec, measure=False)
    reference = spec.budget.reference or spec.arms[0].name
    assert {j.steps for j in jobs if j.arm == reference} == {2000}
    assert all(j.steps >= 1000 and len(j.eval_steps) >= 3 for j in jobs)


@pytest.mark.parametrize(("override", "message"), [
    ("budget.timing_steps=0", r"budget.timing_steps must be a positive integer"),
    ("eval.num_samples=1", r"eval.num_samples=1: a Fréchet distance needs at least 2 samples"),
])
def test_settings_that_fail_late_are_refused_before_training(tmp_path, override, message):
    """Issue 23.9: each of these used to train (or time) every arm first and then fail with a raw error."""
    with pytest.raises(StudyError, match=message):
        load_study(str(tiny_study(tmp_path)), [override])


def test_a_study_dir_that_is_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    for where in (blocker, blocker / "inside"):
        with pytest.raises(StudyError, match=r"is a file, not a folder; give another study_dir="):
            load_study(str(tiny_study(tmp_path)), [f"study_dir={where}"])


def test_a_missing_feature_network_is_found_before_any_arm_trains(tmp_path):
    """A digits study scored on a digits CNN nobody trained fails at once, naming the command that trains it."""
    from archbench.study import run_study

    path = tiny_study(tmp_path, recipe="digits", eval={"num_samples": 20, "features": "auto"})
    with pytest.raises(StudyError, match=r"digits_cnn network, which is not at .* train-features dataset=digits"):
        run_study(load_study(str(path)))
    assert not (tmp_path / "tiny" / "runs").exists()


@pytest.mark.parametrize(("changes", "message"), [
    ({"budget": {"steps": "many"}}, "budget.steps must be an integer, got 'many'"),
    ({"seeds": [0, "one"]}, "seeds[1] must be an integer, got 'one'"),
    ({"threads": "auto"}, "threads must be an integer or null, got 'auto'"),
    ({"overrides": "train.lr=1e-3"}, "overrides must be a list of strings, got 'train.lr=1e-3'"),
    ({"eval": 5}, "eval must be a section with keys every, num_samples"),
    ({"arms": [{"backbone": "dit_t2", "match_params": "big"}]}, "arms[0].match_params must be a number or null"),
])
def test_a_wrongly_typed_key_in_a_study_file_is_one_line(tmp_path, changes, message):
    """OmegaConf types every key from the schema; its error comes back naming the key and the type it wants."""
    with pytest.raises(StudyError) as info:
        load_study(str(tiny_study(tmp_path, **changes)))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_wrongly_typed_override_is_one_line(tmp_path):
    with pytest.raises(StudyError, match=r"^budget.timing_steps must be an integer, got 'slow'$"):
        load_study(str(tiny_study(tmp_path)), ["budget.timing_steps=slow"])


def test_interpolations_resolve_against_study_keys(tmp_path):
    raw = {"name": "x", "recipe": "ci_fid", "arms": [{"backbone": "dit_t2"}]}
    assert compose_study(raw).study_dir == "studies/x"
    assert compose_study(raw, ["study_dir=studies/${name}"]).study_dir == "studies/x"
    assert compose_study(raw, ["name=y", "study_dir=out/${name}-${recipe}"]).study_dir == "out/y-ci_fid"
    with pytest.raises(StudyError, match=r"cannot resolve study_dir: Interpolation key 'nmae' not found"):
        compose_study(raw, ["study_dir=studies/${nmae}"])
    # a training override's ${...} is the training's to resolve: the study passes it on untouched
    kept = compose_study({**raw, "overrides": ["sample.grid_cfg_scale=${sample.cfg_scale}"]})
    assert kept.overrides == ["sample.grid_cfg_scale=${sample.cfg_scale}"]


def test_the_saved_study_yaml_is_the_study(tmp_path):
    """study.yaml in a study folder is plain data that loads back to the same typed spec."""
    from dataclasses import asdict

    spec = load_study(str(tiny_study(tmp_path)), ["seeds=[0]", "sweep.train.lr=[1e-3, 3e-3]"])
    saved = tmp_path / "study.yaml"
    saved.write_text(yaml.safe_dump(asdict(spec), sort_keys=False))
    assert isinstance(spec, StudySpec) and load_study(str(saved)) == spec
