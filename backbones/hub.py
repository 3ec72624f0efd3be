"""Share a built backbone as a folder or a Hugging Face Hub repository, and rebuild it with one call.

A pretrained folder holds ``model.safetensors`` (the weights, no pickle) and ``config.json``: the registry
name, the resolved build configuration, and an optional ``extra`` section for whoever saved it (archbench
stores the diffusion and data settings there, so a folder can be sampled from without its training run).
``from_pretrained`` takes such a folder or a Hub repo id; Hub downloads go through ``huggingface_hub``, so
``HF_HUB_OFFLINE=1`` and its cache apply as usual.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from backbones.registry import build

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "archbench-backbone"
FORMAT_VERSION = 1
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PretrainedError(ValueError):
    """A folder or repo that is not a pretrained backbone, or weights that do not fit its config."""


def _atomic_write(path: Path, write: Any) -> None:
    """``write(tmp_path)`` then rename over ``path``: a crash never leaves a half-written file under the name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pretrained_config(model: nn.Module, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` content of ``model`` (built by the registry, which records its name and config)."""
    config = getattr(model, "backbone_config", None)
    if not config or "name" not in config:
        raise PretrainedError(
            f"{type(model).__name__} was not built by the registry (archbench.build), so its name and build "
            "config are unknown; build it with archbench.build(name, ...) to save it"
        )
    build_config = {k: v for k, v in config.items() if k not in ("name", "family")}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": config["name"],
        "family": config.get("family", ""),
        "build": build_config,
        "extra": dict(extra or {}),
    }


def save_pretrained(model: nn.Module, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created); returns the folder."""
    from safetensors.torch import save_model

    config = pretrained_config(model, extra)
    json.dumps(config)  # fail before writing anything when ``extra`` is not JSON-serialisable
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / WEIGHTS_FILE, lambda tmp: save_model(model, tmp, metadata={"format": "pt"}))
    _atomic_write(out / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return out


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`save_pretrained`."""
    folder = Path(path)
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def _resolve(source: str | os.PathLike, revision: str | None, cache_dir: str | None) -> Path:
    """A local folder as it is; a Hub repo id downloaded (or found in the cache) by huggingface_hub."""
    path = Path(source)
    if path.is_dir():
        if not is_pretrained_dir(path):
            raise PretrainedError(f"{path} is not a pretrained backbone folder: it needs {CONFIG_FILE}, {WEIGHTS_FILE}")
        return path
    text = str(source)
    if not _REPO_ID.match(text):
        raise PretrainedError(f"{text!r} is neither a folder nor a Hugging Face Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                text, revision=revision, cache_dir=cache_dir, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]
            )
        )
    except LocalEntryNotFoundError:
        raise PretrainedError(
            f"{text}: not in the local Hugging Face cache and the Hub cannot be reached (HF_HUB_OFFLINE is set or "
            "there is no network); download it once online or pass a local folder"
        ) from None
    except HfHubHTTPError as exc:
        raise PretrainedError(f"{text}: the Hub refused the download ({str(exc).splitlines()[0]})") from None


def load_pretrained_config(
    source: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None
) -> dict[str, Any]:
    """``config.json`` of a pretrained folder or Hub repo, checked for the format this module writes."""
    folder = _resolve(source, revision, cache_dir)
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("format") != FORMAT or "name" not in config or "build" not in config:
        raise PretrainedError(f"{folder / CONFIG_FILE} is not an archbench backbone config (format {FORMAT!r})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise PretrainedError(
            f"{folder / CONFIG_FILE} has format version {config['format_version']}; this archbench reads up to "
            f"{FORMAT_VERSION}: upgrade archbench"
        )
    return {**config, "folder": str(folder)}


def from_pretrained(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    device: torch.device | str = "cpu",
    **overrides: Any,
) -> nn.Module:
    """Rebuild a backbone from a pretrained folder or Hub repo id and load its weights strictly, in eval mode
    (call ``.train()`` to fine-tune).

    ``overrides`` change build options that do not touch the weights' shapes (e.g. ``scan="reference"``);
    anything that does is refused by the strict load, naming the mismatched tensors.
    """
    from safetensors.torch import load_model

    config = load_pretrained_config(source, revision, cache_dir)
    model = build(config["name"], **{**config["build"], **overrides})
    try:
        missing, unexpected = load_model(model, Path(config["folder"]) / WEIGHTS_FILE, strict=False, device=str(device))
    except RuntimeError as exc:  # a shape mismatch
        raise PretrainedError(f"{config['folder']}: weights do not fit {config['name']} ({exc})") from None
    if missing or unexpected:
        raise PretrainedError(
            f"{config['folder']}: weights do not fit {config['name']}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.pretrained_extra = config["extra"]
    return model.to(device).eval()  # ready for inference, as the Hub convention has it: no drop path, no dropout


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    extra: dict[str, Any] | None = None,
    private: bool = False,
    token: str | None = None,
) -> str:
    """Save ``model`` into a temporary folder and upload it to ``repo_id`` (created if needed); returns the
    commit's URL. Needs a network and a token (``HF_TOKEN`` or ``huggingface-cli login``)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, extra)
        message = f"archbench {pretrained_config(model)['name']}"
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=message)
    return str(commit.commit_url)
