"""Training checkpoints: atomic writes, newest-K retention, and loading that fails with a clear message.

A checkpoint is a dict of tensors and primitives only (the config travels as a JSON string), so it loads
with ``torch.load(weights_only=True)``: opening a checkpoint never executes code from the file.  Files are
written to a temporary name, fsync'd and moved into place with ``os.replace``, so a crash or a signal
mid-write leaves either the previous file or the complete new one, never a truncated one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from archbench.training.signals import signals_deferred

FORMAT = "archbench-checkpoint/1"
SUBDIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")
log = logging.getLogger("archbench.train")
# Build options that choose an implementation, not the weights: a checkpoint may resume under another value.
RUNTIME_OPTIONS = frozenset({"scan"})


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, not ours, or made for a different model."""


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written (a full disk, a vanished folder); no partial file is left."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / SUBDIR


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """``run_dir/checkpoints/step_0001000.pt``: zero-padded so names sort by step."""
    return checkpoint_dir(run_dir) / f"step_{step:07d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run, oldest step first (temporary files are ignored)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` atomically: temp file in the same folder, fsync, ``os.replace``, fsync the folder.

    SIGINT/SIGTERM wait until the file is in place (:func:`~archbench.training.signals.signals_deferred`), so a
    second Ctrl-C stops the run with this checkpoint kept.  Where they cannot wait (a write outside the main
    thread), an interrupted write removes its temporary file and raises KeyboardInterrupt, never a disk error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with signals_deferred():
        try:
            with open(tmp, "wb") as handle:
                torch.save({"format": FORMAT, **state}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as exc:  # torch's zip writer reports ENOSPC as a RuntimeError on top
            if _in_chain(exc, lambda e: isinstance(e, KeyboardInterrupt)):  # torch's clean-up masked a Ctrl-C
                raise KeyboardInterrupt from None
            if _disk_full(exc):
                cause = f"the disk is full ({shutil.disk_usage(path.parent).free:,} bytes free)"
            else:
                cause = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise CheckpointSaveError(f"could not write checkpoint {path}: {cause}") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        _fsync_dir(path.parent)
    return path


def _in_chain(exc: BaseException | None, test: Callable[[BaseException], bool]) -> bool:
    """Whether ``test`` holds for ``exc`` or anything in its cause/context chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if test(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _disk_full(exc: BaseException | None) -> bool:
    """Whether ENOSPC is anywhere in the exception chain."""
    return _in_chain(exc, lambda e: isinstance(e, OSError) and e.errno == errno.ENOSPC)


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (``keep_last <= 0`` keeps everything)."""
    if keep_last <= 0:
        return []
    doomed = list_checkpoints(run_dir)[:-keep_last]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); anything unreadable raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x80")):  # torch's zip format, or legacy pickle
        raise CheckpointError(f"{path} is not a checkpoint: it is not a file written by torch.save")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable archbench checkpoint ({_reason(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not an archbench training checkpoint (format {found!r}, expected {FORMAT})")
    return state


def _reason(exc: BaseException) -> str:
    """The first line of a load error, without torch's advice to load with weights_only=False (that would let
    the file run code: never the right fix for a damaged or foreign file)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    if "weights_only" in first or "Weights only load failed" in first:
        first = "it holds objects other than tensors and plain values, or it is damaged"
    return f"{type(exc).__name__}: {first}"


def load_newest_good(
    run_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``run_dir`` that loads, skipping damaged newer ones with a warning naming them
    (a kill cannot leave one, but a full disk or a copy can); None when the run has no checkpoints."""
    found = list_checkpoints(run_dir)
    skipped: list[str] = []
    for path in reversed(found):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as exc:
            skipped.append(str(exc))
            continue
        if skipped:
            log.warning("skipped %d unreadable newer checkpoint(s): %s; resuming from %s",
                        len(skipped), "; ".join(skipped), path)
        return path, state
    if found:
        raise CheckpointError(f"no readable checkpoint under {checkpoint_dir(run_dir)}: {'; '.join(skipped)}")
    return None


def checkpoint_config(state: dict[str, Any]) -> dict[str, Any]:
    """The resolved training config stored in a checkpoint."""
    return json.loads(state["config"])


def check_backbone(state: dict[str, Any], name: str, options: dict[str, Any], path: str | Path = "") -> None:
    """Refuse a checkpoint whose backbone (name or build options) differs from the one being built."""
    saved = checkpoint_config(state)["backbone"]
    saved_name = saved.get("name")
    where = f"checkpoint {path}" if path else "the checkpoint"
    if saved_name != name:
        raise CheckpointError(f"{where} holds backbone {saved_name!r}, but this run builds {name!r}")
    from backbones.registry import backbone_config

    # An option newer than the checkpoint is recorded in it at its default: code that gained a build option
    # (captions did) still resumes the runs it wrote before, as long as the run keeps that default.
    defaults = backbone_config(name)
    diffs = [
        f"{key}={saved.get(key, defaults.get(key))!r} (now {options.get(key)!r})"
        for key in sorted(set(saved) | set(options))
        if key != "name" and key not in RUNTIME_OPTIONS and saved.get(key, defaults.get(key)) != options.get(key)
    ]
    if diffs:
        raise CheckpointError(f"{where} holds {name} built with different options: {', '.join(diffs)}")


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``auto`` -> newest checkpoint in ``run_dir`` (None for a fresh run); a path -> that file; None -> None."""
    if resume is None or str(resume).lower() in ("none", "null", "false", ""):
        return None
    if str(resume) == "auto":
        return latest_checkpoint(run_dir)
    path = Path(str(resume)).expanduser()
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"train.resume={resume}: no checkpoints under {checkpoint_dir(path)}")
        return found
    if not path.is_file():
        raise CheckpointError(f"train.resume={resume}: no such checkpoint file")
    return path
