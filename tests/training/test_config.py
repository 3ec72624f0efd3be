"""Config composition: recipes x backbones, override grammar, one-line errors, --cfg."""

from __future__ import annotations

import pytest
import yaml
from train_support import one_thread, run_cli  # noqa: F401

from archbench.train import main
from archbench.training.config import ConfigError, compose_config, recipe_names, to_container
from backbones.registry import backbone_config, list_backbones

RECIPES = ["default", "digits", "fashion_mnist", "cifar10", "celeba64", "imagenet256"]


def test_every_required_recipe_exists():
    assert set(RECIPES) <= set(recipe_names())


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_applies_to_every_tiny_backbone(recipe):
    for backbone in list_backbones(tag="tiny"):
        cfg = to_container(compose_config([f"recipe={recipe}", f"backbone={backbone}"]))
        assert cfg["backbone"]["name"] == backbone and cfg["recipe"] == recipe
        # data-driven build options follow the dataset and the diffusion setting, not the backbone defaults
        assert cfg["backbone"]["in_channels"] == cfg["data"]["channels"]
        assert cfg["backbone"]["image_size"] == cfg["data"]["image_size"]
        assert cfg["backbone"]["num_classes"] == cfg["data"]["num_classes"]
        assert cfg["backbone"]["learn_sigma"] == cfg["diffusion"]["learn_sigma"]
        for key in ("run_dir", "seed"):
            assert key in cfg
        for key in ("steps", "batch_size", "lr", "ckpt_every", "sample_every", "resume", "keep_last"):
            assert key in cfg["train"]


def test_published_recipe_values():
    dit = to_container(compose_config(["recipe=imagenet256"]))["train"]
    assert (dit["lr"], dit["weight_decay"], dit["batch_size"], dit["ema_decay"], dit["warmup_steps"]) == (
        1e-4,
        0.0,
        256,
        0.9999,
        0,
    )
    uvit = to_container(compose_config(["recipe=cifar10"]))
    assert uvit["train"]["lr"] == 2e-4 and uvit["train"]["weight_decay"] == 0.03
    assert uvit["train"]["betas"] == [0.99, 0.999] and uvit["train"]["batch_size"] == 128
    assert uvit["data"]["num_classes"] == 0 and uvit["backbone"]["num_classes"] == 0  # U-ViT's CIFAR-10 is uncond


def test_backbone_group_lists_the_registry_and_overrides_build_options():
    names = list_backbones()
    cfg = to_container(compose_config([f"backbone={names[-1]}"]))
    assert cfg["backbone"]["name"] == names[-1]
    cfg = to_container(compose_config(["backbone=dit_t2", "backbone.depth=2", "backbone.class_dropout_prob=0"]))
    assert cfg["backbone"]["depth"] == 2 and cfg["backbone"]["class_dropout_prob"] == 0.0
    expected = set(backbone_config("dit_t2")) - {"family"}
    assert set(cfg["backbone"]) == expected


def test_nested_overrides_and_types():
    cfg = to_container(
        compose_config(["train.lr=3", "train.betas=[0.8,0.9]", "diffusion=flow", "train.resume=null", "seed=7"])
    )
    assert cfg["train"]["lr"] == 3.0 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["betas"] == [0.8, 0.9]
    assert cfg["diffusion"]["objective"] == "flow" and cfg["train"]["resume"] is None and cfg["seed"] == 7


def test_default_dataset_is_resolved():
    cfg = to_container(compose_config([]))
    assert cfg["data"]["name"] in ("fashion_mnist", "digits")
    assert cfg["backbone"]["name"] == "dis_t4" and cfg["backbone"]["patch_size"] == 4  # the default recipe's DiS
    assert cfg["diffusion"]["loss_weighting"] == "min_snr"
    other = to_container(compose_config(["recipe=fashion_mnist"]))
    assert other["backbone"]["name"] == "dis_s2" and other["diffusion"]["loss_weighting"] == "none"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("backbone=nope", "unknown backbone 'nope'"),
        ("recipe=cifar", "unknown recipe 'cifar'"),
        ("diffusion=score", "unknown diffusion 'score'"),
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("backbone.bogus=1", "unknown config key 'backbone.bogus'"),
        ("nothing=1", "unknown config key 'nothing'"),
        ("train.steps=many", "expected an integer"),
        ("train=3", "is a section"),
        ("data.name=mnist", "unknown dataset"),
        ("+train.extra=1", "not supported"),
        ("train.lr=1,2", "sweeps are not supported"),
    ],
)
def test_bad_overrides_raise_one_line(override, fragment):
    with pytest.raises(ConfigError) as info:
        compose_config([override])
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_unknown_choice_lists_valid_choices():
    with pytest.raises(ConfigError, match="valid choices: .*dis_t2.*dit_t2"):
        compose_config(["backbone=dis_xx"])
    with pytest.raises(ConfigError, match="valid keys under 'train': .*batch_size"):
        compose_config(["train.batchsize=2"])


def test_cli_bad_input_exits_nonzero_with_one_line(capsys):
    for args in (["backbone=nope"], ["recipe=nope"], ["train.nope=1"], ["--verbose"]):
        assert main(args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("archbench.train: error:"), err
        assert "Traceback" not in err[0]


def test_cli_print_config(capsys):
    assert main(["--cfg", "backbone=dit_t2", "train.lr=5e-4", "recipe=digits"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["backbone"]["name"] == "dit_t2" and printed["train"]["lr"] == 5e-4
    assert printed["data"]["name"] == "digits"


def test_real_process_unknown_backbone():
    """The real entry point: exit code != 0, one line on stderr, no traceback."""
    proc = run_cli("archbench.train", "backbone=not_a_backbone", timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown backbone 'not_a_backbone'" in lines[0] and "dis_t2" in lines[0]
