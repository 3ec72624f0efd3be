"""``python -m archbench.eval``: argument errors as one line, train-features, a run evaluated end to end, and the
library call ``evaluate(EvalRequest(...))`` the command makes (the same numbers either way)."""

import json
import subprocess
import sys

import pytest

from archbench.commands import eval as ev


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("archbench.eval: error: ")
    return err[0]


def test_help_lists_every_key_of_the_request(capsys):
    from dataclasses import fields

    from archbench.evaluation.evaluate import EvalRequest

    assert ev.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "run_dir=" in out and "train-features" in out and "features=" in out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert {f.name for f in fields(EvalRequest)} <= listed and {f.name for f in fields(ev.TrainFeaturesArgs)} <= listed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bogus=1"], "unknown key 'bogus'; valid keys: run_dir"),
        (["num_sample=4"], "unknown key 'num_sample' (did you mean 'num_samples'?)"),
        (["num_samples=abc"], "num_samples must be an integer"),
        (["num_samples=0"], "num_samples must be >= 1, got 0"),
        (["run_dir"], "arguments are key=value"),
        (["train-features", "dataset=digits", "epochs=-1"], "epochs must be >= 1"),
        (["train-features", "lr=1"], "unknown key 'lr'"),
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
    assert "unknown key 'foo'" in proc.stderr


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
    assert record["reference"]["key"] == f"digits-test-16px-digits_cnn-{side['sha256'][:16]}-all"  # held out
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


def test_the_command_parses_into_the_request_the_library_takes():
    from archbench.console.args import parse_args
    from archbench.evaluation.evaluate import EvalRequest

    assert parse_args(EvalRequest, []) == EvalRequest()
    argv = ["run_dir=r", "sampler=ddpm", "steps=7", "cfg_scale=2.5", "seed=3", "batch_size=9", "num_samples=11",
            "ref_split=test", "features=digits_cnn", "progress=false"]
    assert parse_args(EvalRequest, argv) == EvalRequest(
        run_dir="r", num_samples=11, features="digits_cnn", ref_split="test", progress=False, sampler="ddpm",
        steps=7, cfg_scale=2.5, seed=3, batch_size=9)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_samples": 0}, "num_samples must be an integer >= 1, got 0"),
    ({"feature_batch_size": -2}, "feature_batch_size must be an integer >= 1, got -2"),
    ({"steps": 2.5}, "steps must be an integer >= 1, got 2.5"),
    ({"guide_channels": True}, "guide_channels must be an integer >= 1, got True"),
])
def test_a_bad_request_is_refused_before_any_work(kwargs, message):
    from archbench.console.errors import UsageError
    from archbench.evaluation.evaluate import EvalError, EvalRequest

    with pytest.raises(EvalError, match=message) as info:
        EvalRequest(run_dir="r", **kwargs)
    assert isinstance(info.value, UsageError)  # the one "bad argument" every command reports in one line


def test_evaluate_called_directly_gives_the_commands_numbers(digits_run, tmp_path, capsys):
    from archbench.evaluation.evaluate import EvalRequest, evaluate
    from archbench.evaluation.metrics import METRICS, result_line

    run_dir, cache = digits_run
    argv = [f"run_dir={run_dir}", "num_samples=12", "steps=2", "batch_size=6", "seed=5", f"cache={cache}",
            "progress=false", f"out={tmp_path / 'command.json'}"]
    assert ev.main(argv) == 0
    printed = capsys.readouterr().out
    command = json.loads((tmp_path / "command.json").read_text())
    record = evaluate(EvalRequest(run_dir=str(run_dir), num_samples=12, steps=2, batch_size=6, seed=5,
                                  cache=str(cache), progress=False, out=str(tmp_path / "library.json")))
    assert record["path"] == str(tmp_path / "library.json")
    assert json.loads((tmp_path / "library.json").read_text()) == {k: v for k, v in record.items() if k != "path"}
    for metric in METRICS.values():
        for key in metric.record_keys:
            assert record[key] == command[key], key  # every number, to the last digit
    same = {k: v for k, v in record.items() if k not in ("seconds", "path")}
    assert same == {k: v for k, v in command.items() if k != "seconds"}
    assert printed.strip() == f"{result_line(record)}; wrote {tmp_path / 'command.json'}"
    assert (record["seed"], record["steps"], record["num_samples"]) == (5, 2, 12)


def test_the_committed_dataset_cnn_is_used_without_retraining(tmp_path):
    """Issue 23.10: features=fashion_mnist_cnn scores with the committed network (the one CI and the studies use)
    instead of asking for a retrain that gives the same bytes; digits has none committed, so it is asked for."""
    from archbench.evaluation.cond_accuracy import committed_classifier
    from archbench.evaluation.evaluate import EvalError, EvalRequest, check_feature_network

    request = EvalRequest(run_dir="r", features="fashion_mnist_cnn", cache=str(tmp_path))
    check_feature_network(request, "fashion_mnist")  # no cache, no weights=: still found
    from archbench.evaluation.evaluate import _feature_weights

    assert _feature_weights(request, "fashion_mnist_cnn") == str(committed_classifier("fashion_mnist"))
    with pytest.raises(EvalError, match=r"train-features dataset=digits"):
        check_feature_network(EvalRequest(run_dir="r", features="auto", cache=str(tmp_path)), "digits")
    assert EvalRequest(run_dir="r").ref_split == "test"  # held out, as the studies and CI score
