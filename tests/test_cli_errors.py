"""Every command, fed wrong types and values for its keys: one line on stderr, exit code 1, no traceback.

The commands run in-process (their ``main``), so an unexpected exception fails the test instead of hiding
in a subprocess; hypothesis picks the wrong values.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from train_support import one_thread, run_train  # noqa: F401

from archbench import ci, export, report, sample, train, zoo
from archbench.commands import eval as evaluate

WORDS = st.text(alphabet=string.ascii_letters + "-_.:", min_size=1, max_size=10).filter(
    lambda s: s.lower() not in ("true", "false", "none", "null", "nan", "inf", "infinity", "auto")
    and not s.replace(".", "").replace("-", "").replace("_", "").isdigit()
)
NON_POSITIVE = st.integers(-1000, 0)
FUZZ = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _one_line_failure(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1, err
    assert err and "error: " in err[-1] and not any("Traceback" in line for line in err), err
    return err[-1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "run"
    assert run_train(path, "train.steps=1") == 0
    return path


@FUZZ
@given(key=st.sampled_from(["train.lr", "train.batch_size", "train.steps", "train.ema_decay", "data.image_size",
                            "train.log_every", "backbone.depth"]),
       value=st.one_of(WORDS, NON_POSITIVE.map(lambda v: v - 1)))
def test_train_values(capsys, key, value):
    line = _one_line_failure(capsys, train.main(["recipe=digits", f"{key}={value}", "--cfg"]))
    assert line.startswith("archbench.train: error: ")


@FUZZ
@given(group=st.sampled_from(["recipe", "backbone", "diffusion", "data.name"]), value=WORDS)
def test_train_choices(capsys, group, value):
    line = _one_line_failure(capsys, train.main([f"{group}={value}", "--cfg"]))
    assert "valid" in line or "choices" in line or "cannot" in line


@FUZZ
@given(key=st.sampled_from(["cfg_scale", "steps", "num_samples", "batch_size", "guide_channels", "sampler",
                            "labels", "device", "seed"]),
       value=st.one_of(WORDS, NON_POSITIVE.map(lambda v: v - 1)))
def test_sample_values(capsys, run_dir, key, value):
    rc = sample.main([f"run_dir={run_dir}", "num_samples=2", "steps=2", "progress=false", f"{key}={value}"])
    if rc == 0:  # a negative seed is a valid seed and a negative guidance scale a valid (anti-)guidance
        assert key in ("seed", "cfg_scale") and isinstance(value, int)
        return
    assert _one_line_failure(capsys, rc).startswith("archbench.sample: error: ")


@FUZZ
@given(key=st.sampled_from(["num_samples", "steps", "cfg_scale", "features", "batch_size", "guide_channels"]),
       value=st.one_of(WORDS, NON_POSITIVE))
def test_eval_values(capsys, run_dir, key, value):
    rc = evaluate.main([f"run_dir={run_dir}", "num_samples=4", "progress=false", f"{key}={value}"])
    assert _one_line_failure(capsys, rc).startswith("archbench.eval: error: ")


@FUZZ
@given(argv=st.one_of(
    st.tuples(st.just("flops"), WORDS.map(lambda w: f"backbones={w}")),
    st.tuples(st.just("scaling"), WORDS.map(lambda w: f"resolutions={w}")),
    st.tuples(WORDS.filter(lambda w: w not in ("flops", "summary", "scaling", "help"))),
))
def test_report_values(capsys, argv):
    assert _one_line_failure(capsys, report.main(list(argv))).startswith("archbench.report: error: ")


def test_report_unwritable_output_is_one_line(capsys):
    rc = report.main(["scaling", "backbones=dit_t2", "resolutions=16", "out=/proc/archbench-nope", "repeats=1"])
    assert "archbench.report: error: " in _one_line_failure(capsys, rc)


def test_zoo_readme_elsewhere_is_one_line(capsys, tmp_path):
    assert "zoo markers" in _one_line_failure(capsys, zoo.main(["--readme", str(tmp_path / "README.md")]))


@FUZZ
@given(flag=st.sampled_from(["--steps", "--num-samples", "--sample-steps", "--seed", "train_steps=", "num_samples=",
                             "sample_steps=", "seed="]), value=WORDS)
def test_ci_flags(capsys, flag, value):
    argv = ["fid", flag + value] if flag.endswith("=") else ["fid", flag, value]
    assert _one_line_failure(capsys, ci.main(argv)).startswith("archbench.ci: error: ")


def test_ci_unknown_backbone(capsys, tmp_path):
    rc = ci.main(["fid", "--backbones", "nope_t2", "--work-dir", str(tmp_path)])
    assert "unknown backbone(s) nope_t2" in _one_line_failure(capsys, rc)


@FUZZ
@given(argv=st.one_of(
    WORDS.map(lambda w: [f"{w}=1"]),
    WORDS.map(lambda w: [f"run_dir=/nonexistent/{w}", "out=/tmp/archbench-export-test"]),
))
def test_export_values(capsys, argv):
    assert _one_line_failure(capsys, export.main(argv)).startswith("archbench.export: error: ")


def test_not_a_checkpoint_is_named_and_never_deleted(capsys, tmp_path):
    foreign = tmp_path / "notes.txt"
    foreign.write_text("root:x:0:0:root:/root:/bin/bash\n")
    line = _one_line_failure(capsys, sample.main([f"checkpoint={foreign}"]))
    assert "is not a checkpoint" in line and "delete" not in line
    assert foreign.is_file()


@FUZZ
@given(flag=st.sampled_from(["--lengths", "--repeats", "--batch", "--d-inner", "--state", "--threads"]), value=WORDS)
def test_bench_flags(capsys, flag, value):
    from archbench import bench

    assert _one_line_failure(capsys, bench.main(["scan", flag, value])).startswith("archbench.bench: error: ")


@FUZZ
@given(key=st.sampled_from(["batch", "image_size", "timed_steps", "steps", "rounds", "precision", "diffusion"]),
       value=st.one_of(WORDS, NON_POSITIVE.map(lambda v: v - 1)))
def test_bench_step_values(capsys, key, value):
    from archbench import bench

    assert _one_line_failure(capsys, bench.main(["step", f"{key}={value}"])).startswith("archbench.bench: error: ")


@FUZZ
@given(key=WORDS, value=WORDS)
def test_data_keys(capsys, key, value):
    from archbench.commands.data import main as data_main

    line = _one_line_failure(capsys, data_main(["encode", f"{key}={value}"]))
    assert line.startswith("archbench.data: error: ")


@FUZZ
@given(key=st.sampled_from(["seeds", "budget.steps", "budget.match", "budget.reference", "eval.num_samples",
                            "eval.every", "eval.steps", "launcher", "launcher.workers", "launcher.cluster",
                            "ckpt_every", "arms"]),
       value=st.one_of(WORDS, NON_POSITIVE.map(lambda v: v - 1)))
def test_study_values(capsys, key, value):
    from archbench.commands.study import main as study_main

    line = _one_line_failure(capsys, study_main(["ci", f"{key}={value}", "--plan"]))
    assert line.startswith("archbench.study: error: ")


@FUZZ
@given(key=WORDS.filter(lambda k: k.split(".")[0] not in ("name", "study_dir", "recipe", "device", "threads")),
       value=WORDS)
def test_study_unknown_keys(capsys, key, value):
    from archbench.commands.study import main as study_main

    line = _one_line_failure(capsys, study_main(["ci", f"{key}={value}", "--plan"]))
    assert line.startswith("archbench.study: error: ") and ("unknown" in line or "cannot" in line or "must" in line
                                                            or "maps" in line), line


@pytest.mark.skipif(__import__("torch").backends.mps.is_available(), reason="this machine has Apple's Metal")
@pytest.mark.parametrize("command", ["train", "sample", "eval", "study"])
def test_a_device_this_machine_lacks_is_one_line_before_any_work(capsys, run_dir, tmp_path, command):
    """device=mps where there is none: one line naming the valid choices and what this machine has, before
    anything is trained, drawn or written."""
    from archbench.commands.study import main as study_main

    argv = {
        "train": lambda: train.main(["recipe=digits", "device=mps", f"run_dir={tmp_path / 'run'}"]),
        "sample": lambda: sample.main([f"run_dir={run_dir}", "device=mps", f"out={tmp_path / 's.npz'}"]),
        "eval": lambda: evaluate.main([f"run_dir={run_dir}", "device=mps", f"out={tmp_path / 'e.json'}"]),
        "study": lambda: study_main(["ci", "device=mps", f"study_dir={tmp_path / 'study'}"]),
    }
    line = _one_line_failure(capsys, argv[command]())
    assert line.startswith(f"archbench.{command}: error: device=mps: "), line
    assert "valid choices: auto, cpu, cuda, cuda:N or mps" in line and "available here: cpu" in line, line
    assert list(tmp_path.iterdir()) == []  # no run folder, sample set, record or study folder


def test_an_unknown_device_kind_is_refused_by_name():
    from archbench.training.distributed import check_device

    for spec in ("meta", "xpu", "cpu:1", "gpu", "cuda:x"):
        with pytest.raises(RuntimeError, match=f"unknown device '{spec}'; valid choices"):
            check_device(spec, here=False)
    check_device("cuda:3", here=False)  # a kind that exists: whether this machine has it is another question
