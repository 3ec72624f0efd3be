"""Drawing samples from a trained model and writing them as a PNG grid and an ``.npz`` array.

Shared by the training loop (periodic grids from the EMA weights) and ``python -m archbench.sample``.
Noise comes from a dedicated CPU generator, so sampling never disturbs the training RNG streams and a
given seed gives the same images on any device. ``per_chunk_seeds`` gives every batch its own generator,
seeded from (seed, batch position), so a batch's images do not depend on which batches were drawn before
it: what lets :mod:`archbench.sampling.shards` split a sample set over processes and resume it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from archbench.diffusion import Objective
from archbench.sampling.npz import write_npz
from archbench.sampling.settings import SamplingSettings


def grid_labels(num_samples: int, num_classes: int) -> torch.Tensor | None:
    """Labels ``0, 1, ..., C-1, 0, 1, ...`` (one grid column per class), or None when unconditional."""
    if num_classes <= 0:
        return None
    return torch.arange(num_samples) % num_classes


def grid_columns(num_samples: int, num_classes: int) -> int:
    """One column per class when the classes fit in a row, else a near-square grid."""
    if 0 < num_classes <= 16 and num_samples >= num_classes:
        return num_classes
    return max(1, math.ceil(math.sqrt(num_samples)))


def chunk_generator(seed: int, chunk: int) -> torch.Generator:
    """A CPU generator for chunk ``chunk`` of a set drawn with ``seed``: a hash of both, so neighbouring
    seeds and chunks get unrelated streams (any integer seed, negative ones included)."""
    digest = hashlib.blake2b(f"archbench-chunk:{seed}:{chunk}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


@torch.no_grad()
def draw_images(
    model: nn.Module,
    objective: Objective,
    settings: SamplingSettings,
    *,
    num_samples: int,
    shape: tuple[int, int, int],
    labels: torch.Tensor | None,
    seed: int,
    batch_size: int,
    device: torch.device | str,
    progress: bool,
) -> torch.Tensor:
    """:func:`generate` with a command's chosen settings, under one progress bar for the whole draw (batches x
    steps): what ``sample`` and ``eval`` both do."""
    from archbench.console.progress import shared_progress

    with shared_progress(f"sampling {num_samples} images", -(-num_samples // batch_size), progress):
        return generate(
            model, objective, num_samples=num_samples, shape=shape, labels=labels, sampler=settings.sampler,
            steps=settings.steps, cfg_scale=settings.cfg_scale, guide_channels=settings.guide_channels, seed=seed,
            batch_size=batch_size, device=device, progress=progress,
        )


def generate(
    model: nn.Module,
    objective: Objective,
    *,
    num_samples: int,
    shape: tuple[int, int, int],
    labels: torch.Tensor | None,
    sampler: str | None = None,
    steps: int | None = None,
    cfg_scale: float = 1.0,
    guide_channels: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
    per_chunk_seeds: bool = False,
    first_index: int = 0,
) -> torch.Tensor:
    """``num_samples`` images [N, C, H, W] in (about) [-1, 1], drawn in batches with the model in eval mode.

    By default one generator seeded with ``seed`` feeds every batch in turn. With ``per_chunk_seeds`` the
    batch holding set indices ``[j * batch_size, (j + 1) * batch_size)`` draws from ``chunk_generator(seed,
    j)``, where this call's first sample is set index ``first_index`` (a multiple of ``batch_size``).
    """
    if per_chunk_seeds and first_index % batch_size:
        raise ValueError(f"first_index={first_index} must be a multiple of batch_size={batch_size}")
    if labels is not None and labels.shape[0] != num_samples:
        raise ValueError(f"got {labels.shape[0]} labels for {num_samples} samples")
    null_class = getattr(model, "null_class", None)
    if cfg_scale != 1.0 and (labels is None or null_class is None):
        raise ValueError(
            f"cfg_scale={cfg_scale} needs a class-conditional model trained with class dropout "
            "(a null class); use cfg_scale=1"
        )
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    try:
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            kwargs = {} if labels is None else {"y": labels[start : start + n].to(device)}
            if per_chunk_seeds:
                generator = chunk_generator(seed, (first_index + start) // batch_size)
            out = objective.sample(
                model,
                (n, *shape),
                sampler=sampler,
                steps=steps,
                cfg_scale=cfg_scale,
                null_class=null_class,
                guide_channels=guide_channels,
                model_kwargs=kwargs,
                generator=generator,
                device=device,
                progress=progress,
            )
            if not torch.isfinite(out).all():
                raise ValueError(_nonfinite_cause(model, start, n, cfg_scale))
            chunks.append(out.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def _nonfinite_cause(model: nn.Module, start: int, n: int, cfg_scale: float) -> str:
    """Why samples [start, start + n) came out NaN/inf: weights that already are, or a sampler that diverged."""
    where = f"sampling produced non-finite values in samples {start}..{start + n - 1}"
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        more = ", ..." if len(bad) > 3 else ""
        return f"{where}: the model's weights hold non-finite values ({', '.join(bad[:3])}{more})"
    return (f"{where} although the weights are finite: the sampler diverged (cfg_scale={cfg_scale}; try less "
            "guidance or more steps)")


def displayable(samples: torch.Tensor) -> torch.Tensor:
    """Images to show: 1 or 3 channels as they are; latents (other channel counts) as their first 3 channels,
    each image stretched to [-1, 1] (a preview only: decoding latents needs the VAE)."""
    c = samples.shape[1]
    if c in (1, 3):
        return samples
    view = samples[:, :3] if c >= 3 else samples[:, :1]
    low = view.amin(dim=(1, 2, 3), keepdim=True)
    high = view.amax(dim=(1, 2, 3), keepdim=True)
    return (view - low) / (high - low).clamp_min(1e-8) * 2 - 1


def save_grid(
    samples: torch.Tensor,
    path: str | Path,
    nrow: int,
    meta: Mapping[str, Any] | None = None,
    *,
    labels: torch.Tensor | Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    column_names: Sequence[str] | None = None,
    row_names: Sequence[str] | None = None,
    title: str | None = None,
    scale: int | None = None,
    captions: Sequence[str] | None = None,
) -> Path:
    """Write a grid of images in [-1, 1], ``nrow`` per row, each enlarged by an integer nearest-neighbour factor
    to a readable size (``scale``, default :func:`archbench.sampling.picture.tile_scale`: 16 px -> x4, 28 -> x3,
    32 -> x2, 64+ -> x1); every image pixel keeps its exact value (``torchvision``'s ``save_image`` pixels).

    ``labels`` (one per sample) put the name of each column's class (``class_names[label]``, else ``class N``)
    in a strip above it when every column holds one class; ``column_names`` give those names directly.
    ``row_names`` label the rows at the left, ``title`` goes on top, ``captions`` under each image. ``meta``,
    when given, goes into a PNG's ``archbench`` text chunk (:mod:`archbench.sampling.outputs` reads it back).
    """
    from PIL import Image

    from archbench.sampling.picture import column_classes, render
    from archbench.sampling.picture import column_names as names_of

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = displayable(samples)
    if column_names is None:
        column_names = names_of(column_classes(labels, nrow, images.shape[0]), class_names)
    pixels, _ = render(images, nrow, columns=column_names, rows=row_names, title=title, scale=scale,
                       captions=captions)
    extra = {}
    if meta is not None and path.suffix.lower() == ".png":
        from archbench.sampling.outputs import png_info

        extra["pnginfo"] = png_info(meta)
    Image.fromarray(pixels).save(path, **extra)
    return path


def to_uint8(samples: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (the ADM/DiT sample-file layout)."""
    pixels = ((samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def from_uint8(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] (a sample file's ``arr_0``) -> float32 [N, C, H, W] in [-1, 1]; inverts :func:`to_uint8`."""
    pixels = np.require(pixels, requirements=["C", "W"])  # a read-only buffer (a file's bytes) is copied once
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def save_npz(
    samples: torch.Tensor,
    labels: torch.Tensor | None,
    path: str | Path,
    extra: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """``arr_0``: uint8 images [N, H, W, C]; ``arr_1``: int64 labels [N] (-1 when unconditional); plus ``extra``.

    Same keys as guided-diffusion's / DiT's sample files, so their FID tooling reads it unchanged; written
    atomically by :func:`archbench.sampling.npz.write_npz`. Latent samples (not 1 or 3 channels) are stored as
    float32 ``latents`` [N, C, H, W] instead: turning them into images needs the VAE decoder.
    """
    label_arr = np.full(samples.shape[0], -1, dtype=np.int64) if labels is None else labels.numpy().astype(np.int64)
    if samples.shape[1] in (1, 3):
        arrays = {"arr_0": to_uint8(samples), "arr_1": label_arr}
    else:
        arrays = {"latents": samples.float().numpy(), "arr_1": label_arr}
    return write_npz(path, {**arrays, **(extra or {})})
