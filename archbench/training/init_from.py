"""``train.init_from``: a new run (step 0, fresh optimiser, its own run_dir) that starts from trained weights.

SOURCE is read before any data or model is built, so a wrong path fails at once:

* a training run folder, or one of its checkpoint files: the EMA weights (what the run samples from);
* a ``save_pretrained`` folder or a Hugging Face Hub id (``owner/name``): its ``model.safetensors``;
* an official DiT / U-ViT / DiS checkpoint (``.pt``/``.pth``): renamed to this code's keys for the model's family.

The weights are then fitted to the model built from this run's config (:mod:`backbones.transfer`: position tables
resized or rebuilt, the label table refitted, anything else refused naming the tensor and both shapes); the run
records SOURCE and the SHA-256 of the file the weights came from, and writes what was loaded, resized and newly
initialised to ``init_from.json`` beside its config.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from archbench.console.files import write_text_atomic
from archbench.training import checkpoint as ckpt
from archbench.training.schema import ConfigError

log = logging.getLogger("archbench.train")
RECORD_FILE = "init_from.json"


@dataclass
class SourceWeights:
    """The weights SOURCE names, in this code's naming, with where they came from."""

    source: str
    kind: str  # run | checkpoint | pretrained | official
    file: Path
    sha256: str
    state: dict[str, Tensor]
    backbone: str | None = None  # the source's registry name, when it records one
    num_classes: int | None = None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _from_checkpoint(source: str, path: Path, state: dict[str, Any], kind: str) -> SourceWeights:
    config = ckpt.checkpoint_config(state)
    backbone = config.get("backbone", {})
    return SourceWeights(source, kind, path, file_sha256(path), dict(state["ema"]["model"]),
                         backbone=backbone.get("name"), num_classes=backbone.get("num_classes"))


def _from_pretrained(source: str, hub: bool = False) -> SourceWeights:
    from safetensors.torch import load_file

    from backbones.hub import WEIGHTS_FILE, PretrainedError, check_pretrained, load_pretrained_config

    try:
        config = load_pretrained_config(source)
        check_pretrained(config)
    except PretrainedError as exc:
        as_hub = "no such file or folder here, and as a Hugging Face Hub id: " if hub else ""
        raise ConfigError(f"train.init_from={source}: {as_hub}{exc}") from None
    path = Path(config["folder"]) / WEIGHTS_FILE
    return SourceWeights(source, "pretrained", path, file_sha256(path), load_file(str(path)),
                         backbone=config["name"], num_classes=config["build"].get("num_classes"))


def _from_official(source: str, path: Path, family: str) -> SourceWeights:
    from backbones.official import (
        OFFICIAL_RENAMES,
        OfficialCheckpointError,
        convert_official_state_dict,
        load_official_state_dict,
    )

    if family not in OFFICIAL_RENAMES:
        raise ConfigError(f"train.init_from={source}: not an archbench checkpoint, and official checkpoints exist "
                          f"only for the {', '.join(OFFICIAL_RENAMES)} families (this run builds a {family})")
    try:
        official, _ = load_official_state_dict(path)
    except (OfficialCheckpointError, RuntimeError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"train.init_from={source}: neither an archbench nor an official checkpoint ({first})"
                          ) from None
    return SourceWeights(source, "official", path, file_sha256(path), convert_official_state_dict(family, official))


def read_source(source: str, family: str) -> SourceWeights:
    """The weights ``source`` names (see the module docstring); ``family`` is the family of the model being
    built, which names the renaming table of an official checkpoint.  A bad SOURCE is one ConfigError line."""
    from backbones.hub import is_pretrained_dir

    path = Path(source).expanduser()
    if path.is_dir() and is_pretrained_dir(path):
        return _from_pretrained(source)
    if path.is_dir():
        try:
            found = ckpt.load_newest_good(path)
        except ckpt.CheckpointError as exc:
            raise ConfigError(f"train.init_from={source}: {exc}") from None
        if found is None:
            raise ConfigError(f"train.init_from={source}: the folder holds neither checkpoints "
                              f"({ckpt.checkpoint_dir(path)}) nor a save_pretrained model (config.json and "
                              "model.safetensors)")
        return _from_checkpoint(source, found[0], found[1], "run")
    if path.is_file():
        try:
            return _from_checkpoint(source, path, ckpt.load_checkpoint(path), "checkpoint")
        except ckpt.CheckpointError:
            return _from_official(source, path, family)
    if "/" in source and not source.startswith((".", "/", "~")) and source.count("/") == 1:
        return _from_pretrained(source, hub=True)
    raise ConfigError(f"train.init_from={source}: no such file or folder; give a training run folder, a checkpoint "
                      "file, a save_pretrained folder, a Hub id (owner/name) or an official checkpoint")


@dataclass
class InitRecord:
    """What :func:`start_from` did: the JSON record of the run and the lines it prints."""

    record: dict[str, Any]
    table: str

    def write(self, run_dir: Path) -> None:
        write_text_atomic(run_dir / RECORD_FILE, json.dumps(self.record, indent=2) + "\n")
        source, digest = self.record["source"], self.record["sha256"]
        log.info("init_from %s (%s, sha256 %s...):\n  %s", source, self.record["file"], digest[:12],
                 self.table.replace("\n", "\n  "))


def start_from(model: nn.Module, weights: SourceWeights) -> InitRecord:
    """Load ``weights`` into ``model`` by :func:`backbones.transfer.fit_state_dict`'s rules."""
    from backbones.transfer import TransferError, fit_state_dict

    named = f" ({weights.backbone})" if weights.backbone else ""
    where = f"{weights.kind} {weights.file}{named}"
    try:
        fitted = fit_state_dict(model, weights.state, source_classes=weights.num_classes, where=where)
    except TransferError as exc:
        raise ConfigError(f"train.init_from={weights.source}: {exc}") from None
    with torch.no_grad():
        model.load_state_dict(fitted.state, strict=True)
    record = {
        "source": weights.source, "kind": weights.kind, "file": str(weights.file), "sha256": weights.sha256,
        "source_backbone": weights.backbone, "loaded": len(fitted.loaded),
        "reshaped": [asdict(item) for item in fitted.reshaped],
    }
    return InitRecord(record, fitted.table())


def backbone_family(config: dict[str, Any]) -> str:
    """The registry family of the run's backbone (names the renaming table of an official checkpoint)."""
    from archbench.training.config import backbone_options
    from backbones.registry import get_spec

    return get_spec(backbone_options(config)[0]).family
