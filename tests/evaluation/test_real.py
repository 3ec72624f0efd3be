"""The FD and precision/recall on real Fashion-MNIST, with the project's CNN trained once per test module.

Sanity ordering: FD(real A, real B) < small noise < blur < one class only (every class) < pure noise.
The CNN is trained briefly (1 epoch on 10k images, deterministic) into a temporary cache: the full
``train-features`` recipe (3 epochs on 60k) is what users run, and orders the same way.
"""

import json

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from archbench.data import build_dataset
from archbench.data.fashion_mnist import files_present
from archbench.evaluation import (
    feature_stats,
    get_feature_extractor,
    precision_recall,
    reference_stats,
    train_dataset_cnn,
)
from archbench.evaluation.dataset_cnn import sidecar_path
from archbench.evaluation.train_cnn import load_tensors

pytestmark = pytest.mark.skipif(
    not files_present(), reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist"
)
N = 2000


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Small convolutions on a shared 2-core machine run several times faster on one thread than on two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("archbench-cache")


@pytest.fixture(scope="module")
def trained(cache):
    return train_dataset_cnn(
        "fashion_mnist", epochs=1, max_train_items=10_000, max_test_items=N, cache=cache, log=_quiet
    )


@pytest.fixture(scope="module")
def extractor(trained, cache):
    return get_feature_extractor("fashion_mnist_cnn", cache=cache)


@pytest.fixture(scope="module")
def image_sets():
    test_x, _ = load_tensors(build_dataset("fashion_mnist", split="test"), 2 * N)
    train_x, train_y = load_tensors(build_dataset("fashion_mnist", split="train"))
    a, b = test_x[:N], test_x[N:]
    g = torch.Generator().manual_seed(0)
    sets = {
        "real B": b,
        "noise 0.05": (b + 0.05 * torch.randn(b.shape, generator=g)).clamp(-1, 1),
        "blur 0.5": gaussian_blur(b, [5, 5], [0.5, 0.5]),
        **{f"class {c}": train_x[train_y == c][:N] for c in range(10)},
        "pure noise": torch.rand(b.shape, generator=g) * 2 - 1,
    }
    return a, sets


@pytest.fixture(scope="module")
def scores(extractor, image_sets):
    a, sets = image_sets
    ref = feature_stats(extractor, a, keep=N)
    out = {}
    for name, images in sets.items():
        stats = feature_stats(extractor, images, keep=N)
        pr = precision_recall(ref.features, stats.features)
        out[name] = (ref.frechet_distance(stats), pr.precision, pr.recall)
    print("\n" + "\n".join(f"{k:>10}: FD {v[0]:9.4f}  precision {v[1]:.3f}  recall {v[2]:.3f}" for k, v in out.items()))
    return out


def test_trained_network_and_sidecar(trained, extractor):
    assert trained["test_accuracy"] > 0.8  # short training; the full recipe reaches ~0.91
    side = json.loads(sidecar_path(trained["path"]).read_text())
    assert side["sha256"] == extractor.checksum and side["dataset"] == "fashion_mnist"
    assert extractor.dim == side["feature_dim"] == 128 and extractor.score_name == "FD-fashion_mnist_cnn"


def test_training_is_deterministic(tmp_path):
    kw = {"epochs": 1, "max_train_items": 1000, "max_test_items": 200, "log": _quiet}
    before = torch.are_deterministic_algorithms_enabled()
    a = train_dataset_cnn("fashion_mnist", out=tmp_path / "a.safetensors", **kw)
    b = train_dataset_cnn("fashion_mnist", out=tmp_path / "b.safetensors", seed=0, **kw)
    c = train_dataset_cnn("fashion_mnist", out=tmp_path / "c.safetensors", seed=1, **kw)
    assert a["sha256"] == b["sha256"] != c["sha256"]
    assert torch.are_deterministic_algorithms_enabled() == before  # the caller's setting is restored


def test_fd_increases_with_degradation(scores):
    fd = {k: v[0] for k, v in scores.items()}
    one_class = [fd[f"class {c}"] for c in range(10)]
    chain = [fd["real B"], fd["noise 0.05"], fd["blur 0.5"], min(one_class), max(one_class), fd["pure noise"]]
    assert all(x < y for x, y in zip(chain, chain[1:], strict=False)), chain
    assert fd["real B"] < 1.0 < fd["pure noise"] / 10


def test_precision_recall_on_real_data(scores):
    _, p_real, r_real = scores["real B"]
    assert p_real > 0.7 and r_real > 0.7
    for c in range(10):  # one class: realistic images (precision) but poor coverage (recall)
        _, p, r = scores[f"class {c}"]
        assert p > 0.7 and r < 0.6
    _, p_noise, r_noise = scores["pure noise"]
    assert p_noise < 0.05 and r_noise < 0.05


def test_reference_stats_are_cached(extractor, cache, image_sets, monkeypatch):
    a, _ = image_sets
    ref = reference_stats("fashion_mnist", "test", None, extractor, max_items=N, cache=cache)
    assert ref.n == N and ref.meta["feature_checksum"] == extractor.checksum
    assert extractor.checksum[:16] in ref.meta["key"] and "28px" in ref.meta["key"]
    direct = feature_stats(extractor, a)
    np.testing.assert_allclose(ref.mu, direct.mu, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ref.sigma, direct.sigma, rtol=1e-5, atol=1e-8)
    assert list((cache / "reference").glob("*.npz")) == [cache / "reference" / f"{ref.meta['key']}.npz"]

    import archbench.evaluation.reference as reference

    monkeypatch.setattr(reference, "feature_stats", lambda *a, **k: pytest.fail("recomputed a cached reference"))
    again = reference_stats("fashion_mnist", "test", None, extractor, max_items=N, cache=cache)
    np.testing.assert_array_equal(again.sigma, ref.sigma)
    np.testing.assert_array_equal(again.features, ref.features)
