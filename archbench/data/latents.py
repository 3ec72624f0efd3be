"""Pre-encoded VAE latents: encode an image dataset once into shards, so latent-space training never runs the VAE.

On-disk layout of ``out_dir``::

    manifest.json         written last: its presence means every shard it lists is complete
    shard-00000.pt        {"mean": (n, C, h, w), "labels": (n,) int64} (+ "std" when stored)
    shard-00001.pt        ...

Shards hold tensors only, so ``torch.load(weights_only=True)`` reads them.  Latents are stored already
multiplied by ``scaling_factor``.  By default only the posterior mean is kept (deterministic, half the
disk, as in U-ViT's cached ImageNet features); ``sample_posterior=True`` also stores the posterior std so
``LatentShardDataset`` draws a fresh ``mean + std * eps`` each time an item is read, which matches DiT's
training (``latent_dist.sample()`` every step) without running the encoder.  No augmentation (flips) is
baked in.  Every file is written to a temporary name and moved into place with ``os.replace``.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from archbench.console.files import write_atomic
from archbench.data.errors import DatasetNotFoundError

log = logging.getLogger(__name__)

FORMAT = "archbench-latents/1"
MANIFEST_NAME = "manifest.json"
SD_VAE_SCALING_FACTOR = 0.18215
HINT = (
    "Encode the images first: `python -m archbench.data encode src=imagenet_folder root=/imagenet/train "
    "out=/path/latents vae=/path/to/sd-vae-ft-ema`, then set data.root=/path/latents."
)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.pt"


def vae_config_hash(vae: Any) -> str:
    """SHA-256 of the VAE's public config, to tell caches made by different VAE architectures apart."""
    config = {key: value for key, value in dict(vae.config).items() if not key.startswith("_")}
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _remove_leftovers(out_dir: Path) -> None:
    # A stale manifest must never describe new shards, and temp files of a killed run are garbage.
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    for leftover in out_dir.glob(".*.tmp-*"):
        leftover.unlink(missing_ok=True)


class _ShardWriter:
    """Buffers encoded batches and writes fixed-size shards as soon as they fill."""

    def __init__(self, out_dir: Path, shard_size: int, keep_std: bool, dtype: torch.dtype) -> None:
        self.out_dir, self.shard_size, self.keep_std, self.dtype = out_dir, shard_size, keep_std, dtype
        self.buffer: dict[str, list[Tensor]] = {"mean": [], "std": [], "labels": []}
        self.buffered = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, mean: Tensor, std: Tensor, labels: Tensor) -> None:
        self.buffer["mean"].append(mean.to("cpu", self.dtype))
        if self.keep_std:
            self.buffer["std"].append(std.to("cpu", self.dtype))
        self.buffer["labels"].append(labels.to("cpu", torch.int64))
        self.buffered += len(mean)
        while self.buffered >= self.shard_size:
            self._write(self.shard_size)

    def close(self) -> None:
        if self.buffered:
            self._write(self.buffered)

    def _write(self, count: int) -> None:
        shard: dict[str, Tensor] = {}
        for key, parts in self.buffer.items():
            if not parts:
                continue
            joined = torch.cat(parts)
            shard[key] = joined[:count].clone()  # clone: do not save the whole buffer's storage
            self.buffer[key] = [joined[count:]] if len(joined) > count else []
        self.buffered -= count
        name = shard_name(len(self.shards))
        write_atomic(self.out_dir / name, lambda handle: torch.save(shard, handle))
        self.shards.append({"file": name, "count": count})
        log.info("wrote %s (%d latents)", name, count)


