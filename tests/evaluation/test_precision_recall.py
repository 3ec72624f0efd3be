"""k-NN precision/recall on toy point clouds with known answers."""

import numpy as np
import pytest

from archbench.evaluation import precision_recall
from archbench.evaluation.precision_recall import knn_radii


def test_identical_sets_give_one():
    x = np.random.default_rng(0).standard_normal((300, 8))
    pr = precision_recall(x, x.copy())
    assert pr.precision == 1.0 and pr.recall == 1.0 and pr.k == 3


def test_same_distribution_is_high():
    rng = np.random.default_rng(1)
    pr = precision_recall(rng.standard_normal((1000, 4)), rng.standard_normal((1000, 4)))
    assert pr.precision > 0.9 and pr.recall > 0.9


def test_disjoint_sets_give_zero():
    rng = np.random.default_rng(2)
    real, fake = rng.standard_normal((200, 8)), rng.standard_normal((200, 8)) + 100.0
    pr = precision_recall(real, fake)
    assert pr.precision == 0.0 and pr.recall == 0.0


def test_mode_collapse_keeps_precision_loses_recall():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((10, 3)) * 50
    real = np.concatenate([c + rng.standard_normal((200, 3)) for c in centres])
    fake = centres[0] + rng.standard_normal((2000, 3))  # one mode only
    pr = precision_recall(real, fake, chunk=128)
    assert pr.precision > 0.9
    assert pr.recall == pytest.approx(0.1, abs=0.01)


def test_half_off_manifold_halves_precision():
    rng = np.random.default_rng(4)
    real = rng.standard_normal((1000, 8))
    on = rng.standard_normal((500, 8))
    fake = np.concatenate([on, rng.standard_normal((500, 8)) + 50])
    # Far points are never inside the real manifold, so precision is exactly half that of the on-manifold half.
    assert precision_recall(real, fake).precision == pytest.approx(precision_recall(real, on).precision / 2)


def test_knn_radii_excludes_self():
    x = np.array([[0.0], [1.0], [3.0], [6.0]])
    np.testing.assert_allclose(knn_radii(x, k=1).numpy(), [1.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(knn_radii(x, k=3, chunk=1).numpy(), [6.0, 5.0, 3.0, 6.0])
    with pytest.raises(ValueError, match="k < number of points"):
        knn_radii(x, k=4)
