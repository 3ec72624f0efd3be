"""What an output of ``python -m archbench.sample`` holds, so that one is never replaced by something else unasked.

Every file the command writes records a ``meta`` JSON object: a sample set's ``.npz`` in its ``meta`` array, a
PNG grid's ``.npz`` likewise and the grid's PNG in an ``archbench`` text chunk. The meta names its ``format``
(the kind of file), the settings that decide its images, the checksum of the weights they were drawn from
(:func:`weights_checksum`) and a ``fingerprint`` over all of these. :func:`compare` tells an existing file
apart from the one a command is about to write: absent, the same, a prefix of it (a smaller set of the same
settings) or something else, described in words for a one-line refusal (:func:`refusal`).

A sample set is identified by its weights, not by the checkpoint's path and step: a run deleted and retrained
at the same path gives other weights, hence another set; the same weights exported to a pretrained folder give
the same set.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

SET_FORMAT = "archbench-samples/1"
GRID_FORMAT = "archbench-grid/1"
PNG_META_KEY = "archbench"
SHORT = 12  # hex digits of a weights checksum shown in messages
PROCEED = "give another out= or overwrite=true to replace"


class OutputError(ValueError):
    """An existing output holds something else and ``overwrite`` was not given (a one-line message)."""


def weights_checksum(model: nn.Module) -> str:
    """SHA-256 (hex) of ``model``'s weights: every ``state_dict`` tensor's name, dtype, shape and raw bytes, in key
    order. The same weights give the same checksum in any process, on any device and from any container (a
    checkpoint's EMA state or a pretrained folder); a retrained model gives another. It reads the tensors once
    and no file, so it costs about as much as one copy of the weights."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if not isinstance(value, torch.Tensor):  # a module's extra state: not weights
            continue
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def short(checksum: str | None) -> str:
    """A checksum's first hex digits, as messages show it."""
    return "none recorded" if not checksum else str(checksum)[:SHORT]


def fingerprint(identity: Mapping[str, Any]) -> str:
    """Hash of the JSON of what decides a file's images."""
    return hashlib.sha256(json.dumps(dict(identity), sort_keys=True, default=str).encode()).hexdigest()[:32]


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The archbench ``meta`` of an ``.npz`` (its ``meta`` array) or a PNG (its ``archbench`` text chunk), or None:
    another tool's file, an older archbench file, an unreadable one."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as image:
                text = image.info.get(PNG_META_KEY)
        else:
            with np.load(path, allow_pickle=False) as z:
                text = str(z["meta"]) if "meta" in z.files else None
        meta = json.loads(text) if text else None
    except Exception:  # not an image, not a zip, bad JSON: a file archbench cannot identify
        return None
    return meta if isinstance(meta, dict) else None


def png_info(meta: Mapping[str, Any]) -> Any:
    """The PNG text chunk that records ``meta`` (for PIL's ``save(pnginfo=...)``)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_META_KEY, json.dumps(dict(meta), sort_keys=True, default=str))
    return info


def kind_of(meta: Mapping[str, Any], path: Path, count: bool = True) -> str:
    """A file's kind in words, from its meta: a sample set, a PNG grid or a grid's ``.npz`` (of how many samples)."""
    of = f" of {meta.get('num_samples')} samples" if count else ""
    if meta.get("format") == SET_FORMAT:
        return f"a sample set{of}"
    if meta.get("format") == GRID_FORMAT:
        return f"a PNG grid{of}" if path.suffix.lower() == ".png" else f"the .npz of a PNG grid{of}"
    return f"a file of format {meta.get('format')!r}"


def _unidentified(path: Path) -> str:
    """What a file without archbench meta is, in words."""
    if path.is_dir():
        return "a directory"
    if path.suffix.lower() == ".png":
        return "a .png without archbench metadata"
    try:
        with zipfile.ZipFile(path) as zf:
            keys = [name.removesuffix(".npy") for name in zf.namelist()]
    except (zipfile.BadZipFile, OSError):
        return "a file that is not a readable .npz"
    return f"an .npz without archbench metadata (keys: {', '.join(keys) or 'none'})"


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: old, now new`` for every setting that differs, nested sections as ``section.key``."""
    skip = {"format", "weights", "fingerprint", "source"}
    found = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in skip:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {json.dumps(a, default=str)}, now {json.dumps(b, default=str)}")
    return found


@dataclass(frozen=True)
class Existing:
    """An output path before writing: ``absent``; ``same`` (holds what would be written); ``fewer`` (a sample set
    of these settings with fewer samples, which the new one extends); ``other`` (something else, ``held``
    says what it holds and ``why`` how it differs, for :func:`refusal`)."""

    path: Path
    state: Literal["absent", "same", "fewer", "other"]
    held: str = ""
    why: str = ""

    @property
    def conflict(self) -> bool:
        return self.state == "other"

    def __str__(self) -> str:
        return f"{self.path} holds {self.held}{self.why}"

    @property
    def replaced(self) -> str:
        """What ``overwrite`` replaces, in words."""
        return f"{self.path}, which holds {self.held}{self.why}"


def compare(path: str | Path, wanted: Mapping[str, Any]) -> Existing:
    """What ``path`` holds against ``wanted``, the meta of the file about to be written there."""
    path = Path(path)
    if not path.exists():
        return Existing(path, "absent")
    meta = read_meta(path) if path.is_file() else None
    if meta is None:
        return Existing(path, "other", _unidentified(path))
    held = kind_of(meta, path)
    if meta.get("format") != wanted.get("format"):
        return Existing(path, "other", held, f", not {kind_of(wanted, path, count=False)}")
    if meta.get("weights") != wanted.get("weights"):
        why = (f" drawn from other weights (sha256 {short(meta.get('weights'))}; "
               f"these weights: {short(wanted.get('weights'))})")
        return Existing(path, "other", held, why)
    if meta.get("fingerprint") != wanted.get("fingerprint"):
        changed = _differences(meta, wanted)
        return Existing(path, "other", held, f" drawn with other settings ({'; '.join(changed) or 'fingerprint'})")
    have, want = meta.get("num_samples"), wanted.get("num_samples")
    if have == want:
        return Existing(path, "same", held)
    if wanted.get("format") == SET_FORMAT and isinstance(have, int) and isinstance(want, int) and have < want:
        return Existing(path, "fewer", held)  # a prefix of the set asked for: extending it loses nothing
    return Existing(path, "other", held, f" with these settings, more than num_samples={want}")


def refusal(conflicts: list[Existing]) -> str:
    """The one-line refusal for outputs that hold something else."""
    them = "them" if len(conflicts) > 1 else "it"
    return f"{'; '.join(str(c) for c in conflicts)}; {PROCEED} {them}"


def claim(paths: list[Path], wanted: Mapping[str, Any], overwrite: bool, log: Any) -> list[Existing]:
    """Check that writing ``wanted`` to ``paths`` replaces nothing else: raise :class:`OutputError` (one line
    naming each file and what it holds) unless ``overwrite``, in which case one log line says what is replaced.
    Returns what each path holds."""
    found = [compare(path, wanted) for path in paths]
    conflicts = [e for e in found if e.conflict]
    if conflicts and not overwrite:
        raise OutputError(refusal(conflicts))
    if conflicts:
        log.info("overwrite=true: replacing %s", ", and ".join(c.replaced for c in conflicts))
    return found
