"""The sequence mixer as an axis of its own: any mixer, in any scan order, inside any skeleton.

A skeleton (DiT's isotropic adaLN blocks, U-ViT's and DiS's long-skip stacks) asks ``build_mixer`` for
the mixer of block ``layer``; the mixer kind, the scan order and the hybrid rule (attention in every k-th
block) are build options, so two models can differ in exactly one of them.

Mixers: softmax ``attention``; the state-space ``bimamba`` (DiS) and ``mamba2``, which scan the tokens in a
``scan_order``; ``linear_attention`` (Sana's ReLU linear attention), linear in the tokens like the SSMs but
without any order, so it takes no scan order.  ``attention_every=k`` puts softmax attention in every k-th
block of a stack of any other mixer.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from backbones.layers.attention import Attention
from backbones.layers.directions import PadTokens
from backbones.layers.linear_attention import LinearAttention
from backbones.layers.scan_order import (
    DIM_PAD_TOKENS,
    PADDED_ORDERS,
    SCAN_ORDERS,
    padded_grid,
    patch_paths,
    sequence_permutation,
    split_pads,
)

MIXERS = ("attention", "bimamba", "mamba2", "linear_attention")
SSM_MIXERS = ("bimamba", "mamba2")
# Mixers whose cost grows linearly with the tokens: the SSMs and linear attention (what DiS's blocks take).
LINEAR_MIXERS = (*SSM_MIXERS, "linear_attention")


def check_mixer_options(mixer: str, scan_order: str, attention_every: int) -> None:
    """One clear error for a bad mixer option, before any block is built."""
    if mixer not in MIXERS:
        raise ValueError(f"unknown mixer {mixer!r}; valid mixers are {', '.join(MIXERS)}")
    if scan_order not in SCAN_ORDERS:
        raise ValueError(f"unknown scan_order {scan_order!r}; valid scan orders: {', '.join(SCAN_ORDERS)}")
    if not isinstance(attention_every, int) or attention_every < 0:
        raise ValueError(f"attention_every must be 0 (never) or a positive block interval, got {attention_every!r}")
    if mixer == "attention" and attention_every:
        raise ValueError(f"attention_every puts attention between blocks of another mixer: use it with "
                         f"mixer={' or '.join(LINEAR_MIXERS)}")
    if mixer == "linear_attention" and scan_order != "bidirectional":
        raise ValueError(f"scan_order={scan_order!r} does not apply to mixer=linear_attention (it has no token order, "
                         f"only the SSM mixers {', '.join(SSM_MIXERS)} scan): leave scan_order at its default")


def is_attention_block(mixer: str, layer: int, attention_every: int) -> bool:
    """Softmax attention in every ``attention_every``-th block (blocks k-1, 2k-1, ...), the other mixer
    (an SSM or linear attention) elsewhere."""
    return mixer == "attention" or (attention_every > 0 and (layer + 1) % attention_every == 0)


def default_heads(width: int, head_dim: int = 64) -> int:
    """Heads for attention blocks in a skeleton that has none of its own: the divisor of ``width`` nearest
    ``width / head_dim``."""
    target = max(1.0, width / head_dim)
    divisors = [d for d in range(1, width + 1) if width % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), -d))


def scan_directions(
    scan_order: str, grid: tuple[int, int], extras: int, layer: int, layers: int | None = None
) -> list[torch.Tensor] | None:
    """Token permutations of block ``layer``'s scan directions; None is DiS's own pair (as is, flipped).

    For a padded order the permutations are of the padded sequence (the split pads stay in front with the
    time/label tokens; the paths run over the padded grid).
    """
    if scan_order == "bidirectional":
        return None
    if scan_order in PADDED_ORDERS:
        grid, extras = padded_grid(*grid, DIM_PAD_TOKENS), extras + split_pads(extras, DIM_PAD_TOKENS)
    return [
        sequence_permutation(path, extras, reverse)
        for path, reverse in patch_paths(scan_order, *grid, layer, layers=layers)
    ]


def build_mixer(
    mixer: str,
    width: int,
    *,
    layer: int,
    grid: tuple[int, int],
    extras: int,
    num_heads: int,
    scan_order: str = "bidirectional",
    attention_every: int = 0,
    qkv_bias: bool = True,
    upcast: bool = False,
    scan: str = "auto",
    backward_dt_init: str = "official",
    merge: str = "sum",
    layers: int | None = None,
    state_size: int | None = None,
) -> nn.Module:
    """The mixer of block ``layer`` (of ``layers`` in the stack) on a ``grid`` of patches behind ``extras``
    time/label tokens.  ``layers`` is needed by the scan orders that depend on the depth (``dim``);
    ``state_size`` sets an SSM mixer's state dimension (None: the mixer's own default, 16 or 64)."""
    check_mixer_options(mixer, scan_order, attention_every)
    if is_attention_block(mixer, layer, attention_every):
        return Attention(width, num_heads, qkv_bias=qkv_bias, upcast=upcast)
    if mixer == "linear_attention":
        return LinearAttention(width, num_heads, qkv_bias=qkv_bias)
    directions = scan_directions(scan_order, grid, extras, layer, layers)
    padding = PadTokens(width, grid, extras, DIM_PAD_TOKENS) if scan_order in PADDED_ORDERS else None
    state = {} if state_size is None else {"d_state": state_size}
    if mixer == "mamba2":
        from backbones.layers.mamba2 import BiMamba2

        return BiMamba2(width, scan=scan, directions=directions, merge=merge, padding=padding, **state)
    from backbones.layers.mamba import BiMamba

    return BiMamba(
        width, scan=scan, backward_dt_init=backward_dt_init, directions=directions, merge=merge, padding=padding,
        **state,
    )


def reset_ssm_mixers(model: nn.Module) -> None:
    """Give every SSM mixer back its own dt/A/D initialisation after a skeleton's blanket init."""
    for module in model.modules():
        reset = getattr(module, "reset_ssm_parameters", None)
        if reset is not None:
            reset()
