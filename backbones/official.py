"""Load weights released with the official DiT, U-ViT and DiS code into archbench models.

The official repositories name their modules differently from ours (``x_embedder`` is our
``patch_embed``, U-ViT's ``decoder_pred`` is our ``final_layer.linear`` ...).  Each family
has one rename table below; a checkpoint is renamed key by key and then loaded with
*strict* matching, so a checkpoint of another family or size fails loudly, with the
missing / unexpected keys, the shape mismatches and the configuration the weights imply.

    >>> from backbones.official import load_official
    >>> model = load_official("dit_xl2", "DiT-XL-2-256x256.pt")          # doctest: +SKIP
    >>> model = load_official("uvit_h2", "imagenet256_uvit_huge.pth",    # doctest: +SKIP
    ...                       in_channels=4, num_classes=1000)

The tables were derived from (and are tested against state dicts produced by) the
official code: facebookresearch/DiT ``models.py``, baofff/U-ViT ``libs/uvit.py`` and
feizc/DiS ``models_dis.py``; see ``tests/fixtures/official/README.md``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from backbones.registry import backbone_config, build, get_spec

__all__ = [
    "OFFICIAL_RENAMES",
    "OfficialCheckpointError",
    "convert_official_state_dict",
    "convert_to_official_state_dict",
    "describe_state_dict",
    "load_official",
    "load_official_state_dict",
]

logger = logging.getLogger(__name__)

FAMILY_TITLES = {"dit": "DiT", "uvit": "U-ViT", "dis": "DiS"}

# One table per family: (official key prefix, our key prefix), tried in order, the first
# match wins and is applied once, to the *original* key (so U-ViT's ``final_layer.`` ->
# ``final_conv.`` cannot collide with the ``final_layer.*`` keys other rules produce).
# ``{n}`` is a block / Sequential index, ``{blk}`` one of U-ViT's blocks.  Keys that match
# no rule keep their name.  The same table read right-to-left gives the inverse.
OFFICIAL_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "dit": (
        ("x_embedder.", "patch_embed."),
        ("t_embedder.mlp.", "time_embed.mlp."),
        ("y_embedder.", "label_embed."),
        # unchanged: pos_embed (frozen sin-cos table, a parameter in both), blocks.{n}.*,
        # final_layer.{norm_final,linear,adaLN_modulation}.*
    ),
    "uvit": (
        ("{blk}.attn.", "{blk}.mixer."),
        ("time_embed.{n}.", "time_embed.mlp.{n}."),  # only with mlp_time_embed=True
        ("label_emb.weight", "label_embed.embedding_table.weight"),
        ("norm.", "final_layer.norm_final."),
        ("decoder_pred.", "final_layer.linear."),
        ("final_layer.", "final_conv."),  # the optional 3x3 conv after unpatchify
        # unchanged: pos_embed, patch_embed.proj.*, {blk}.{norm1,norm2,mlp,skip_linear}.*
    ),
    "dis": (
        ("label_emb.embedding_table.", "label_embed.embedding_table."),
        ("time_embed.{n}.", "time_embed.mlp.{n}."),
        # unchanged: pos_embed, patch_embed.proj.*, {blk}.{norm,skip_linear}.*, {blk}.mixer.*
        # (BiMamba keeps the official names: A_log, A_b_log, conv1d_b, ...), norm_f.*,
        # final_layer.{linear,adaLN_modulation}.*
    ),
}

_PLACEHOLDERS = {"n": r"\d+", "blk": r"in_blocks\.\d+|mid_block|out_blocks\.\d+"}

# Training checkpoints of DiT and DiS are {"model", "ema", "opt", "args"}; "args" is an
# argparse.Namespace, which weights_only loading refuses unless allow-listed.
_WRAPPER_KEYS = ("ema", "model")
_STRIP_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / torch.compile wrappers


class OfficialCheckpointError(ValueError):
    """An official checkpoint does not fit the model it is being loaded into."""


# --------------------------------------------------------------------------- renaming


def _compile(template: str) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    regex = "".join(f"(?P<{p[1:-1]}>{_PLACEHOLDERS[p[1:-1]]})" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(regex)


def _rules(family: str, inverse: bool) -> list[tuple[re.Pattern, str]]:
    table = OFFICIAL_RENAMES[family]
    return [(_compile(dst if inverse else src), src if inverse else dst) for src, dst in table]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict()) + key[match.end() :]
    return key


def _resolve_family(family: str) -> str:
    if family in OFFICIAL_RENAMES:
        return family
    try:
        resolved = get_spec(family).family  # a registered backbone name, e.g. "dit_xl2"
    except KeyError:
        resolved = None
    if resolved not in OFFICIAL_RENAMES:
        raise ValueError(f"no official checkpoint format for {family!r}; known families: {', '.join(OFFICIAL_RENAMES)}")
    return resolved


def _convert(family: str, state_dict: Mapping[str, Any], inverse: bool) -> dict[str, Any]:
    rules = _rules(_resolve_family(family), inverse)
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        new = _rename(key, rules)
        if new in out:
            raise ValueError(f"two keys map to {new!r} (second one: {key!r}); is this state dict already converted?")
        out[new] = value
    return out


def convert_official_state_dict(family: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rename the keys of an official state dict to ours (pure renaming; values are not copied).

    ``family`` is ``"dit"``, ``"uvit"`` or ``"dis"`` (or a registered name such as
    ``"dit_xl2"``).  See ``OFFICIAL_RENAMES`` for the tables.
    """
    return _convert(family, state_dict, inverse=False)