def encode_to_shards(
    dataset: Dataset,
    vae: Any,
    out_dir: str | Path,
    *,
    shard_size: int = 4096,
    batch_size: int = 32,
    scaling_factor: float = SD_VAE_SCALING_FACTOR,
    sample_posterior: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    num_workers: int = 0,
    source: str = "",
    vae_name: str = "",
) -> Path:
    """Encode ``dataset`` (items ``(x in [-1, 1], label)``) with ``vae`` (a diffusers ``AutoencoderKL``).

    Returns the path of ``manifest.json``.  ``sample_posterior`` stores the posterior std as well (see the
    module docstring).  ``dtype=torch.float16`` halves the disk (ImageNet-256 means: ~21 GB in float32).
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    vae = vae.to(device).eval()
    writer = _ShardWriter(out, shard_size, keep_std=sample_posterior, dtype=dtype)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    image_shape: list[int] | None = None
    latent_shape: list[int] | None = None
    labels_seen: set[int] = set()
    with torch.inference_mode():
        for images, labels in loader:
            posterior = vae.encode(images.to(device)).latent_dist
            writer.add(posterior.mean * scaling_factor, posterior.std * scaling_factor, labels)
            image_shape = image_shape or list(images.shape[1:])
            latent_shape = latent_shape or list(posterior.mean.shape[1:])
            labels_seen.update(labels.tolist())
    writer.close()
    if latent_shape is None or image_shape is None:
        raise ValueError("encode_to_shards: the dataset is empty")
    classes = list(getattr(dataset, "classes", []) or [])
    manifest = {
        "format": FORMAT,
        "count": sum(shard["count"] for shard in writer.shards),
        "latent_shape": latent_shape,
        "image_shape": image_shape,
        "image_size": image_shape[-1],
        "scaling_factor": scaling_factor,
        "stores_std": sample_posterior,
        "dtype": str(dtype).removeprefix("torch."),
        "num_classes": len(classes) if classes else max(labels_seen) + 1,
        "classes": classes,
        "vae": {"name": vae_name, "class": type(vae).__name__, "config_sha256": vae_config_hash(vae)},
        "source": source or type(dataset).__name__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shards": writer.shards,
    }
    manifest_path = out / MANIFEST_NAME
    write_atomic(manifest_path, lambda handle: handle.write(json.dumps(manifest, indent=2).encode()))
    log.info("encoded %d images into %d shards under %s", manifest["count"], len(writer.shards), out)
    return manifest_path


def read_manifest(root: str | Path, *, name: str = "latents") -> dict[str, Any]:
    """The manifest of a finished encoding run; a missing one means the run never finished (or a wrong root)."""
    path = Path(root).expanduser() / MANIFEST_NAME
    if not path.is_file():
        raise DatasetNotFoundError(name, path, HINT, detail="no manifest (wrong root, or encoding did not finish)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported latent cache format {manifest.get('format')!r}; expected {FORMAT!r}")
    return manifest


class LatentShardDataset(Dataset):
    """Items ``(z, y)``: z float32 latent (already scaled), y the int label.

    Shards are opened lazily with ``torch.load(mmap=True, weights_only=True)``: memory-mapped, so opening is
    instant, the OS page cache is shared by DataLoader workers, and datasets larger than RAM work.
    ``sample_posterior=None`` samples exactly when the cache stores the std.  ``name`` labels errors.
    """

    def __init__(self, root: str | Path, *, sample_posterior: bool | None = None, name: str = "latents") -> None:
        self.root = Path(root).expanduser()
        self.manifest = read_manifest(self.root, name=name)
        stores_std = bool(self.manifest["stores_std"])
        if sample_posterior and not stores_std:
            raise ValueError(f"{self.root}: sample_posterior=True needs a cache encoded with sample_posterior=True")
        self.sample_posterior = stores_std if sample_posterior is None else sample_posterior
        self.files = [self.root / shard["file"] for shard in self.manifest["shards"]]
        missing = [path.name for path in self.files if not path.is_file()]
        if missing:
            raise DatasetNotFoundError(name, self.root, HINT, detail=f"missing shards {', '.join(missing[:5])}")
        self.counts = [int(shard["count"]) for shard in self.manifest["shards"]]
        self.ends = [sum(self.counts[: i + 1]) for i in range(len(self.counts))]
        self.latent_shape = tuple(self.manifest["latent_shape"])
        self.scaling_factor = float(self.manifest["scaling_factor"])
        self.num_classes = int(self.manifest["num_classes"])
        self._open: dict[int, dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def shard(self, index: int) -> dict[str, Tensor]:
        """Tensors of shard ``index``, opened once per process."""
        if index not in self._open:
            data = torch.load(self.files[index], map_location="cpu", weights_only=True, mmap=True)
            if len(data["labels"]) != self.counts[index] or tuple(data["mean"].shape[1:]) != self.latent_shape:
                raise ValueError(f"{self.files[index]}: does not match {MANIFEST_NAME} (corrupt or mixed caches)")
            self._open[index] = data
        return self._open[index]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latents")
        which = bisect.bisect_right(self.ends, index)
        offset = index - (self.ends[which - 1] if which else 0)
        data = self.shard(which)
        latent = data["mean"][offset].float()
        if self.sample_posterior:
            latent = latent + data["std"][offset].float() * torch.randn_like(latent)
        return latent, int(data["labels"][offset])

    def __getstate__(self) -> dict[str, Any]:
        # Workers re-open (re-map) shards themselves rather than receive pickled copies of them.
        return {**self.__dict__, "_open": {}}
