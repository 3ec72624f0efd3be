"""Inception Score and KID beside FID, through torch-fidelity, checked against torch-fidelity's own pipeline.

No Inception weights exist on this machine, so the network gets random weights saved to a local file: the
numbers mean nothing about image quality, but they are real computations on the exact code path (a local
weights file handed to torch-fidelity, one pass for FID, IS and KID), and torch-fidelity's end-to-end
``calculate_metrics`` on the same images and the same file must give the same IS and KID.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_support import one_thread  # noqa: F401

from archbench.commands import eval as ev
from archbench.data import build_dataset
from archbench.evaluation import inception as inc
from archbench.evaluation.fidelity import inception_score, isc_splits, kernel_inception_distance
from archbench.evaluation.train_cnn import load_tensors
from archbench.sampling.grid import from_uint8, to_uint8
from archbench.sampling.npz import write_npz

torch_fidelity = pytest.importorskip("torch_fidelity")
N = 6  # Inception at 299x299 costs about 0.3 s per image on one CPU thread


def _as_rgb(x: torch.Tensor) -> np.ndarray:
    return to_uint8(x.expand(-1, 3, -1, -1))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random Inception weights, made image-sensitive: PyTorch's default init shrinks the signal layer by layer
    until every image gets the same features (IS 1, KID 0), so each BatchNorm's statistics are set from a
    batch of real digits and the 1008-way head has the common feature direction projected out."""
    torch.manual_seed(0)
    net = inc.InceptionFeatures.random_init().network
    calibration, _ = load_tensors(build_dataset("digits", split="train", image_size=16), 8)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics
    net.train()
    with torch.no_grad():
        features, _ = net(torch.from_numpy(_as_rgb(calibration)).permute(0, 3, 1, 2).contiguous())
        direction = features.mean(0) / features.mean(0).norm()
        head = torch.randn(1008, 2048) * 8 / 2048**0.5
        net.fc.weight.copy_(head - (head @ direction)[:, None] * direction[None])
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def sets(weights, tmp_path_factory):
    """Generated side (real test digits, with labels), a reference batch (other test digits: mu, sigma and the
    images, as ADM's are) and the same batch without its images; one cache for the reference features."""
    folder = tmp_path_factory.mktemp("sets")
    x, y = load_tensors(build_dataset("digits", split="test", image_size=16), 2 * N)
    generated, real = _as_rgb(x[:N]), _as_rgb(x[N:])
    features = inc.InceptionFeatures.from_weights(weights)(from_uint8(real)).double().numpy()
    mu, sigma = features.mean(0), np.cov(features, rowvar=False)
    return {
        "generated": generated,
        "real": real,
        "samples": write_npz(folder / "samples.npz", {"arr_0": generated, "arr_1": y[:N].numpy()}),
        "ref": write_npz(folder / "ref.npz", {"mu": mu, "sigma": sigma, "arr_0": real}),
        "bare": write_npz(folder / "bare.npz", {"mu": mu, "sigma": sigma}),
        "cache": folder / "cache",
        "folder": folder,
    }


class _Uint8Images(torch.utils.data.Dataset):
    """What torch-fidelity reads: uint8 (3, H, W) tensors."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.pixels[i]


def _eval(sets: dict, weights, name: str, samples, ref) -> dict:
    out = sets["folder"] / f"{name}.json"
    argv = [f"samples={samples}", f"ref_npz={ref}", "features=inception", f"weights={weights}",
            f"cache={sets['cache']}", f"out={out}", "feature_batch_size=5"]
    assert ev.main(argv) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def ours(weights, sets):
    return _eval(sets, weights, "ours", sets["samples"], sets["ref"])


def test_is_and_kid_match_torch_fidelity_end_to_end(weights, sets, ours, monkeypatch):
    monkeypatch.setattr(torch_fidelity.feature_extractor_inceptionv3, "load_state_dict_from_url", _no_download)
    assert ours["score_name"] == "FID" and ours["feature_dim"] == 2048 and ours["num_samples"] == N
    assert ours["kid_subset_size"] == N and ours["isc_splits"] == N // 2
    assert ours["cond_accuracy"] is None  # Inception's 1008 logits are not the samples' classes
    assert ours["inception_score"] > 1.001 and np.isfinite(ours["kid"])  # not a degenerate network
    theirs = torch_fidelity.calculate_metrics(
        input1=_Uint8Images(sets["generated"]),
        input2=_Uint8Images(sets["real"]),
        cuda=False,
        isc=True,
        kid=True,
        fid=False,  # our Fréchet distance is tested on its own; a 2048-d one costs seconds here
        kid_subset_size=N,
        isc_splits=ours["isc_splits"],
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights),
        batch_size=5,
        save_cpu_ram=True,
        cache=False,
        verbose=False,
    )
    assert ours["inception_score"] == pytest.approx(theirs["inception_score_mean"], rel=1e-6)
    assert ours["inception_score_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-4)
    assert ours["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
    # one subset of N from N: every subset is the whole set, so the spread is round-off only
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-3, abs=1e-6)


def test_a_reference_batch_without_images_gives_fid_and_is_but_no_kid(weights, sets, ours):
    bare = _eval(sets, weights, "bare", sets["samples"], sets["bare"])  # mu/sigma only
    assert bare["kid"] is None and bare["kid_std"] is None and bare["precision"] is None
    # the same images through the same network (CPU convolutions may differ in the last bits between runs)
    assert bare["inception_score"] == pytest.approx(ours["inception_score"], rel=1e-6)
    assert bare["score"] == pytest.approx(ours["score"], rel=1e-6)


def test_inception_score_closed_forms():
    confident = torch.nn.functional.one_hot(torch.arange(200) % 8, 1008).double() * 60
    assert inception_score(confident, splits=1)[0] == pytest.approx(8, rel=1e-6)  # exp(H(uniform over 8))
    assert inception_score(torch.zeros(50, 1008), splits=5) == pytest.approx((1.0, 0.0))
    assert isc_splits(50_000) == 10 and isc_splits(10) == 5 and isc_splits(3) == 1
    with pytest.raises(ValueError, match="N >= 2"):
        inception_score(torch.zeros(1, 1008))


def test_kid_separates_distributions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g)
    shifted = b + 1.0
    same, _, size = kernel_inception_distance(a, b, subsets=20, subset_size=100)
    apart, _, _ = kernel_inception_distance(a, shifted, subsets=20, subset_size=100)
    assert size == 100 and abs(same) < 0.1 * apart
    assert kernel_inception_distance(a[:5], b, subsets=3)[2] == 5  # the subset shrinks to the smaller set


def _no_download(*args, **kwargs):
    raise AssertionError("torch-fidelity tried to download weights")
