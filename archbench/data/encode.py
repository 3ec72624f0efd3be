"""Encode an image dataset into a latent cache in one call (``python -m archbench.data encode``, see
:mod:`archbench.commands.data`): load the VAE, build the dataset, write the shards."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Subset

from archbench.data.latents import SD_VAE_SCALING_FACTOR

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def encode_dataset(
    out: str | Path,
    vae: str,
    *,
    src: str = "imagenet_folder",
    root: str | None = None,
    split: str = "train",
    image_size: int | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    shard_size: int = 4096,
    num_workers: int | None = None,
    scaling_factor: float = SD_VAE_SCALING_FACTOR,
    sample_posterior: bool = False,
    dtype: str = "float32",
    device: str | None = None,
) -> Path:
    """Latent shards of ``src`` encoded by the diffusers VAE at ``vae`` (a folder or Hub id) in ``out``; returns
    the manifest's path. ``limit`` encodes the first N images only; ``num_workers`` defaults to min(8, cores),
    ``device`` to CUDA when available."""
    from archbench.data.catalog import build_dataset
    from archbench.data.latents import encode_to_shards
    from archbench.data.vae import load_vae

    loaded = load_vae(vae)  # before the dataset: scanning ImageNet takes a while, a bad VAE path does not
    dataset = build_dataset(src, root=root, split=split, image_size=image_size)
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    return encode_to_shards(
        dataset,
        loaded,
        out,
        shard_size=shard_size,
        batch_size=batch_size,
        scaling_factor=scaling_factor,
        sample_posterior=sample_posterior,
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
        dtype=DTYPES[dtype],
        num_workers=min(8, os.cpu_count() or 1) if num_workers is None else num_workers,
        source=f"{src} split={split} root={root}",
        vae_name=vae,
    )
