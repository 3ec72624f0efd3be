"""Command line for the data layer: ``list`` the datasets, ``encode`` one into a latent cache.

Arguments are ``key=value`` pairs, the same spelling as recipe overrides, so commands are easy to script.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Subset

from archbench.console import setup_logging

USAGE = """\
usage: python -m archbench.data list
       python -m archbench.data encode out=DIR vae=PATH_OR_HUB_ID [key=value ...]

encode: run a diffusers AutoencoderKL over an image dataset once and write latent shards + manifest.json
  src=imagenet_folder      dataset name (see `list`); images must come out in [-1, 1]
  root=DIR                 dataset root (data.root)
  split=train              dataset split
  out=DIR                  output folder (required)
  vae=PATH|HUB_ID          local diffusers folder (offline) or Hub id, e.g. stabilityai/sd-vae-ft-ema (required)
  image_size=N             crop/resize size (default: the dataset's own, 256 for imagenet_folder)
  batch_size=32  shard_size=4096  num_workers=min(8, cores)
  scaling_factor=0.18215   multiplied into the stored latents (SD-VAE)
  sample_posterior=false   also store the posterior std, sampled at training time
  dtype=float32            float32 | float16 | bfloat16 for the stored latents
  device=cuda|cpu          default: cuda when available
  limit=N                  encode only the first N images (smoke tests)

example:
  python -m archbench.data encode src=imagenet_folder root=/data/imagenet/train out=/data/in256-latents \\
      vae=/models/sd-vae-ft-ema image_size=256 batch_size=64
"""


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _dtype(text: str) -> torch.dtype:
    choices = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if text not in choices:
        raise ValueError(f"dtype must be one of {', '.join(choices)}, got {text!r}")
    return choices[text]


ENCODE_KEYS: dict[str, Callable[[str], Any]] = {
    "src": str,
    "root": str,
    "split": str,
    "out": str,
    "vae": str,
    "image_size": int,
    "batch_size": int,
    "shard_size": int,
    "num_workers": int,
    "scaling_factor": float,
    "sample_posterior": _bool,
    "dtype": _dtype,
    "device": str,
    "limit": int,
}


def parse_pairs(args: Sequence[str], types: dict[str, Callable[[str], Any]]) -> dict[str, Any]:
    """``["a=1", ...]`` -> ``{"a": 1}``, converted by ``types``; unknown keys and bad values raise ValueError."""
    parsed: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {arg!r}")
        if key not in types:
            raise ValueError(f"unknown key {key!r}; valid keys: {', '.join(types)}")
        try:
            parsed[key] = types[key](value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return parsed


def run_encode(options: dict[str, Any]) -> str:
    """Build the dataset, load the VAE, encode; returns the manifest path."""
    from archbench.data.catalog import build_dataset
    from archbench.data.latents import encode_to_shards
    from archbench.data.vae import load_vae

    missing = [key for key in ("out", "vae") if key not in options]
    if missing:
        raise ValueError(f"encode needs {' and '.join(k + '=...' for k in missing)}")
    vae = load_vae(options["vae"])  # before the dataset: scanning ImageNet takes a while, a bad VAE path does not
    src = options.get("src", "imagenet_folder")
    dataset = build_dataset(
        src, root=options.get("root"), split=options.get("split", "train"), image_size=options.get("image_size")
    )
    if "limit" in options:
        dataset = Subset(dataset, range(min(options["limit"], len(dataset))))
    manifest = encode_to_shards(
        dataset,
        vae,
        options["out"],
        shard_size=options.get("shard_size", 4096),
        batch_size=options.get("batch_size", 32),
        scaling_factor=options.get("scaling_factor", 0.18215),
        sample_posterior=options.get("sample_posterior", False),
        device=options.get("device", "cuda" if torch.cuda.is_available() else "cpu"),
        dtype=options.get("dtype", torch.float32),
        num_workers=options.get("num_workers", min(8, os.cpu_count() or 1)),
        source=f"{src} split={options.get('split', 'train')} root={options.get('root')}",
        vae_name=options["vae"],
    )
    return str(manifest)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 ok, 1 bad usage or missing data)."""
    from archbench.data.catalog import DATASETS
    from archbench.data.errors import DatasetNotFoundError
    from archbench.data.vae import VaeNotFoundError

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help") or "--help" in args or "-h" in args:
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    try:
        if command == "list":
            for info in DATASETS.values():
                shape = f"{info.channels}x{info.image_size}x{info.image_size}"
                print(f"{info.name:20s} {shape:10s} classes={info.num_classes:<5d} {info.description}")
            return 0
        if command == "encode":
            setup_logging()
            print(run_encode(parse_pairs(rest, ENCODE_KEYS)))
            return 0
        raise ValueError(f"unknown command {command!r}; commands: list, encode (see --help)")
    except (ValueError, DatasetNotFoundError, VaeNotFoundError) as exc:
        print(f"archbench.data: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