def convert_to_official_state_dict(family: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of ``convert_official_state_dict``: our keys -> the official code's keys."""
    return _convert(family, state_dict, inverse=True)


# --------------------------------------------------------------------------- reading


def _strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(state_dict)
    for prefix in _STRIP_PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def load_official_state_dict(path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Read a checkpoint and return ``(state_dict, entry)`` in the official naming.

    Files are read with ``torch.load(path, map_location="cpu", weights_only=True)``
    (``argparse.Namespace`` allow-listed, for the ``"args"`` entry of training
    checkpoints).  A training checkpoint ``{"model": ..., "ema": ...}`` gives its
    ``"ema"`` weights when present, else ``"model"``; ``entry`` names the one used
    (``""`` for a bare state dict).  A ``module.`` / ``_orig_mod.`` prefix on every key
    (DDP, torch.compile) is removed.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
    else:
        checkpoint = path_or_state_dict
    if not isinstance(checkpoint, Mapping):
        raise OfficialCheckpointError(f"expected a state dict (a mapping), got {type(checkpoint).__name__}")
    entry = ""
    for key in _WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint, entry = checkpoint[key], key
            break
    not_tensors = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise OfficialCheckpointError(
            f"not a state dict: entries {not_tensors[:5]} are not tensors (a training checkpoint should "
            f"hold the weights under one of {list(_WRAPPER_KEYS)})"
        )
    return _strip_wrapper_prefixes(checkpoint), entry


# --------------------------------------------------------------------------- diagnosis


_LABELS = {"label_rows": "label-table rows (null row included)"}


def _natural(key: str) -> list:
    """Sort ``blocks.2`` before ``blocks.10``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split(".")]


def _guess_family(official: Mapping[str, Any]) -> str | None:
    keys = set(official)
    if any(k.startswith(("x_embedder.", "t_embedder.")) for k in keys):
        return "dit"
    if any(k.endswith((".mixer.A_log", ".mixer.A_b_log")) for k in keys) or "norm_f.weight" in keys:
        return "dis"
    if "decoder_pred.weight" in keys or any(".attn.qkv." in k for k in keys):
        return "uvit"
    return None


def _block_indices(keys: set[str], prefix: str) -> set[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return {int(m.group(1)) for k in keys if (m := pattern.match(k))}


def describe_state_dict(family: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Build arguments implied by a state dict in *our* naming (what the weights can tell).

    Returns a subset of ``depth, width, in_channels, patch_size, image_size, label_rows,
    learn_sigma, mlp_ratio, mlp_time_embed, final_conv, qkv_bias`` (``num_heads`` cannot be
    read from weights).  ``label_rows`` counts the null-class row.
    """
    family = _resolve_family(family)
    keys = set(state_dict)
    shape = {k: tuple(v.shape) for k, v in state_dict.items()}
    info: dict[str, Any] = {}
    patch = shape.get("patch_embed.proj.weight")
    if patch is not None and len(patch) == 4:
        info.update(width=patch[0], in_channels=patch[1], patch_size=patch[2])
    if family == "dit":
        blocks = _block_indices(keys, "blocks.")
        depth = max(blocks) + 1 if blocks else 0
        extras = 0
        fc1 = shape.get("blocks.0.mlp.fc1.weight")
    else:  # depth // 2 in-blocks, a mid block, depth // 2 out-blocks
        depth = 2 * len(_block_indices(keys, "in_blocks."))
        extras = 1 + ("label_embed.embedding_table.weight" in keys)
        fc1 = shape.get("mid_block.mlp.fc1.weight")
    if depth:
        info["depth"] = depth
    if "label_embed.embedding_table.weight" in keys:
        info["label_rows"] = shape["label_embed.embedding_table.weight"][0]
    else:
        info["label_rows"] = 0
    pos = shape.get("pos_embed")
    if pos is not None and "patch_size" in info:
        grid = math.isqrt(max(pos[1] - extras, 0))
        if grid * grid == pos[1] - extras:
            info["image_size"] = grid * info["patch_size"]
    linear = shape.get("final_layer.linear.weight")
    if linear is not None and "patch_size" in info:
        out_channels = linear[0] // info["patch_size"] ** 2
        info["learn_sigma"] = out_channels == 2 * info["in_channels"]
    if fc1 is not None and "width" in info:
        info["mlp_ratio"] = fc1[0] / info["width"]
    if family == "uvit":
        info["mlp_time_embed"] = "time_embed.mlp.0.weight" in keys
        info["final_conv"] = "final_conv.weight" in keys
        info["qkv_bias"] = any(k.endswith(".mixer.qkv.bias") for k in keys)
    return info


def _suggest(found: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Build overrides that would reproduce ``found``."""
    overrides = []
    for key in (
        "depth",
        "width",
        "in_channels",
        "patch_size",
        "image_size",
        "learn_sigma",
        "mlp_ratio",
        "mlp_time_embed",
        "final_conv",
        "qkv_bias",
    ):
        if key in found and key in config and found[key] != config[key]:
            overrides.append(f"{key}={found[key]!r}")
    rows = found.get("label_rows", 0)
    null_row = config.get("class_dropout_prob", 0) > 0
    have_rows = config.get("num_classes", 0) + int(null_row) if config.get("num_classes", 0) > 0 else 0
    if rows != have_rows:
        if rows == 0:
            overrides.append("num_classes=0")
        elif null_row:
            overrides.append(f"num_classes={rows - 1}")
        else:
            overrides.append(f"num_classes={rows}")
    return overrides


def _mismatch_error(
    name: str, family: str, model: nn.Module, official: Mapping[str, Any], ours: Mapping[str, Any], entry: str
) -> OfficialCheckpointError:
    target = model.state_dict()
    missing = sorted(set(target) - set(ours), key=_natural)
    unexpected = sorted(set(ours) - set(target), key=_natural)
    shapes = [
        f"{k}: checkpoint {tuple(ours[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(target) & set(ours), key=_natural)
        if tuple(ours[k].shape) != tuple(target[k].shape)
    ]
    config = dict(getattr(model, "backbone_config", {}))
    title = FAMILY_TITLES[family]
    shown = {
        k: config[k]
        for k in (
            "depth",
            "width",
            "num_heads",
            "patch_size",
            "image_size",
            "in_channels",
            "num_classes",
            "class_dropout_prob",
            "learn_sigma",
        )
        if k in config
    }
    lines = [
        f"cannot load this checkpoint{f' ({entry!r} weights)' if entry else ''} into {name!r}: expected an "
        f"official {title} state dict for the build config " + ", ".join(f"{k}={v!r}" for k, v in shown.items())
    ]
    guessed = _guess_family(official)
    if guessed is not None and guessed != family:
        lines.append(
            f"  the checkpoint looks like an official {FAMILY_TITLES[guessed]} checkpoint, not {title}: "
            f"load it with a {guessed}_* backbone"
        )
    elif set(official) == set(target):
        lines.append("  its keys are already archbench's own names: use model.load_state_dict() instead")
    else:
        found = describe_state_dict(family, ours)
        have = describe_state_dict(family, target)
        diffs = [
            f"{_LABELS.get(k, k)} {found[k]!r} (build: {have[k]!r})" for k in found if k in have and found[k] != have[k]
        ]
        if diffs:
            lines.append("  the checkpoint has " + ", ".join(diffs))
        overrides = _suggest(found, config)
        if overrides:
            hint = ", ".join(overrides)
            if family != "dis" and any(o.startswith("width=") for o in overrides):
                hint += " (and the matching num_heads: it cannot be read from the weights)"
            lines.append(f"  build overrides that would match it: {hint}")
    lines.append("  (key names below are after renaming to archbench's names)")
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f", ... and {len(items) - 8} more" if len(items) > 8 else ""
            lines.append(f"  {label} ({len(items)}): " + ", ".join(items[:8]) + more)
    return OfficialCheckpointError("\n".join(lines))


# --------------------------------------------------------------------------- loading


def load_official(
    name: str, path_or_state_dict: str | os.PathLike | Mapping[str, Any], **build_overrides: Any
) -> nn.Module:
    """Build ``archbench.build(name, **build_overrides)`` and load official weights into it, strictly.

    ``path_or_state_dict`` is a ``.pt`` / ``.pth`` file (read on the CPU with
    ``weights_only=True``) or an already-loaded dict, as saved by the official code:

    * a bare state dict (DiT's released ``DiT-XL-2-*.pt``, U-ViT's ``*.pth`` /
      ``nnet_ema.pth``), or
    * a training checkpoint ``{"model": ..., "ema": ..., "opt": ..., "args": ...}`` (DiT
      and DiS ``train.py``): the **EMA weights are used when present**, else ``"model"``.

    Keys are renamed with the family's table (``OFFICIAL_RENAMES``) and must then match
    the built model exactly, names and shapes; otherwise ``OfficialCheckpointError``
    lists the missing / unexpected keys and shape mismatches, the configuration the
    checkpoint implies and the build overrides that would match it.  The model is
    returned in eval mode (call ``.train()`` to fine-tune).

    Configuration notes (the official argument on the left, ours on the right):

    * DiT: same numbers (``num_classes=1000`` -> 1001-row table with the null class).
      ``pos_embed`` is the fixed sin-cos table, a frozen parameter in both codes, so it is
      in official state dicts and is loaded; a checkpoint that drops it still loads (our
      identical table is kept).  DiT-XL/2 256: ``load_official("dit_xl2", path)``;
      512: ``load_official("dit_xl2", path, image_size=64)`` (latent sizes).
    * U-ViT: the official ``num_classes`` counts the null row, ours does not: official
      ``num_classes=1001`` (ImageNet 256/512 configs) is ours ``num_classes=1000`` with
      ``class_dropout_prob > 0`` (default 0.1); ImageNet-64's ``num_classes=1000`` (no
      guidance) is ours ``num_classes=1000, class_dropout_prob=0``; ``num_classes=-1`` is
      ours ``0``.  ``embed_dim`` -> ``width``, ``in_chans`` -> ``in_channels``,
      ``img_size`` -> ``image_size`` (latent size for the LDM configs), ``conv`` ->
      ``final_conv``.  The official U-ViT has no learned sigma (our default
      ``learn_sigma=False``).  ImageNet 256 U-ViT-H/2:
      ``load_official("uvit_h2", path, in_channels=4, num_classes=1000)``; ImageNet 512
      U-ViT-H/4: ``load_official("uvit_h4", path, image_size=64, in_channels=4, num_classes=1000)``.
    * DiS: same numbers (``channels`` -> ``in_channels``, ``embed_dim`` -> ``width``).
      DiS-H/2 256: ``load_official("dis_h2", path)``; 512: add ``image_size=64``.
    """
    family = get_spec(name).family
    if family not in OFFICIAL_RENAMES:
        raise ValueError(
            f"{name!r} is a {family!r} backbone; official checkpoints exist for: {', '.join(OFFICIAL_RENAMES)}"
        )
    mixer = backbone_config(name, **build_overrides).get("mixer", "attention")
    if family == "uvit" and mixer != "attention":
        raise ValueError(f"{name!r} uses the {mixer!r} mixer; official U-ViT weights are attention-only")
    official, entry = load_official_state_dict(path_or_state_dict)  # read before the (costly) build
    model = build(name, **build_overrides)
    ours = convert_official_state_dict(family, official)
    target = model.state_dict()
    if family == "dit" and "pos_embed" not in ours and "pos_embed" in target:
        ours["pos_embed"] = target["pos_embed"]  # fixed sin-cos table: ours is the same one
    mismatched = set(ours) != set(target) or any(tuple(ours[k].shape) != tuple(target[k].shape) for k in target)
    if mismatched:
        raise _mismatch_error(name, family, model, official, ours, entry)
    model.load_state_dict(ours, strict=True)
    if entry:
        logger.info("loaded the %r weights of a training checkpoint into %s", entry, name)
    return model.eval()
