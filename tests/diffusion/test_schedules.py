"""Schedules and timestep respacing."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from archbench.diffusion import DiffusionSchedule, cosine_betas, linear_betas, make_betas, space_timesteps
from archbench.diffusion.schedules import respace_betas


def test_linear_betas_match_ddpm_endpoints():
    betas = linear_betas(1000)
    assert betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    # Scaled for other T so that T * beta stays comparable.
    assert linear_betas(250)[0].item() == pytest.approx(4e-4)
    assert linear_betas(250)[-1].item() == pytest.approx(0.08)


def test_cosine_betas_follow_alpha_bar_and_are_clipped():
    T = 1000
    betas = cosine_betas(T)
    assert betas.max().item() == pytest.approx(0.999)
    ac = torch.cumprod(1 - betas, 0)

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    for i in (0, 10, 500, 900):
        assert ac[i].item() == pytest.approx(f((i + 1) / T) / f(0), rel=1e-9)


def test_schedule_quantities_are_consistent():
    s = DiffusionSchedule.from_name("linear", 1000)
    assert s.num_timesteps == 1000
    assert torch.allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    assert s.alphas_cumprod_prev[0] == 1.0 and s.alphas_cumprod_next[-1] == 0.0
    assert torch.allclose(
        s.sqrt_alphas_cumprod**2 + s.sqrt_one_minus_alphas_cumprod**2, torch.ones(1, dtype=torch.float64)
    )
    assert s.posterior_variance[0] == 0.0
    assert torch.isfinite(s.posterior_log_variance_clipped).all()
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    assert torch.equal(s.timestep_map, torch.arange(1000))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_full_respacing_reproduces_betas(name):
    s = DiffusionSchedule.from_name(name, 1000)
    r = s.respaced(range(1000))
    assert torch.allclose(r.betas, s.betas, rtol=1e-10, atol=1e-14)
    assert torch.equal(r.timestep_map, s.timestep_map)


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(["linear", "cosine"]),
    kept=st.sets(st.integers(0, 199), min_size=1, max_size=40),
)
def test_respaced_alphas_cumprod_match_original_at_kept_steps(name, kept):
    s = DiffusionSchedule.from_name(name, 200)
    r = s.respaced(kept)
    idx = torch.tensor(sorted(kept))
    assert torch.allclose(r.alphas_cumprod, s.alphas_cumprod[idx], rtol=1e-10)
    assert torch.equal(r.timestep_map, idx)


def test_respacing_composes_timestep_maps():
    s = DiffusionSchedule.from_name("linear", 1000)
    once = s.respaced(range(0, 1000, 10))  # 100 steps
    twice = once.respaced([0, 50, 99])
    assert twice.timestep_map.tolist() == [0, 500, 990]
    assert torch.allclose(twice.alphas_cumprod, s.alphas_cumprod[[0, 500, 990]])


def test_respace_betas_rejects_out_of_range():
    with pytest.raises(ValueError):
        respace_betas(linear_betas(10), [10])
    with pytest.raises(ValueError):
        respace_betas(linear_betas(10), [])


def test_space_timesteps_formats():
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    kept = space_timesteps(1000, "50")
    assert len(kept) == 50 and min(kept) == 0 and max(kept) == 999
    assert space_timesteps(1000, 50) == kept
    assert space_timesteps(1000, [50]) == kept
    assert space_timesteps(100, "10") == set(range(0, 100, 11))
    sections = space_timesteps(300, "10,10,10")
    assert len(sections) == 30
    assert {0, 99, 100, 199, 200, 299} <= sections
    assert space_timesteps(10, "1,1") == {0, 5}
    assert space_timesteps(1000, "1000") == set(range(1000))


@pytest.mark.parametrize("bad", ["ddim7", "0", "5,x", "20,20", ""])
def test_space_timesteps_rejects_impossible(bad):
    with pytest.raises(ValueError):
        space_timesteps(30, bad)


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError, match="linear, cosine"):
        make_betas("quadratic", 10)


def _round_of_product(T: int, n: int) -> set[int]:
    """The rule the official code does *not* use: round(j * stride) for each j."""
    stride = (T - 1) / (n - 1) if n > 1 else 1.0
    return {round(j * stride) for j in range(n)}


def test_respacing_accumulates_the_stride_like_the_official_code():
    # improved-diffusion adds a float stride step by step and rounds the running position; at exact .5
    # ties that lands one step away from round(j * stride). N=21 of T=1000: the 11th kept step is 499.
    assert sorted(space_timesteps(1000, 21))[10] == 499
    assert sorted(_round_of_product(1000, 21))[10] == 500
    differing = [n for n in range(1, 1000) if space_timesteps(1000, n) != _round_of_product(1000, n)]
    assert len(differing) == 278
    assert sum(space_timesteps(4000, n) != _round_of_product(4000, n) for n in range(1, 4000)) == 1263
    # Sections accumulate within each section: 21 steps in each half of 2000 reproduces the same tie.
    assert sorted(space_timesteps(2000, "21,21"))[10] == 499


def test_linspace_spacing_is_available_under_its_own_name():
    assert space_timesteps(1000, "linspace21") == {int(v) for v in np.round(np.linspace(0, 999, 21))}
    assert 500 in space_timesteps(1000, "linspace21") and 499 not in space_timesteps(1000, "linspace21")
    with pytest.raises(ValueError, match="linspace"):
        space_timesteps(1000, "linspace0")


def test_bad_respacing_strings_say_what_is_valid():
    with pytest.raises(ValueError, match="ddimN"):
        space_timesteps(1000, "fifty")
    with pytest.raises(ValueError, match="fixed stride"):
        space_timesteps(1000, "ddim1")  # no integer stride in [1, T) gives a single step, as officially
