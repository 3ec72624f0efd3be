"""Fit trained weights to a backbone built at another resolution or class count: the fine-tuning hand-over.

Two kinds of tensor change shape when only the image size or the label set changes, and both have a rule:

* **Position tables.**  A learned absolute table (DiS, U-ViT: ``pos_embed`` of ``extras + grid**2`` rows, the
  time and label tokens first) is resized over the patch grid with bicubic interpolation, as ViT fine-tuning at a
  higher resolution does; its leading extra-token rows are kept as they are.  A fixed sin-cos table (DiT, the
  hourglass: ``pos_embed`` that is not trained) is a function of the grid, so the new model's own table is kept.
* **Label tables.**  Class ``i`` keeps its row for every ``i`` both label sets have; classes only the new model
  has keep the new model's initialisation; the null class of classifier-free guidance, the last row, is carried
  over from the source's null row when both have one.  Labels are matched by index: a new dataset whose classes
  mean something else reuses the rows as a warm start, nothing more.

Every other tensor must have the same name and shape in both; anything else is refused naming the tensor and both
shapes, so a fine-tune never starts from silently half-loaded weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POSITION_KEY = "pos_embed"
LABEL_KEY = "label_embed.embedding_table.weight"


class TransferError(ValueError):
    """Weights that cannot be fitted to the model by the rules above; the message names the tensor."""


RESIZED = "resized bicubic over the patch grid, extra-token rows kept"
REBUILT = "the model's own sin-cos table at its grid"
REFITTED = "shared classes and the null row carried over"


@dataclass(frozen=True)
class Reshaped:
    """One tensor that changed shape on the way: its name, both shapes and the rule that made the new one."""

    name: str
    old: tuple[int, ...]
    new: tuple[int, ...]
    rule: str
    fresh_rows: int = 0  # label rows left at the model's initialisation (classes the source did not have)


@dataclass
class Transfer:
    """A state dict for ``model.load_state_dict(strict=True)`` and what happened to each tensor on the way."""

    state: dict[str, Tensor]
    loaded: list[str] = field(default_factory=list)
    reshaped: list[Reshaped] = field(default_factory=list)

    def table(self) -> str:
        """What was loaded, resized, rebuilt and newly initialised: the lines a run prints."""
        lines = [f"loaded unchanged: {len(self.loaded)} tensor(s)"]
        for item in self.reshaped:
            fresh = f"; {item.fresh_rows} new class row(s) keep the model's initialisation" if item.fresh_rows else ""
            lines.append(f"{item.name}: {list(item.old)} -> {list(item.new)}, {item.rule}{fresh}")
        return "\n".join(lines)


def resize_position_table(table: Tensor, extras: int, grid: int, extras_after: int = 0) -> Tensor:
    """``(1, extras + g*g + extras_after, D)`` -> ``(1, extras + grid*grid + extras_after, D)``: the patch rows
    resized as a ``g x g`` image of D channels (bicubic, corners not aligned), the extra-token rows unchanged."""
    rows = table.shape[1] - extras - extras_after
    side = math.isqrt(rows)
    if side * side != rows:
        raise TransferError(f"{POSITION_KEY} has {rows} patch rows after {extras} extra token(s), not a square grid")
    lead, patches, tail = table[:, :extras], table[:, extras : extras + rows], table[:, extras + rows :]
    compute = torch.float64 if table.dtype == torch.float64 else torch.float32  # bf16 weights resize in fp32
    image = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).to(compute)
    resized = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = resized.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(table.dtype)
    return torch.cat([lead, patches, tail], dim=1)


def fit_label_table(source: Tensor, target: Tensor, source_null: bool, target_null: bool) -> tuple[Tensor, int]:
    """The target's table with every shared class's row (and the null row) taken from ``source``; returns it and
    the number of class rows left at the target's initialisation."""
    source_classes = source.shape[0] - int(source_null)
    target_classes = target.shape[0] - int(target_null)
    shared = min(source_classes, target_classes)
    fitted = target.clone()
    fitted[:shared] = source[:shared]
    if source_null and target_null:
        fitted[-1] = source[-1]
    return fitted, target_classes - shared


def _source_has_null(source: Tensor, target_null: bool, source_classes: int | None) -> bool:
    if source_classes is not None:
        return source.shape[0] == source_classes + 1
    return target_null  # unknown: the same convention as the model's (the recipes keep class dropout on)


def fit_state_dict(model: nn.Module, source: Mapping[str, Tensor], *, source_classes: int | None = None,
                   where: str = "the source weights") -> Transfer:
    """Fit ``source`` (a state dict in this code's naming) to ``model`` by the module's rules.

    ``source_classes`` is the source's class count when known (a run's config says it); without it the source's
    label table is taken to have a null row exactly when the model's has one."""
    target = model.state_dict()
    missing = sorted(k for k in target if k not in source)
    unexpected = sorted(k for k in source if k not in target)
    if missing or unexpected:
        parts = []
        for keys, what in ((missing, f"missing from {where}"), (unexpected, f"in {where} but not in the model")):
            if keys:
                shown = ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")
                parts.append(f"{len(keys)} tensor(s) {what}: {shown}")
        raise TransferError(f"{'; '.join(parts)} (another architecture or build options?)")
    result = Transfer(state={})
    for key, wanted in target.items():
        given = source[key]
        old, new = tuple(given.shape), tuple(wanted.shape)
        if old == new:
            result.state[key] = given.detach().to(wanted.dtype)
            result.loaded.append(key)
        elif key == POSITION_KEY and not getattr(model, POSITION_KEY).requires_grad:
            result.state[key] = wanted
            result.reshaped.append(Reshaped(key, old, new, REBUILT))
        elif key == POSITION_KEY and len(old) == 3 and old[2] == new[2]:
            extras, after = int(getattr(model, "extras", 0)), int(getattr(model, "extras_after", 0))
            grid = math.isqrt(new[1] - extras - after)
            result.state[key] = resize_position_table(given.detach().to(wanted.dtype), extras, grid, after)
            result.reshaped.append(Reshaped(key, old, new, RESIZED))
        elif key == LABEL_KEY and len(old) == 2 and old[1] == new[1]:
            embedder = model.label_embed  # type: ignore[attr-defined]
            target_null = bool(embedder.has_null_class)
            source_null = _source_has_null(given, target_null, source_classes)
            fitted, fresh = fit_label_table(given.detach().to(wanted.dtype), wanted, source_null, target_null)
            result.state[key] = fitted
            result.reshaped.append(Reshaped(key, old, new, REFITTED, fresh))
        else:
            raise TransferError(f"tensor {key!r} is {list(old)} in {where}, the model needs {list(new)}; only the "
                                f"position table ({POSITION_KEY}) and the label table ({LABEL_KEY}) can change shape")
    return result
