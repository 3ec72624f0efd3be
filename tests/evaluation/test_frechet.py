"""Fréchet distance against closed forms, symmetry, singular and invalid covariances."""

import numpy as np
import pytest

from archbench.evaluation import frechet_distance


def _rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def _random_cov(dim: int, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    x = rng.standard_normal((n or 4 * dim, dim)) @ rng.standard_normal((dim, dim))
    return np.cov(x, rowvar=False)


def test_diagonal_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 5, 16), rng.uniform(0.1, 5, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_rotated_commuting_closed_form():
    rng = np.random.default_rng(1)
    r = _rotation(32, rng)
    a, b = rng.uniform(0.01, 3, 32), rng.uniform(0.01, 3, 32)
    mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
    got = frechet_distance(mu1, r @ np.diag(a) @ r.T, mu2, r @ np.diag(b) @ r.T)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_two_by_two_non_commuting_closed_form():
    # For 2x2 M with non-negative eigenvalues: tr(sqrt(M)) = sqrt(tr(M) + 2 sqrt(det(M))).
    rng = np.random.default_rng(2)
    for _ in range(20):
        s1, s2 = _random_cov(2, rng), _random_cov(2, rng)
        tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
        expected = np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
        assert frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_matches_scipy_sqrtm_on_full_rank():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(3)
    s1, s2 = _random_cov(24, rng), _random_cov(24, rng)
    mu1, mu2 = rng.standard_normal(24), rng.standard_normal(24)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_identical_distributions_give_zero():
    rng = np.random.default_rng(4)
    for dim in (1, 8, 128):
        mu, sigma = rng.standard_normal(dim), _random_cov(dim, rng)
        assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_symmetric_and_non_negative():
    rng = np.random.default_rng(5)
    s1, s2 = _random_cov(10, rng), _random_cov(10, rng)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 == pytest.approx(d21, rel=1e-9)
    assert d12 > 0


def test_singular_covariances_are_finite():
    rng = np.random.default_rng(6)
    dim = 64
    s1, s2 = _random_cov(dim, rng, n=10), _random_cov(dim, rng, n=20)  # ranks 9 and 19 out of 64
    d = frechet_distance(np.zeros(dim), s1, np.ones(dim), s2)
    assert np.isfinite(d) and d > dim  # the mean term alone is 64
    zero = np.zeros((dim, dim))
    assert frechet_distance(np.zeros(dim), zero, np.zeros(dim), zero) == 0.0
    # Against a zero covariance only the other trace remains: d = tr(s2).
    assert frechet_distance(np.zeros(dim), zero, np.zeros(dim), s2) == pytest.approx(np.trace(s2), rel=1e-12)
    # Same singular covariance on both sides still gives zero.
    assert abs(frechet_distance(np.zeros(dim), s1, np.zeros(dim), s1)) < 1e-8


def test_scalar_case():
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="same length"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))
