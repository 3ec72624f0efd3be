"""Non-finite settings and non-finite samples are refused in one line, never written as black images."""

import math

import pytest
import torch
from torch import nn
from train_support import run_cli

from archbench.diffusion import create_diffusion
from archbench.sampling.grid import generate
from archbench.sampling.settings import SamplingSettings


class Constant(nn.Module):
    """eps-prediction of a constant; its one weight can be made NaN."""

    def __init__(self, value: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(value))
        self.num_classes, self.null_class = 0, None

    def forward(self, x, t, y=None):
        return torch.cat([x * 0 + self.weight, x * 0], dim=1)


def test_generate_names_non_finite_weights():
    objective = create_diffusion("ddpm")
    with pytest.raises(ValueError, match="weights hold non-finite values \\(weight\\)"):
        generate(Constant(math.nan), objective, num_samples=2, shape=(1, 2, 2), labels=None, steps=3)


def test_generate_names_a_diverged_sampler():
    objective = create_diffusion("ddpm")
    with pytest.raises(ValueError, match="sampler diverged"):
        generate(Constant(1e38), objective, num_samples=2, shape=(1, 2, 2), labels=None, steps=3)


def test_finite_samples_pass():
    objective = create_diffusion("ddpm")
    out = generate(Constant(0.1), objective, num_samples=2, shape=(1, 2, 2), labels=None, steps=3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_settings_refuse_non_finite_guidance(value):
    with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
        SamplingSettings(sampler="ddim", cfg_scale=value)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_the_command_refuses_non_finite_numbers_in_one_line(tmp_path, text):
    proc = run_cli("archbench.sample", f"run_dir={tmp_path}", f"cfg_scale={text}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "cfg_scale must be a finite number" in lines[0], proc.stderr
