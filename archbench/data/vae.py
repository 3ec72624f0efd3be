"""Loading the VAE for latent caching, with an error that says what to do when offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class VaeNotFoundError(FileNotFoundError):
    """The VAE is neither a local folder nor fetchable from the Hugging Face Hub."""


def looks_local(spec: str) -> bool:
    """Paths (absolute, relative with ./ or ../, ~) are never sent to the Hub; ``owner/name`` is a Hub id."""
    return spec.startswith(("/", "./", "../", "~")) or Path(spec).expanduser().exists()


def load_vae(spec: str) -> Any:
    """``AutoencoderKL.from_pretrained(spec)``: a local diffusers folder or a Hub id (stabilityai/sd-vae-ft-ema)."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("latent caching needs diffusers: pip install diffusers") from exc
    offline_fix = (
        "Where online, run `huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir /path/sd-vae-ft-ema` "
        "(or AutoencoderKL.from_pretrained(...).save_pretrained('/path')) and pass vae=/path/sd-vae-ft-ema."
    )
    if looks_local(spec):
        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            raise VaeNotFoundError(f"VAE folder {path} not found or has no config.json. {offline_fix}")
        return AutoencoderKL.from_pretrained(str(path))
    try:
        return AutoencoderKL.from_pretrained(spec)
    except Exception as exc:  # network errors, gated repos, bad ids: all need the same fix
        message = f"could not fetch VAE {spec!r} from the Hugging Face Hub ({exc}). {offline_fix}"
        raise VaeNotFoundError(message) from exc
