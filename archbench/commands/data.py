"""``python -m archbench.data list|encode|captions [key=value ...]``: list the datasets, encode one into a latent
cache, or list a captioned dataset's captions (the texts to encode into precomputed caption features).

The encoding is :func:`archbench.data.encode.encode_dataset`; this module parses, calls it and prints the
manifest's path.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from archbench.console.args import arg, help_text, parse_args, split_command, wants_help
from archbench.console.errors import fail, interruptible
from archbench.console.logs import setup_logging

PROGRAM = "archbench.data"
USAGE = f"""python -m {PROGRAM} list
       python -m {PROGRAM} encode out=DIR vae=PATH_OR_HUB_ID [key=value ...]
       python -m {PROGRAM} captions [name=fashion_pairs] [out=FILE]"""
ABOUT = """\
list: the datasets the recipes can name (channels x size x size, classes).
encode: run a diffusers AutoencoderKL over an image dataset once and write latent shards + manifest.json, so
latent-space training never runs the VAE.
captions: every caption a captioned dataset can show, one per line (to out=FILE, else printed): encode them with
any text encoder into an .npz of captions (K,) and features (K, T, D) (all-zero rows = padding) and train with
data.caption_features=FILE (archbench.data.caption_features.write_caption_features writes that layout)."""
EXAMPLE = """\
example:
  python -m archbench.data encode src=imagenet_folder root=/data/imagenet/train out=/data/in256-latents \\
      vae=/models/sd-vae-ft-ema image_size=256 batch_size=64"""


@dataclass(frozen=True, kw_only=True)
class EncodeArgs:
    out: str = arg(doc="output folder")
    vae: str = arg(doc="local diffusers folder (offline) or Hub id, e.g. stabilityai/sd-vae-ft-ema")
    src: str = arg("imagenet_folder", doc="dataset name (see list); images must come out in [-1, 1]")
    root: str | None = arg(None, doc="dataset root (data.root)")
    split: str = arg("train", doc="dataset split")
    image_size: int | None = arg(None, minimum=1, shown="the dataset's", doc="crop/resize size (256 for "
                                                                             "imagenet_folder)")
    batch_size: int = arg(32, minimum=1, doc="images per VAE forward pass")
    shard_size: int = arg(4096, minimum=1, doc="latents per shard file")
    num_workers: int | None = arg(None, minimum=0, shown="min(8, cores)", doc="data-loading processes")
    scaling_factor: float = arg(0.18215, doc="multiplied into the stored latents (SD-VAE's)")
    sample_posterior: bool = arg(False, doc="also store the posterior std, sampled at training time")
    dtype: Literal["float32", "float16", "bfloat16"] = arg("float32", doc="dtype of the stored latents")
    device: str | None = arg(None, shown="cuda if available", doc="cuda or cpu")
    limit: int | None = arg(None, minimum=1, doc="encode only the first N images (smoke tests)")


@dataclass(frozen=True, kw_only=True)
class CaptionsArgs:
    name: str = arg("fashion_pairs", doc="a captioned dataset")
    out: str | None = arg(None, shown="printed", doc="a text file to write, one caption per line")


@dataclass(frozen=True)
class ListArgs:
    """``list`` takes no keys."""


def usage() -> str:
    return help_text(EncodeArgs, usage=USAGE, about=ABOUT, notes=EXAMPLE)


def list_datasets() -> None:
    from archbench.data.catalog import DATASETS

    for info in DATASETS.values():
        shape = f"{info.channels}x{info.image_size}x{info.image_size}"
        print(f"{info.name:20s} {shape:10s} classes={info.num_classes:<5d} {info.description}")


def write_captions(request: CaptionsArgs) -> None:
    from archbench.console.files import write_text_atomic
    from archbench.data.captions import language

    text = "\n".join(language(request.name).all_captions()) + "\n"
    if request.out is None:
        print(text, end="")
    else:
        print(f"wrote {text.count(chr(10))} captions to {write_text_atomic(request.out, text)}")


@interruptible(PROGRAM)
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 ok, 1 bad usage or missing data)."""
    from archbench.data.encode import encode_dataset
    from archbench.data.errors import DatasetNotFoundError
    from archbench.data.vae import VaeNotFoundError

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] == "help" or wants_help(args):
        print(usage())
        return 0
    try:
        command, rest = split_command(args, ["list", "encode", "captions"])
        if command == "list":
            parse_args(ListArgs, rest)
            list_datasets()
            return 0
        if command == "captions":
            write_captions(parse_args(CaptionsArgs, rest))
            return 0
        request = parse_args(EncodeArgs, rest)
        setup_logging()
        print(encode_dataset(**dataclasses.asdict(request)))
    except (ValueError, DatasetNotFoundError, VaeNotFoundError) as exc:  # UsageError is a ValueError
        return fail(PROGRAM, exc)
    return 0

