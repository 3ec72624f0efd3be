"""``python -m archbench.eval``: argument errors as one line, train-features, and a run evaluated end to end."""

import json
import subprocess
import sys

import pytest

from archbench.evaluation import evaluate as ev


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("archbench.eval: error: ")
    return err[0]


def test_help(capsys):
    assert ev.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "run_dir=" in out and "train-features" in out and "features=" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bogus=1"], "unknown argument 'bogus'; valid: run_dir"),
        (["num_samples=abc"], "num_samples must be int"),
        (["num_samples=0"], "num_samples must be a positive integer"),
        (["run_dir"], "arguments are key=value"),
        (["train-features", "dataset=digits", "epochs=-1"], "epochs must be a positive integer"),
        (["train-features", "lr=1"], "unknown argument 'lr'"),
        (["train-features", "dataset=cifar10"], "train-features supports fashion_mnist, digits"),
        (["num_samples=4"], "give run_dir="),
    ],
)
def test_bad_arguments_fail_with_one_line(argv, message, capsys):
    assert ev.main(argv) == 1
    assert message in _error_line(capsys)


def test_missing_run_dir(tmp_path, capsys):
    assert ev.main([f"run_dir={tmp_path}", "num_samples=4"]) == 1
    assert "no checkpoints under" in _error_line(capsys)


def test_unknown_key_as_a_process():
    proc = subprocess.run(
        [sys.executable, "-m", "archbench.eval", "foo=1"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert proc.stderr.strip() == proc.stderr.strip().splitlines()[0]
    assert "unknown argument 'foo'" in proc.stderr


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A 1-step U-Net run on digits and a digits CNN trained by the CLI, in a temporary cache."""
    from archbench.train import main as train_main

    root = tmp_path_factory.mktemp("eval-run")
    cache = root / "cache"
    assert ev.main(["train-features", "dataset=digits", f"cache={cache}", "epochs=1"]) == 0
    overrides = [
        "recipe=digits",
        "backbone=unet_t",
        "train.steps=1",
        "train.ckpt_every=1",
        "train.batch_size=4",
        "sample.num_samples=2",
        "sample.steps=1",
        "train.progress=false",
        "train.logger=none",
        f"run_dir={root / 'run'}",
    ]
    assert train_main(overrides) == 0
    return root / "run", cache


def test_train_features_writes_weights_and_sidecar(digits_run):
    _, cache = digits_run
    side = json.loads((cache / "features" / "digits_cnn.json").read_text())
    assert side["dataset"] == "digits" and side["feature_dim"] == 128 and 0 < side["test_accuracy"] <= 1
    assert (cache / "features" / side["weights"]).is_file() and len(side["sha256"]) == 64


def test_eval_writes_score_to_run_dir(digits_run, capsys):
    run_dir, cache = digits_run
    argv = [f"run_dir={run_dir}", "num_samples=12", "steps=2", "batch_size=6", f"cache={cache}", "progress=false"]
    assert ev.main(argv) == 0
    captured = capsys.readouterr()
    assert "FD-digits_cnn = " in captured.out
    assert "12 samples of 128-dim features" in captured.err  # too few samples for a meaningful FD: said so
    record = json.loads((run_dir / "eval.json").read_text())
    assert record["score_name"] == "FD-digits_cnn" and record["score"] > 0 and record["num_samples"] == 12
    assert (record["sampler"], record["steps"], record["cfg_scale"], record["step"]) == ("ddim", 2, 1.0, 1)
    assert record["feature_network"] == "digits_cnn" and record["feature_dim"] == 128
    side = json.loads((cache / "features" / "digits_cnn.json").read_text())
    assert record["feature_checksum"] == side["sha256"]
    assert record["reference"]["key"] == f"digits-train-16px-digits_cnn-{side['sha256'][:16]}-all"
    assert 0 <= record["precision"] <= 1 and 0 <= record["recall"] <= 1 and record["pr_k"] == 3
    assert (cache / "reference" / f"{record['reference']['key']}.npz").is_file()
    # a class-conditional run scored with its dataset's classifier: the fraction of samples it assigns their label
    correct = record["cond_accuracy"] * 12
    assert 0 <= record["cond_accuracy"] <= 1 and correct == pytest.approx(round(correct))
    assert f"cond. accuracy {record['cond_accuracy']:.3f}" in captured.out
    assert record["inception_score"] is None and record["kid"] is None  # not Inception features
    assert record["reference_source"] == "dataset" and record["samples"] is None


def test_eval_scores_an_exported_pretrained_folder_like_its_run(digits_run, tmp_path, capsys):
    from archbench.export import main as export_main

    run_dir, cache = digits_run
    folder = tmp_path / "pretrained"
    assert export_main([f"run_dir={run_dir}", f"out={folder}"]) == 0
    argv = ["num_samples=12", "steps=2", "batch_size=6", f"cache={cache}", "progress=false"]
    assert ev.main([f"run_dir={run_dir}", f"out={tmp_path / 'run.json'}", *argv]) == 0
    assert ev.main([f"run_dir={folder}", *argv]) == 0
    from_run = json.loads((tmp_path / "run.json").read_text())
    from_folder = json.loads((folder / "eval.json").read_text())
    assert from_folder["score"] == from_run["score"] and from_folder["step"] == from_run["step"] == 1
    # A bare save_pretrained folder knows no dataset: refused in one line.
    import archbench

    bare = archbench.build("unet_t", image_size=16, in_channels=1).save_pretrained(tmp_path / "bare")
    capsys.readouterr()
    assert ev.main([f"run_dir={bare}", *argv]) == 1
    assert "does not say which dataset" in capsys.readouterr().err


def test_eval_with_inception_and_no_weights_says_where_to_put_them(digits_run, tmp_path, monkeypatch, capsys):
    from archbench.evaluation import inception

    run_dir, cache = digits_run
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    assert ev.main([f"run_dir={run_dir}", "num_samples=4", "features=inception", f"cache={cache}"]) == 1
    line = _error_line(capsys)
    assert inception.WEIGHTS_FILENAME in line and str(tmp_path / "hub" / "checkpoints") in line
