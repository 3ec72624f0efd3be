"""Official checkpoints (DiT, U-ViT, DiS) load strictly into our models and reproduce their outputs.

The fixtures are tiny models built and randomised with the official code; see
tests/fixtures/official/README.md for how they were made.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import archbench
from backbones.official import (
    OFFICIAL_RENAMES,
    OfficialCheckpointError,
    convert_official_state_dict,
    convert_to_official_state_dict,
    describe_state_dict,
    load_official,
    load_official_state_dict,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"

# fixture -> (family, registered name, build overrides matching the official constructor)
CASES = {
    "dit_tiny": ("dit", "dit_s2", dict(image_size=8, in_channels=4, width=32, depth=2, num_heads=4, num_classes=10)),
    "uvit_tiny_uncond": (
        "uvit",
        "uvit_s2",
        dict(image_size=8, in_channels=3, width=32, depth=4, num_heads=4, num_classes=0),
    ),
    "uvit_tiny_cond": (  # official num_classes=11 (10 + null row), conv=False
        "uvit",
        "uvit_s2",
        dict(image_size=8, in_channels=4, width=32, depth=4, num_heads=4, num_classes=10, final_conv=False),
    ),
    "uvit_tiny_mlptime": (
        "uvit",
        "uvit_s2",
        dict(image_size=8, in_channels=3, width=32, depth=4, num_heads=4, num_classes=10, mlp_time_embed=True),
    ),
    "dis_tiny_cond": ("dis", "dis_s2", dict(image_size=8, in_channels=3, width=32, depth=4, num_classes=10)),
    "dis_tiny_uncond": ("dis", "dis_s2", dict(image_size=8, in_channels=3, width=32, depth=4, num_classes=0)),
}
EXACT = ["dit_tiny", "uvit_tiny_uncond", "uvit_tiny_cond", "uvit_tiny_mlptime"]
DIS = ["dis_tiny_cond", "dis_tiny_uncond"]


def checkpoint(case: str) -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / f"{case}.pth", map_location="cpu", weights_only=True)


def io(case: str) -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / f"{case}_io.pt", map_location="cpu", weights_only=True)


def run(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(data["x"], data["t"], data.get("y"))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("case", EXACT)
def test_official_output_reproduced(case):
    _, name, overrides = CASES[case]
    model = load_official(name, FIXTURES / f"{case}.pth", **overrides)
    assert not model.training
    data = io(case)
    out = run(model, data)
    assert out.shape == data["out"].shape and out.dtype == torch.float32
    assert max_diff(out, data["out"]) < 1e-5
    assert data["out"].abs().mean() > 1e-2  # the fixture is not a trivial all-zero output


@pytest.mark.parametrize("case", DIS)
def test_dis_loads_strictly_and_runs(case):
    family, name, overrides = CASES[case]
    official = checkpoint(case)
    model = load_official(name, official, **overrides)
    loaded = model.state_dict()
    converted = convert_official_state_dict(family, official)
    assert set(loaded) == set(converted)
    for key, value in converted.items():
        assert torch.equal(loaded[key], value), key
    data = io(case)
    out = run(model, data)
    assert out.shape == (data["x"].shape[0], 2 * data["x"].shape[1], *data["x"].shape[2:])
    assert torch.isfinite(out).all()
    # The reference output comes from the official DiS model with the CUDA kernels replaced by
    # mamba's / causal-conv1d's own PyTorch reference functions (see the fixtures README).
    assert max_diff(out, data["out"]) < 1e-5


# --------------------------------------------------------------------------- DiT pos_embed


def test_dit_pos_embed_is_the_official_table():
    _, name, overrides = CASES["dit_tiny"]
    ours = archbench.build(name, **overrides).pos_embed
    assert not ours.requires_grad
    assert max_diff(ours, checkpoint("dit_tiny")["pos_embed"]) < 1e-6


def test_dit_checkpoint_without_pos_embed_loads():
    _, name, overrides = CASES["dit_tiny"]
    official = checkpoint("dit_tiny")
    del official["pos_embed"]
    model = load_official(name, official, **overrides)
    assert not model.pos_embed.requires_grad
    data = io("dit_tiny")
    assert max_diff(run(model, data), data["out"]) < 1e-5


# --------------------------------------------------------------------------- wrappers


def test_training_checkpoint_prefers_ema(tmp_path):
    _, name, overrides = CASES["dit_tiny"]
    ema = checkpoint("dit_tiny")
    raw = {k: torch.randn_like(v) for k, v in ema.items()}  # the non-EMA weights differ
    path = tmp_path / "0400000.pt"
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))]).state_dict()
    args = argparse.Namespace(model="DiT-S/2", image_size=64, global_seed=0)
    torch.save({"model": raw, "ema": ema, "opt": opt, "args": args}, path)
    data = io("dit_tiny")
    for source in (path, {"model": raw, "ema": ema}):
        model = load_official(name, source, **overrides)
        assert max_diff(run(model, data), data["out"]) < 1e-5
    assert load_official_state_dict({"model": raw, "ema": ema})[1] == "ema"


def test_model_only_wrapper_and_ddp_prefix():
    _, name, overrides = CASES["uvit_tiny_uncond"]
    official = checkpoint("uvit_tiny_uncond")
    data = io("uvit_tiny_uncond")
    model = load_official(name, {"model": official}, **overrides)
    assert max_diff(run(model, data), data["out"]) < 1e-5
    wrapped = {f"module.{k}": v for k, v in official.items()}
    model = load_official(name, wrapped, **overrides)
    assert max_diff(run(model, data), data["out"]) < 1e-5


def test_non_state_dict_rejected():
    with pytest.raises(OfficialCheckpointError, match="not tensors"):
        load_official("dit_s2", {"step": 3, "weights": [1, 2]})


# --------------------------------------------------------------------------- errors


def test_wrong_size_names_the_difference():
    official = checkpoint("dit_tiny")
    with pytest.raises(OfficialCheckpointError) as info:
        load_official("dit_s2", official, image_size=8, in_channels=4, num_classes=10, depth=3, width=64, num_heads=4)
    message = str(info.value)
    assert "official DiT state dict" in message and "depth=3, width=64" in message  # the expected build config
    assert "depth 2 (build: 3)" in message and "width 32 (build: 64)" in message
    assert "depth=2, width=32" in message and "num_heads" in message  # the overrides that would fit
    assert "missing keys (10): blocks.2." in message
    assert "shape mismatches" in message and "checkpoint (96, 32) vs model (192, 64)" in message


def test_wrong_class_count_and_image_size():
    official = checkpoint("dit_tiny")
    with pytest.raises(OfficialCheckpointError) as info:
        load_official("dit_s2", official, in_channels=4, width=32, depth=2, num_heads=4)
    message = str(info.value)
    assert "label-table rows (null row included) 11 (build: 1001)" in message
    assert "image_size 8 (build: 32)" in message
    assert "image_size=8, num_classes=10" in message


def test_uvit_null_row_mapping_error():
    # Passing the official num_classes (which counts the null row) gives one row too many.
    _, name, overrides = CASES["uvit_tiny_cond"]
    with pytest.raises(OfficialCheckpointError, match=r"num_classes=10\b"):
        load_official(name, checkpoint("uvit_tiny_cond"), **{**overrides, "num_classes": 11})
    with pytest.raises(OfficialCheckpointError, match="final_conv=False"):
        load_official(name, checkpoint("uvit_tiny_cond"), **{**overrides, "final_conv": True})


@pytest.mark.parametrize(
    "case, name, overrides, looks_like",
    [
        ("uvit_tiny_cond", "dis_s2", dict(image_size=8, width=32, depth=4, num_classes=10), "U-ViT"),
        ("dit_tiny", "uvit_s2", dict(image_size=8, width=32, depth=4, num_heads=4), "DiT"),
        ("dis_tiny_cond", "uvit_s2", dict(image_size=8, width=32, depth=4, num_heads=4), "DiS"),
        ("uvit_tiny_uncond", "dit_s2", dict(image_size=8, width=32, depth=2, num_heads=4), "U-ViT"),
    ],
)
def test_other_architecture_is_named(case, name, overrides, looks_like):
    with pytest.raises(OfficialCheckpointError) as info:
        load_official(name, checkpoint(case), **overrides)
    message = str(info.value)
    assert f"looks like an official {looks_like} checkpoint" in message
    assert "unexpected keys" in message and "missing keys" in message


def test_archbench_state_dict_gets_a_hint():
    _, name, overrides = CASES["uvit_tiny_uncond"]
    ours = archbench.build(name, **overrides).state_dict()
    with pytest.raises(OfficialCheckpointError, match="load_state_dict"):
        load_official(name, ours, **overrides)


def test_unsupported_backbones():
    with pytest.raises(ValueError, match="official checkpoints exist for"):
        load_official("unet_t", {})
    with pytest.raises(ValueError, match="attention-only"):
        load_official("uvit_bimamba_t2", {})


# --------------------------------------------------------------------------- renaming


@pytest.mark.parametrize("case", list(CASES))
def test_rename_tables_are_exact_and_invertible(case):
    family, name, overrides = CASES[case]
    official = checkpoint(case)
    ours = convert_official_state_dict(family, official)
    model_keys = set(archbench.build(name, **overrides).state_dict())
    assert set(ours) == model_keys
    assert all(ours[_k] is official[k] for k, _k in zip(official, ours, strict=True))  # pure renaming
    back = convert_to_official_state_dict(family, ours)
    assert list(back) == list(official)
    # Our own (freshly built) state dict exports to exactly the official key set.
    assert set(convert_to_official_state_dict(family, dict.fromkeys(model_keys))) == set(official)


def test_rename_examples():
    uvit = convert_official_state_dict(
        "uvit_h2",  # a registered name resolves to its family
        dict.fromkeys(
            [
                "norm.weight",
                "decoder_pred.bias",
                "final_layer.weight",
                "label_emb.weight",
                "time_embed.2.bias",
                "out_blocks.3.attn.qkv.weight",
                "mid_block.attn.proj.bias",
                "out_blocks.0.skip_linear.weight",
            ]
        ),
    )
    assert list(uvit) == [
        "final_layer.norm_final.weight",
        "final_layer.linear.bias",
        "final_conv.weight",
        "label_embed.embedding_table.weight",
        "time_embed.mlp.2.bias",
        "out_blocks.3.mixer.qkv.weight",
        "mid_block.mixer.proj.bias",
        "out_blocks.0.skip_linear.weight",
    ]
    dit = convert_official_state_dict(
        "dit",
        dict.fromkeys(
            ["x_embedder.proj.weight", "t_embedder.mlp.0.bias", "y_embedder.embedding_table.weight", "pos_embed"]
        ),
    )
    assert list(dit) == [
        "patch_embed.proj.weight",
        "time_embed.mlp.0.bias",
        "label_embed.embedding_table.weight",
        "pos_embed",
    ]
    dis = convert_official_state_dict(
        "dis", dict.fromkeys(["label_emb.embedding_table.weight", "time_embed.0.weight", "in_blocks.0.mixer.A_b_log"])
    )
    assert list(dis) == ["label_embed.embedding_table.weight", "time_embed.mlp.0.weight", "in_blocks.0.mixer.A_b_log"]
    assert set(OFFICIAL_RENAMES) == {"dit", "uvit", "dis"}
    with pytest.raises(ValueError, match="known families"):
        convert_official_state_dict("unet", {})


@pytest.mark.parametrize(
    "name, overrides, expected",
    [
        # The released configurations: key names and shapes as the official code builds them.
        ("dit_xl2", dict(image_size=64), dict(depth=28, width=1152, image_size=64, label_rows=1001, learn_sigma=True)),
        (
            "uvit_h2",
            dict(in_channels=4, num_classes=1000),
            dict(depth=28, width=1152, image_size=32, label_rows=1001, final_conv=False, mlp_time_embed=False),
        ),
        ("dis_h2", {}, dict(depth=48, width=1536, image_size=32, label_rows=1001, learn_sigma=True)),
    ],
)
def test_describe_released_configs(name, overrides, expected):
    with torch.device("meta"):
        model = archbench.build(name, **overrides)
    found = describe_state_dict(model.backbone_config["family"], model.state_dict())
    assert {k: found[k] for k in expected} == expected
