"""``train.compile`` (same losses as eager), and DiS under bf16 autocast for a few hundred steps at the
default recipe's learning rate without a non-finite loss."""

from __future__ import annotations

import math

import pytest
import torch
from train_support import losses, one_thread, run_train  # noqa: F401  (one_thread: autouse fixture)

from archbench.training.config import compose_config


def test_compiled_training_has_the_eager_losses(tmp_path):
    # aot_eager: the compiled graphs (forward and the derived backward) without inductor's C++ build time.
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    common = ("backbone=dis_t2", "train.steps=4", "train.compile=false")
    assert run_train(eager, *common) == 0
    assert run_train(compiled, *common[:2], "train.compile=aot_eager") == 0
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-5, abs=1e-7)


def test_compile_setting_is_checked(tmp_path, capsys):
    assert run_train(tmp_path / "bad", "train.compile=no_such_backend") == 1
    err = capsys.readouterr().err
    assert "train.compile='no_such_backend'" in err and "aot_eager" in err and "inductor" in err


def test_dis_trains_in_bf16_at_the_default_learning_rate(tmp_path):
    default = compose_config([])
    lr = float(default.train.lr)
    steps = 300
    code = run_train(
        tmp_path / "bf16", "backbone=dis_t2", f"train.steps={steps}", f"train.lr={lr}", "train.precision=bf16",
        "train.batch_size=8", "train.log_every=10", "train.grad_clip=1.0",
    )
    assert code == 0  # a non-finite loss or gradient ends the run with exit code 1
    values = losses(tmp_path / "bf16")
    assert len(values) == steps // 10 and all(math.isfinite(v) for v in values)
    assert sum(values[-5:]) < sum(values[:5])  # and it learns


def test_bf16_autocast_keeps_dis_parameters_and_scan_state_in_fp32():
    import archbench

    model = archbench.build("dis_t2", image_size=8, in_channels=1, num_classes=10)
    seen = []

    def record(module, args, output):
        seen.append(output.dtype)

    mixer = model.in_blocks[0].mixer
    handle = mixer.register_forward_hook(record)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 8, 8), torch.tensor([1, 500]), torch.tensor([0, 3]))
        out.float().square().mean().backward()
    handle.remove()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert seen == [torch.bfloat16]  # the projections run in bf16 under autocast ...
    from backbones.ssm import selective_scan

    # ... while the scan computes in fp32 whatever the input dtype: bf16 inputs give the fp32 result, rounded.
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(2, 8, 30, generator=g), torch.rand(2, 8, 30, generator=g)
    A = -torch.rand(8, 4, generator=g) - 0.5
    B, C = torch.randn(2, 4, 30, generator=g), torch.randn(2, 4, 30, generator=g)
    rounded = [t.bfloat16() for t in (u, delta)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = selective_scan(*rounded, A, B, C, impl="fast")
    exact, state = selective_scan(*(t.float() for t in rounded), A, B, C, impl="fast", return_last_state=True)
    assert low.dtype == torch.bfloat16 and state.dtype == torch.float32
    assert torch.equal(low, exact.bfloat16())
