"""``python -m archbench.eval samples=SET.npz``: scoring a sample file against a dataset or an ADM reference batch,
and the conditional accuracy of a dataset classifier, on real images with true and with shuffled labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_support import REPO, one_thread  # noqa: F401

from archbench.commands import eval as ev
from archbench.data import build_dataset
from archbench.data.fashion_mnist import files_present
from archbench.evaluation import get_feature_extractor, reference_stats, train_dataset_cnn
from archbench.evaluation.train_cnn import load_tensors
from archbench.sampling.grid import to_uint8
from archbench.sampling.npz import write_npz

FASHION_CNN = REPO / "recipes" / "baselines" / "fashion_mnist_cnn.safetensors"


def _quiet(_: str) -> None:
    pass


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("[archbench]")]
    assert len(err) == 1, err
    assert err[0].startswith("archbench.eval: error: ")
    return err[0]


def _write_set(path: Path, images: torch.Tensor, labels: torch.Tensor | np.ndarray | None) -> Path:
    label_arr = np.full(len(images), -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    return write_npz(path, {"arr_0": to_uint8(images), "arr_1": label_arr})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A digits CNN trained long enough to classify (10 epochs, ~95% test accuracy) in a temporary cache."""
    root = tmp_path_factory.mktemp("sets-cache")
    meta = train_dataset_cnn("digits", epochs=10, cache=root, log=_quiet)
    assert meta["test_accuracy"] > 0.85
    return root


@pytest.fixture(scope="module")
def digits_test(tmp_path_factory):
    x, y = load_tensors(build_dataset("digits", split="test"))
    folder = tmp_path_factory.mktemp("sets")
    return folder, x, y


def _score(argv: list[str]) -> dict:
    assert ev.main([*argv, "progress=false"]) == 0
    out = next(a.split("=", 1)[1] for a in argv if a.startswith("out="))
    return json.loads(Path(out).read_text())


def test_cond_accuracy_is_high_for_true_labels_and_chance_for_shuffled(cache, digits_test, capsys):
    folder, x, y = digits_test
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    sets = {"true": y, "shuffled": shuffled, "unconditional": None}
    records = {}
    for name, labels in sets.items():
        path = _write_set(folder / f"{name}.npz", x, labels)
        records[name] = _score([f"samples={path}", "dataset=digits", f"cache={cache}", f"out={folder / name}.json"])
    assert records["true"]["cond_accuracy"] > 0.85
    assert records["shuffled"]["cond_accuracy"] < 0.25  # 10 classes: chance is 0.1
    assert records["unconditional"]["cond_accuracy"] is None
    assert records["true"]["num_samples"] == len(y) == 359
    assert "cond. accuracy 0." in capsys.readouterr().out
    # the same images score the same FD whatever their labels
    assert records["true"]["score"] == records["shuffled"]["score"] == records["unconditional"]["score"]
    for key in ("inception_score", "inception_score_std", "kid", "kid_std"):
        assert records["true"][key] is None  # not Inception features


