"""FeatureStats: streaming equals one-shot, save/load round trip, extraction from tensors and datasets."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from archbench.evaluation import FeatureStats, StatsAccumulator, feature_stats


def test_streaming_equals_one_shot_and_numpy():
    rng = np.random.default_rng(0)
    # A large mean offset: a naive sum-of-squares accumulator would lose most of its digits here.
    x = 1e4 + rng.standard_normal((1000, 12)) @ rng.standard_normal((12, 12))
    one = FeatureStats.from_features(x)
    sizes = [1, 7, 100, 250, 2, 640]
    batches = np.split(x, np.cumsum(sizes)[:-1])
    streamed = FeatureStats.from_batches(batches)
    assert streamed.n == one.n == 1000
    np.testing.assert_allclose(streamed.mu, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(streamed.sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(streamed.sigma, one.sigma, rtol=1e-9, atol=1e-9)
    assert streamed.frechet_distance(one) < 1e-8


def test_accepts_torch_batches_and_keeps_first_rows():
    x = torch.randn(50, 4)
    acc = StatsAccumulator(keep=30)
    for b in x.split(16):
        acc.update(b)
    stats = acc.result({"what": "test"})
    np.testing.assert_array_equal(stats.features, x[:30].numpy())
    assert stats.meta == {"what": "test"} and stats.dim == 4


def test_save_load_round_trip(tmp_path):
    x = np.random.default_rng(1).standard_normal((40, 5))
    stats = FeatureStats.from_features(x, keep=10)
    stats.meta = {"key": "k", "n": 3}
    path = stats.save(tmp_path / "sub" / "s.npz")
    back = FeatureStats.load(path)
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    np.testing.assert_array_equal(back.features, stats.features)
    assert back.n == 40 and back.meta == stats.meta
    assert not list(tmp_path.glob("sub/*.tmp*"))


def test_errors():
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats.from_features(np.zeros((1, 3)))
    acc = StatsAccumulator()
    acc.update(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dim changed"):
        acc.update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(N, dim\)"):
        acc.update(np.zeros(3))


class _MeanPool:
    """A trivial extractor: per-channel means and stds of the image."""

    name, dim, checksum, score_name = "meanpool", 2, "none", "FD-meanpool"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([images.mean((1, 2, 3)), images.std((1, 2, 3))], 1)


def test_feature_stats_from_tensor_and_dataset_agree():
    images = torch.rand(37, 1, 6, 6) * 2 - 1
    from_tensor = feature_stats(_MeanPool(), images, batch_size=8)
    from_dataset = feature_stats(_MeanPool(), TensorDataset(images, torch.zeros(37)), batch_size=5, keep=37)
    one_shot = FeatureStats.from_features(_MeanPool()(images))
    np.testing.assert_allclose(from_tensor.sigma, one_shot.sigma, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(from_dataset.mu, one_shot.mu, rtol=1e-6)
    assert from_dataset.features.shape == (37, 2)
    assert feature_stats(_MeanPool(), images, max_items=10).n == 10


def _save_many(path: str) -> None:
    import numpy as np

    from archbench.evaluation.stats import FeatureStats

    stats = FeatureStats(mu=np.zeros(512), sigma=np.eye(512), n=10, meta={"why": "race"})  # 2 MB: writes overlap
    for _ in range(40):
        stats.save(path)


def test_parallel_processes_can_fill_the_same_cache_entry(tmp_path):
    """A study's jobs compute the same reference statistics at once: neither may lose the other's file."""
    import multiprocessing

    from archbench.evaluation.stats import FeatureStats

    path = str(tmp_path / "ref.npz")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_save_many, args=(path,)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert FeatureStats.load(path).n == 10
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
