"""Inception-v3 pool3 features (2048-d) for FID, through torch-fidelity's port of the TensorFlow FID network.

torch-fidelity is used because it reproduces the original TensorFlow pipeline bit-for-bit (uint8 input, TF1
bilinear resize to 299, same weights), which is what published FIDs were computed with. archbench never downloads:
the weights come from ``weights=``, ``$ARCHBENCH_INCEPTION_WEIGHTS`` or torch hub's checkpoint cache, and are loaded
by us with ``torch.load(weights_only=True)`` (no pickled code) before being handed to the library.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from torch import nn

from archbench.evaluation.cache import sha256_file
from archbench.evaluation.extractor import check_images, to_channels

WEIGHTS_ENV = "ARCHBENCH_INCEPTION_WEIGHTS"
WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name
ALT_WEIGHTS_FILENAMES = ("pt_inception-2015-12-05-6726825d.pth",)  # pytorch-fid's name for the same converted net
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILENAME
ALT_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + ALT_WEIGHTS_FILENAMES[0]
RANDOM_CHECKSUM = "random-init"


class InceptionWeightsMissing(FileNotFoundError):
    """Raised instead of downloading when no Inception weights file can be found locally."""


def hub_checkpoints_dir() -> Path:
    """torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where torch-fidelity would have saved them."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def missing_weights_message(tried: list[Path]) -> str:
    target = hub_checkpoints_dir() / WEIGHTS_FILENAME
    lines = [
        "Inception-v3 FID weights not found (archbench never downloads them).",
        f"Place the file {WEIGHTS_FILENAME} in {target.parent}/ (i.e. {target}),",
        f"or set {WEIGHTS_ENV}=/path/to/{WEIGHTS_FILENAME}, or pass weights=PATH.",
        f"Get it on a machine with internet access from {WEIGHTS_URL}",
        f"(pytorch-fid's {ALT_WEIGHTS_FILENAMES[0]} from {ALT_WEIGHTS_URL} is accepted too).",
    ]
    if tried:
        lines.append("Looked in: " + ", ".join(str(p) for p in tried))
    return "\n".join(lines)


def find_inception_weights(weights: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the weights file: explicit path > ``$ARCHBENCH_INCEPTION_WEIGHTS`` > torch hub cache; never downloads."""
    explicit = weights if weights is not None else os.environ.get(WEIGHTS_ENV) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        raise InceptionWeightsMissing(missing_weights_message([path]))
    tried = [hub_checkpoints_dir() / name for name in (WEIGHTS_FILENAME, *ALT_WEIGHTS_FILENAMES)]
    for path in tried:
        if path.is_file():
            return path
    raise InceptionWeightsMissing(missing_weights_message(tried))


def _fidelity_class() -> type[nn.Module]:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        raise ImportError(
            "features=inception needs torch-fidelity: pip install torch-fidelity (or archbench[fid])"
        ) from e

    class _Net(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
            if not state_dict:  # random initialisation (tests): keep PyTorch's default init
                return None
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    return _Net


FEATURE_LAYERS = ("2048", "logits_unbiased")  # pool3 for FID and KID; the bias-free logits torch-fidelity's IS uses


def build_inception_network(state_dict: dict[str, torch.Tensor] | None) -> nn.Module:
    """torch-fidelity's FID Inception-v3 returning pool3 features and IS logits; ``None`` gives random weights
    (tests only). The weights reach torch-fidelity as its ``feature_extractor_weights_path``, so it never
    downloads them."""
    buf = io.BytesIO()
    torch.save(state_dict or {}, buf)  # the library wants a file; ours holds only tensors we loaded safely
    buf.seek(0)
    return _fidelity_class()("inception-v3-compat", list(FEATURE_LAYERS), feature_extractor_weights_path=buf)


class InceptionFeatures:
    """FID's Inception-v3 pool3 features of images in [-1, 1], quantised to uint8 like saved PNGs."""

    name = "inception"
    dim = 2048
    score_name = "FID"

    def __init__(self, network: nn.Module, checksum: str, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.checksum = checksum

    @classmethod
    def from_weights(cls, weights: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"):
        """Load from a local weights file (see :func:`find_inception_weights`)."""
        path = find_inception_weights(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"could not read Inception weights from {path}: {e}") from e
        return cls(build_inception_network(state), sha256_file(path), device)

    @classmethod
    def random_init(cls, device: str | torch.device = "cpu") -> InceptionFeatures:
        """Same architecture with untrained weights: for testing shapes, never for scores."""
        return cls(build_inception_network(None), RANDOM_CHECKSUM, device)

    @torch.no_grad()
    def outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pool3 ``features`` and the 1008-way ``isc_logits`` (Inception Score) from one forward pass."""
        check_images(images)
        x = to_channels(images.to(self.device, torch.float32), 3)
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        features, logits = self.network(x)
        return {"features": features.float(), "isc_logits": logits.float()}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.outputs(images)["features"]