@pytest.mark.skipif(not files_present(), reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
def test_cond_accuracy_with_the_committed_fashion_mnist_cnn(tmp_path):
    x, y = load_tensors(build_dataset("fashion_mnist", split="test"), 1000)
    common = ["dataset=fashion_mnist", f"weights={FASHION_CNN}", "ref_split=test", "ref_items=500",
              f"cache={tmp_path / 'cache'}"]
    true = _score([f"samples={_write_set(tmp_path / 't.npz', x, y)}", *common, f"out={tmp_path / 't.json'}"])
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    wrong = _score([f"samples={_write_set(tmp_path / 'w.npz', x, shuffled)}", *common, f"out={tmp_path / 'w.json'}"])
    assert true["cond_accuracy"] > 0.9 and 0.05 < wrong["cond_accuracy"] < 0.15  # README: 0.924 and 0.093
    assert true["feature_network"] == "fashion_mnist_cnn"


def test_a_classifier_of_another_dataset_gives_no_accuracy(cache, digits_test, tmp_path):
    if not FASHION_CNN.is_file():
        pytest.skip("committed Fashion-MNIST CNN missing")
    folder, x, y = digits_test
    path = _write_set(folder / "true.npz", x, y)
    record = _score([f"samples={path}", "dataset=digits", "features=fashion_mnist_cnn", f"weights={FASHION_CNN}",
                     f"cache={cache}", f"out={tmp_path / 'e.json'}"])
    assert record["cond_accuracy"] is None  # its head predicts clothes, not digits


def test_ref_npz_scores_like_the_dataset_reference_it_was_made_from(cache, digits_test, tmp_path):
    folder, x, y = digits_test
    samples = _write_set(folder / "true.npz", x, y)
    by_dataset = _score([f"samples={samples}", "dataset=digits", f"cache={cache}", f"out={tmp_path / 'd.json'}",
                         "num_samples=200"])
    assert by_dataset["reference_source"] == "dataset" and by_dataset["samples"]["used"] == 200
    stats = reference_stats("digits", "test", 8, get_feature_extractor("digits_cnn", cache=cache), cache=cache)
    ref = write_npz(tmp_path / "ref.npz", {"mu": stats.mu, "sigma": stats.sigma})
    by_batch = _score([f"samples={samples}", f"ref_npz={ref}", "features=digits_cnn", f"cache={cache}",
                       f"out={tmp_path / 'r.json'}", "num_samples=200"])
    assert by_batch["score"] == pytest.approx(by_dataset["score"], rel=1e-12)
    assert by_batch["reference_source"] == "ref_npz" and by_batch["reference"]["path"] == str(ref)
    assert len(by_batch["reference"]["sha256"]) == 64 and by_batch["reference_items"] is None
    assert by_batch["precision"] is None  # mu/sigma only: no reference points
    assert by_batch["cond_accuracy"] is None  # no dataset named: whose classes would the labels be?

    train_x, _ = load_tensors(build_dataset("digits", split="train"))
    with_images = write_npz(tmp_path / "ref_images.npz", {"mu": stats.mu, "sigma": stats.sigma,
                                                          "arr_0": to_uint8(train_x)})
    record = _score([f"samples={samples}", f"ref_npz={with_images}", "dataset=digits", f"cache={cache}",
                     f"out={tmp_path / 'ri.json'}", "num_samples=200"])
    assert record["score"] == by_batch["score"]  # mu and sigma are used exactly as stored
    assert 0.5 < record["precision"] <= 1 and 0.5 < record["recall"] <= 1  # real digits against real digits
    assert record["reference"]["images"] == len(train_x) and record["cond_accuracy"] > 0.85
    assert (cache / "reference" / f"{record['reference']['key']}.npz").is_file()


def test_a_sample_file_from_archbench_sample_records_how_it_was_drawn(cache, tmp_path):
    from train_support import run_train

    from archbench.sample import main as sample_main

    run_dir = tmp_path / "run"
    assert run_train(run_dir, "train.steps=1") == 0
    samples = tmp_path / "set.npz"
    assert sample_main([f"run_dir={run_dir}", f"out={samples}", "num_samples=12", "chunk_size=5", "sampler=ddpm",
                        "steps=2", "progress=false"]) == 0
    assert ev.main([f"samples={samples}", f"run_dir={run_dir}", f"cache={cache}", "progress=false"]) == 0
    record = json.loads((run_dir / "eval.json").read_text())
    assert (record["sampler"], record["steps"], record["seed"], record["step"]) == ("ddpm", 2, 0, 1)
    assert record["dataset"] == "digits" and record["backbone"] == "dit_t2" and record["num_samples"] == 12
    assert record["samples"]["meta"]["chunk_size"] == 5 and 0 <= record["cond_accuracy"] <= 1
    assert record["reference"]["image_size"] == 8  # the samples' resolution
    # sampling from the run against an ADM-style reference batch made from the same reference statistics
    stats = reference_stats("digits", "test", 8, get_feature_extractor("digits_cnn", cache=cache), cache=cache)
    ref = write_npz(tmp_path / "ref.npz", {"mu": stats.mu, "sigma": stats.sigma})
    common = [f"run_dir={run_dir}", "num_samples=12", "steps=2", f"cache={cache}", "progress=false"]
    assert ev.main([*common, f"out={tmp_path / 'a.json'}"]) == 0
    assert ev.main([*common, f"ref_npz={ref}", f"out={tmp_path / 'b.json'}"]) == 0
    by_dataset, by_batch = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert by_batch["reference_source"] == "ref_npz" and by_batch["score"] == pytest.approx(by_dataset["score"])
    assert by_batch["cond_accuracy"] == by_dataset["cond_accuracy"] is not None  # the run names its dataset


@pytest.mark.parametrize(
    ("arrays", "args", "fragment"),
    [
        ({"arr_0": np.zeros((3, 8, 8, 1), np.float32)}, ["dataset=digits"], "arr_0 is float32 of shape (3, 8, 8, 1)"),
        ({"latents": np.zeros((3, 4, 8, 8), np.float32)}, ["dataset=digits"], "latents, which need the VAE"),
        ({"arr_0": np.zeros((3, 8, 8, 1), np.uint8)}, [], "ref_npz=<ADM reference batch .npz> or dataset=<name>"),
        ({"arr_0": np.zeros((3, 8, 8, 1), np.uint8)}, ["dataset=mnist"], "unknown dataset 'mnist'; valid: "),
        ({"arr_0": np.zeros((3, 8, 8, 1), np.uint8)}, ["dataset=digits", "num_samples=4"], "holds only 3 images"),
        ({"arr_0": np.zeros((3, 8, 6, 1), np.uint8)}, ["dataset=digits"], "8x6 images; dataset references are square"),
        ({"arr_0": np.zeros((3, 8, 8, 1), np.uint8), "arr_1": np.zeros(2, np.int64)}, ["dataset=digits"],
         "one integer label per image (3)"),
    ],
)
def test_bad_sample_files_fail_in_one_line(cache, tmp_path, capsys, arrays, args, fragment):
    path = write_npz(tmp_path / "s.npz", arrays)
    assert ev.main([f"samples={path}", f"cache={cache}", *args]) == 1
    assert fragment in _error_line(capsys)


def test_missing_and_non_npz_sample_files(tmp_path, capsys):
    assert ev.main([f"samples={tmp_path / 'none.npz'}", "dataset=digits"]) == 1
    assert "no such file" in _error_line(capsys)
    (tmp_path / "text.npz").write_text("hello")
    assert ev.main([f"samples={tmp_path / 'text.npz'}", "dataset=digits"]) == 1
    assert "is not a readable .npz" in _error_line(capsys)


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"mu": np.zeros(128)}, "has no sigma array (keys: mu); an ADM reference batch for features=digits_cnn "
                                "holds mu (128,) and sigma (128, 128)"),
        ({"arr_0": np.zeros((2, 8, 8, 1), np.uint8)}, "has no mu and no sigma array"),
        ({"mu": np.zeros(2048), "sigma": np.eye(2048)}, "mu has shape (2048,) and sigma (2048, 2048)"),
        ({"mu": np.full(128, np.nan), "sigma": np.eye(128)}, "non-finite"),
    ],
)
def test_bad_reference_batches_fail_in_one_line(cache, digits_test, tmp_path, capsys, arrays, fragment):
    folder, x, y = digits_test
    samples = _write_set(folder / "true.npz", x, y)
    ref = write_npz(tmp_path / "ref.npz", arrays)
    assert ev.main([f"samples={samples}", f"ref_npz={ref}", "features=digits_cnn", f"cache={cache}"]) == 1
    assert fragment in _error_line(capsys)
    assert ev.main([f"samples={samples}", f"ref_npz={tmp_path / 'none.npz'}", "features=digits_cnn",
                    f"cache={cache}"]) == 1
    assert "ref_npz=" in _error_line(capsys)
