"""The feed-forward, drop-path and truncated-normal pieces written here instead of imported from timm: the same
state-dict names, seeded initialisation, outputs and random draws as timm's (which the official DiT, U-ViT and DiS
code use), and the start-up cost they exist to save (no timm, torchvision or torch._dynamo on import)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from timm.layers import DropPath as TimmDropPath
from timm.layers import Mlp as TimmMlp
from timm.layers import trunc_normal_ as timm_trunc_normal_

from backbones.layers.drop_path import DropPath
from backbones.layers.mlp import Mlp
from backbones.layers.trunc_normal import trunc_normal_


def tanh_gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


@pytest.mark.parametrize(("act", "hidden", "out"), [(nn.GELU, 64, None), (tanh_gelu, 48, 24), (nn.SiLU, None, None)])
def test_mlp_matches_timm_in_names_seeded_init_and_outputs(act, hidden, out):
    torch.manual_seed(3)
    ours = Mlp(32, hidden, out, act_layer=act)
    torch.manual_seed(3)
    theirs = TimmMlp(32, hidden, out, act_layer=act)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    x = torch.randn(4, 7, 32)
    assert torch.equal(ours(x), theirs(x))
    assert [name for name, _ in ours.named_children()] == [name for name, _ in theirs.named_children()]


def test_drop_path_draws_the_same_samples_as_timm_and_is_the_identity_in_eval():
    ours, theirs = DropPath(0.3), TimmDropPath(0.3)
    x = torch.randn(64, 5, 8)
    torch.manual_seed(0)
    a = ours(x)
    torch.manual_seed(0)
    b = theirs(x)
    assert torch.equal(a, b)
    dropped = (a == 0).flatten(1).all(1)
    assert 0 < int(dropped.sum()) < 64  # some samples dropped whole, the rest kept
    assert torch.allclose(a[~dropped], x[~dropped] / 0.7)
    assert torch.equal(ours.eval()(x), x) and torch.equal(DropPath(0.0).train()(x), x)
    with pytest.raises(ValueError, match=r"drop path rate must be in \[0, 1\), got 1.0"):
        DropPath(1.0)


@pytest.mark.parametrize(("mean", "std", "a", "b"), [(0.0, 0.02, -2.0, 2.0), (0.0, 1.0, -2.0, 2.0), (0.5, 1, 0, 1)])
def test_trunc_normal_draws_timms_numbers_from_a_seed(mean, std, a, b):
    ours, theirs = torch.empty(300, 20), torch.empty(300, 20)
    torch.manual_seed(1)
    trunc_normal_(ours, mean, std, a, b)
    torch.manual_seed(1)
    timm_trunc_normal_(theirs, mean, std, a, b)
    assert torch.equal(ours, theirs)
    assert ours.min() >= a and ours.max() <= b and ours.std() > 0


def test_the_training_command_imports_neither_timm_nor_torch_dynamo():
    """All of timm (models, torchvision, wandb) and torch._dynamo (sympy) cost about 3 s of start-up on a loaded
    2-core machine, in every command; what a run needs comes later or not at all."""
    heavy = ("timm", "torchvision", "torch._dynamo", "sympy", "wandb")
    code = ("import sys, archbench.commands.train, archbench.training.launch, archbench.sampling, backbones\n"
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == [], f"imported at start-up: {loaded}"
