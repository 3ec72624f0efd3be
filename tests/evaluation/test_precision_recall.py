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


def _exact_coverage(points: np.ndarray, support: np.ndarray, k: int = 3) -> float:
    """Brute force with explicit differences (no |a|^2 + |b|^2 - 2ab): the ground truth."""
    within = np.sqrt(((support[:, None, :] - support[None, :, :]) ** 2).sum(-1))
    radii = np.sort(within, axis=1)[:, k]
    across = np.sqrt(((points[:, None, :] - support[None, :, :]) ** 2).sum(-1))
    return float((across <= radii[None, :]).any(axis=1).mean())


def test_a_large_common_offset_does_not_change_the_answer():
    # Features with a large common offset and a small spread (1e5 and 1e-2): the expansion trick on raw
    # features gets the radii wrong by several percent; centring first makes it match brute force.
    rng = np.random.default_rng(7)
    real = 1e5 + 1e-2 * rng.standard_normal((400, 16))
    fake = 1e5 + 1e-2 * (0.8 * rng.standard_normal((400, 16)) + 0.3)
    pr = precision_recall(real, fake)
    assert pr.precision == pytest.approx(_exact_coverage(fake, real), abs=1e-12)
    assert pr.recall == pytest.approx(_exact_coverage(real, fake), abs=1e-12)
    shifted = precision_recall(real - 1e5, fake - 1e5)
    assert (pr.precision, pr.recall) == (shifted.precision, shifted.recall)
    radii = knn_radii(real).numpy()
    exact = np.sort(np.sqrt(((real[:, None] - real[None]) ** 2).sum(-1)), axis=1)[:, 3]
    np.testing.assert_allclose(radii, exact, rtol=1e-6)
