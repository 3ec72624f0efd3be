"""Precomputed caption features: condition tokens computed elsewhere (CLIP, T5, any text encoder), read from a
file instead of a text encoder trained with the backbone.

The file is an ``.npz`` with ``captions`` (K,) the caption texts, exactly as the dataset writes them, and
``features`` (K, T, D) float: caption k's T token features; all-zero rows are padding (a caption shorter than T
tokens is zero-padded) and a caption of only zero rows is the empty caption.  ``python -m archbench.data
captions name=fashion_pairs out=captions.txt`` lists every caption a dataset can show, the texts to encode.

A run with ``data.caption_features=FILE`` trains on :class:`CaptionFeatureDataset`: each example's ``y`` is its
caption's features, and the backbone is built with ``caption_dim=D`` (``caption_vocab`` 0).  The caption tokens
stay available (``tokens(i)``) for what reads the words: the grids' labels and the compositional score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from archbench.console.files import write_atomic

CAPTIONS_KEY, FEATURES_KEY = "captions", "features"


@dataclass(frozen=True)
class CaptionFeatures:
    """The table of a features file: caption text -> (T, D) features."""

    path: Path
    index: dict[str, int]
    features: Tensor  # (K, T, D) float32

    @property
    def tokens(self) -> int:
        return int(self.features.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    def lookup(self, texts: list[str]) -> Tensor:
        """(len(texts), T, D) features of these captions; a caption the file lacks is a ValueError naming it."""
        missing = [text for text in texts if text not in self.index]
        if missing:
            raise ValueError(f"{self.path} has no features for the caption {missing[0]!r} ({len(missing)} of "
                             f"{len(texts)} missing; `python -m archbench.data captions` lists the captions to encode)")
        return self.features[[self.index[text] for text in texts]]

    def for_tokens(self, name: str, tokens: Tensor) -> Tensor:
        """(N, T, D) features of (N, T) caption tokens in dataset ``name``'s words."""
        from archbench.data.captions import decode_captions

        return self.lookup(decode_captions(name, tokens))


def load_caption_features(path: str | Path) -> CaptionFeatures:
    """Read and check a features file; every problem is a one-line ValueError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"caption features file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, EOFError, ValueError, AttributeError) as exc:  # what np.load raises for a file not an .npz
        raise ValueError(f"{path} is not a readable .npz ({type(exc).__name__})") from None
    if CAPTIONS_KEY not in arrays or FEATURES_KEY not in arrays:
        raise ValueError(f"{path} must hold arrays {CAPTIONS_KEY!r} (K,) and {FEATURES_KEY!r} (K, T, D); it holds "
                         f"{sorted(arrays)}")
    captions, features = arrays[CAPTIONS_KEY], arrays[FEATURES_KEY]
    if captions.ndim != 1 or captions.dtype.kind != "U":
        raise ValueError(f"{path}: {CAPTIONS_KEY!r} must be a 1-D array of strings, got {captions.dtype} "
                         f"{captions.shape}")
    if features.ndim != 3 or features.shape[0] != captions.shape[0] or features.dtype.kind != "f":
        raise ValueError(f"{path}: {FEATURES_KEY!r} must be float (K, T, D) with K = {captions.shape[0]} captions, "
                         f"got {features.dtype} {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{path}: {FEATURES_KEY!r} holds non-finite values")
    index = {str(text): k for k, text in enumerate(captions)}
    if len(index) != len(captions):
        raise ValueError(f"{path}: {len(captions) - len(index)} caption(s) appear more than once")
    return CaptionFeatures(path, index, torch.from_numpy(features.astype(np.float32)))


def write_caption_features(path: str | Path, captions: list[str], features: np.ndarray) -> Path:
    """Write a features file (atomically) in the layout :func:`load_caption_features` reads."""
    captions_array = np.asarray(captions, dtype=np.str_)
    return write_atomic(path, lambda handle: np.savez(handle, **{CAPTIONS_KEY: captions_array,
                                                                 FEATURES_KEY: np.asarray(features, np.float32)}))


class CaptionFeatureDataset(Dataset):
    """A captioned dataset whose ``y`` is its caption's precomputed features; ``tokens(i)`` keeps the words."""

    def __init__(self, base: Any, features: CaptionFeatures, name: str) -> None:
        self.base, self.caption_features, self.name = base, features, name

    def __len__(self) -> int:
        return len(self.base)

    def tokens(self, index: int) -> Tensor:
        return self.base.tokens(index) if hasattr(self.base, "tokens") else torch.as_tensor(self.base[index][1])

    def conditions(self, tokens: Tensor) -> Tensor:
        """The features the model takes for these (N, T) caption tokens."""
        return self.caption_features.for_tokens(self.name, tokens)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, tokens = self.base[index]
        return image, self.conditions(torch.as_tensor(tokens)[None])[0]
