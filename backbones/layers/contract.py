"""The forward contract every backbone honours, and its input checks.

``forward(x: [B, C, H, W], t: [B], y: [B] | None) -> [B, C_out, H, W]``;
``C_out = 2C`` with a learned variance.  Class index ``num_classes`` is the null class.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

CAPTION_PLACEMENTS = ("prepend", "both")

class DiffusionBackbone(nn.Module):
    """Base class: holds the contract's build arguments and validates inputs.

    Subclasses set ``spatial_multiple`` (what H and W must divide by) and call
    ``check_inputs`` at the top of ``forward``; it turns shape mistakes into one
    clear ``ValueError`` instead of an error from deep inside a conv or a reshape.
    """

    family: str = ""
    spatial_multiple: int = 1
    fixed_size: bool = True  # token backbones: a position table pins the input size

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        num_classes: int,
        learn_sigma: bool,
        class_dropout_prob: float,
    ):
        super().__init__()
        if image_size <= 0 or in_channels <= 0 or num_classes < 0:
            raise ValueError(
                f"image_size and in_channels must be positive and num_classes >= 0, got "
                f"image_size={image_size}, in_channels={in_channels}, num_classes={num_classes}"
            )
        if not 0.0 <= class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {class_dropout_prob}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.class_dropout_prob = class_dropout_prob
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.grad_checkpointing = False
        self.caption_embed: nn.Module | None = None  # set by build_captions on a captioned backbone
        self.extras_after = 0  # condition tokens after the patches (captions placed "both" ends)

    def build_captions(self, vocab: int, tokens: int, width: int, placement: str = "prepend",
                       scan_order: str = "bidirectional", dim: int = 0) -> nn.Module | None:
        """The caption embedder when ``vocab`` > 0 (``y`` is then (B, ``tokens``) word indices, 0 = padding, and
        the empty caption is the null condition) or ``dim`` > 0 (``y`` is (B, ``tokens``, ``dim``) precomputed
        features, all-zero rows = padding); None otherwise.  Captions replace class labels.

        ``placement`` is where a token skeleton puts them: ``prepend`` (before the patches, DiS's way) or
        ``both`` (the same tokens also after the patches, so a backward scan reads the caption before the
        image rather than after it; only the bidirectional order keeps trailing tokens in place);
        ``extras_after`` counts the tokens behind the patches."""
        if placement not in CAPTION_PLACEMENTS:
            raise ValueError(f"caption_placement must be one of {', '.join(CAPTION_PLACEMENTS)}, got {placement!r}")
        if vocab and dim:
            raise ValueError(f"give caption_vocab (word indices) or caption_dim (precomputed features), not both; "
                             f"got caption_vocab={vocab}, caption_dim={dim}")
        if not vocab and not dim:
            return None
        if placement == "both" and scan_order != "bidirectional":
            raise ValueError(f"caption_placement='both' appends the caption after the patches, which only the "
                             f"bidirectional scan order keeps in place; got scan_order={scan_order!r}")
        if self.num_classes:
            raise ValueError(f"{type(self).__name__}: give num_classes=0 with captions (caption_vocab={vocab}, "
                             f"caption_dim={dim}); "
                             "a model is conditioned on one of the two")
        from backbones.layers.caption import CaptionEmbedder

        self.caption_embed = CaptionEmbedder(vocab, tokens, width, self.class_dropout_prob, feature_dim=dim)
        self.extras_after = tokens if placement == "both" else 0
        return self.caption_embed

    def join_tokens(self, extra: list[torch.Tensor], patches: torch.Tensor,
                    caption: torch.Tensor | None) -> torch.Tensor:
        """``[caption, *extra, patches]`` (the caption also after the patches when placed at both ends)."""
        front = [caption, *extra] if caption is not None else extra
        back = [caption] if caption is not None and self.extras_after else []
        return torch.cat([*front, patches, *back], dim=1)

    def patch_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patches' rows of a ``join_tokens`` sequence."""
        return tokens[:, self.extras : tokens.shape[1] - self.extras_after]

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in the backward pass instead of keeping its activations (less memory, one
        more forward); the results are the same, drop-path and dropout draws included."""
        self.grad_checkpointing = bool(enabled)

    def run_block(self, block: nn.Module, *args: Any) -> Any:
        """``block(*args)``, through activation checkpointing when it is on and a backward will follow."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def save_pretrained(self, directory: str, extra: dict | None = None) -> str:
        """Write ``model.safetensors`` + ``config.json`` (see :mod:`backbones.hub`); reload with
        ``archbench.from_pretrained(directory)``."""
        from backbones.hub import save_pretrained

        return str(save_pretrained(self, directory, extra))

    def push_to_hub(self, repo_id: str, extra: dict | None = None, private: bool = False) -> str:
        """Upload the pretrained folder to a Hugging Face Hub repo (network and token needed)."""
        from backbones.hub import push_to_hub

        return push_to_hub(self, repo_id, extra=extra, private=private)

    @property
    def captioned(self) -> bool:
        return self.caption_embed is not None

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0 or self.captioned

    @property
    def null_class(self) -> int | None:
        """Index of the unconditional label (for captions: the padding index, so ``full_like(y, null_class)`` is
        the empty caption), or None when the model has none."""
        if not self.conditional or self.class_dropout_prob <= 0:
            return None
        return 0 if self.captioned else self.num_classes

    def check_inputs(
        self, x: torch.Tensor, t: torch.Tensor | int | float, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validate (x, t, y); returns (t, y): a plain int/float t becomes one timestep per image, and a missing
        y becomes the null class when there is one."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: x must be a tensor (B, C, H, W), got {type(x).__name__}")
        weights = next(self.parameters(), None)
        if weights is not None and x.device != weights.device:
            raise ValueError(
                f"{name}: x is on {x.device} but the model's weights are on {weights.device}; "
                f"use x.to('{weights.device}') (or model.to('{x.device}'))"
            )
        for label, value in (("t", t), ("y", y)):
            if isinstance(value, torch.Tensor) and value.device != x.device:
                raise ValueError(f"{name}: {label} is on {value.device} but x is on {x.device}; "
                                 f"use {label}.to('{x.device}')")
        weight_dtype = weights.dtype if weights is not None else x.dtype
        if not x.dtype.is_floating_point:
            raise ValueError(f"{name}: x must be a floating-point tensor, got {x.dtype}; use x.to({weight_dtype})")
        if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(
                f"{name}: x is {x.dtype} but the weights are {weight_dtype}; use x.to({weight_dtype}) "
                "(or run under torch.autocast)"
            )
        if x.ndim != 4:
            raise ValueError(f"{name}: x must be (B, C, H, W), got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"{name}: built for {self.in_channels} input channels, got {c}")
        if h % self.spatial_multiple or w % self.spatial_multiple:
            raise ValueError(
                f"{name}: spatial size {h}x{w} must be a multiple of {self.spatial_multiple} for this backbone"
            )
        if self.fixed_size and (h, w) != (self.image_size, self.image_size):
            raise ValueError(
                f"{name}: built for {self.image_size}x{self.image_size} inputs (its position table is sized "
                f"for that), got {h}x{w}; rebuild with image_size={h}" if h == w else
                f"{name}: built for square {self.image_size}x{self.image_size} inputs, got {h}x{w}"
            )
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            t = torch.full((b,), t, device=x.device, dtype=torch.long if isinstance(t, int) else torch.float32)
        if not isinstance(t, torch.Tensor) or t.dtype == torch.bool:
            raise ValueError(f"{name}: t must be a tensor of shape ({b},), an int or a float, got {type(t).__name__}")
        if t.ndim == 0:
            t = t.expand(b)
        if t.ndim != 1 or t.shape[0] != b:
            raise ValueError(f"{name}: t must have shape ({b},), one timestep per image, got {tuple(t.shape)}")
        if not self.conditional:
            if y is not None:
                raise ValueError(f"{name}: the model is unconditional (num_classes=0) but class labels were given")
            return t, None
        if self.captioned:
            return t, self._check_caption(name, b, x.device, y)
        if y is None:
            if self.null_class is None:
                raise ValueError(
                    f"{name}: class-conditional model without a null class (class_dropout_prob=0) needs labels y"
                )
            return t, torch.full((b,), self.null_class, dtype=torch.long, device=x.device)
        if y.ndim != 1 or y.shape[0] != b:
            raise ValueError(f"{name}: y must have shape ({b},), one label per image, got {tuple(y.shape)}")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"{name}: y must hold integer class indices, got dtype {y.dtype}")
        top = self.num_classes if self.null_class is not None else self.num_classes - 1
        # The range needs the label values (a host sync and a graph break): checked in eager mode only, so
        # torch.compile(model, fullgraph=True) traces every family.
        if y.numel() and not torch.compiler.is_compiling() and (int(y.min()) < 0 or int(y.max()) > top):
            raise ValueError(
                f"{name}: class labels must lie in [0, {top}] ({self.num_classes} classes"
                + (f", {self.null_class} = null class" if self.null_class is not None else "")
                + f"), got range [{int(y.min())}, {int(y.max())}]"
            )
        return t, y

    def example_condition(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """A valid ``y`` for ``batch`` images (class 0, or a caption of word 1 repeated), None when unconditional:
        what probes and the FLOP counter feed."""
        embed = self.caption_embed
        if embed is not None and embed.feature_dim:
            return torch.ones(batch, embed.max_tokens, embed.feature_dim, device=device)
        if embed is not None:
            return torch.ones(batch, embed.max_tokens, dtype=torch.long, device=device)
        return torch.zeros(batch, dtype=torch.long, device=device) if self.conditional else None

    def _check_caption(self, name: str, b: int, device: torch.device, y: torch.Tensor | None) -> torch.Tensor:
        embed = self.caption_embed
        tokens, vocab, dim = embed.max_tokens, embed.vocab_size, embed.feature_dim  # type: ignore[union-attr]
        if y is None:
            if self.null_class is None:
                raise ValueError(f"{name}: captioned model without a null caption (class_dropout_prob=0) needs y")
            if dim:
                return torch.zeros((b, tokens, dim), device=device, dtype=next(self.parameters()).dtype)
            return torch.zeros((b, tokens), dtype=torch.long, device=device)
        if dim:
            if y.shape != (b, tokens, dim) or not y.dtype.is_floating_point:
                raise ValueError(f"{name}: y must be ({b}, {tokens}, {dim}) floating-point caption features "
                                 f"(all-zero rows = padding), got {tuple(y.shape)} {y.dtype}")
            return y
        if y.ndim != 2 or y.shape != (b, tokens):
            raise ValueError(f"{name}: y must be ({b}, {tokens}) caption word indices (padded with 0), got "
                             f"{tuple(y.shape)}")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"{name}: y must hold integer word indices, got dtype {y.dtype}")
        if y.numel() and not torch.compiler.is_compiling() and (int(y.min()) < 0 or int(y.max()) >= vocab):
            raise ValueError(f"{name}: caption word indices must lie in [0, {vocab - 1}] (0 = padding), got range "
                             f"[{int(y.min())}, {int(y.max())}]")
        return y

    def forward_with_cfg(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        cfg_scale: float,
        guide_channels: int | None = None,
    ) -> torch.Tensor:
        """Classifier-free guidance in one batched call: see ``guidance.classifier_free_guidance``."""
        from backbones.layers.guidance import classifier_free_guidance

        return classifier_free_guidance(self, x, t, y, cfg_scale, guide_channels=guide_channels)
