"""``fashion_pairs``: 32x32 canvases holding two Fashion-MNIST garments in two of four quadrants, with a caption
("a sneaker top left and a bag bottom right"): a captioned dataset that needs no download.

Whether a backbone binds words to places is a question of composition, so the splits hold some (garment, place)
pairings out of training: every garment has one quadrant it is never shown in during training (class ``c`` at
quadrant ``c mod 4``, :data:`HELD_OUT`).  ``train`` canvases use Fashion-MNIST's training images and never show
a held-out pairing; ``test`` uses its test images in the seen pairings; ``heldout`` uses its test images and
every canvas shows at least one held-out pairing, so a score on it measures generalisation to compositions the
model never saw.

Every canvas is a function of (seed, split, index): the layout is drawn from a generator seeded with those three,
the garments are taken from Fashion-MNIST's images of their class, shrunk to 16x16 as the CPU recipes' 16x16
Fashion-MNIST is (antialiased bilinear), on a black (-1) background.  ``__getitem__`` gives ``(image, tokens)``:
the caption as fixed-length word indices into :data:`VOCAB` (0 = padding), what a captioned backbone takes as
``y``; :meth:`FashionPairs.caption` gives it as text, :meth:`FashionPairs.layout` as placements.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from archbench.data.arrays import to_signed_unit
from archbench.data.fashion_mnist import build_fashion_mnist

CANVAS = 32
CELL = 16
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
# One word per Fashion-MNIST class, in label order.
GARMENTS = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
VOCAB = ("<pad>", "a", "and", "top", "bottom", "left", "right", *GARMENTS)
CAPTION_TOKENS = 9  # "a <garment> <row> <column> and a <garment> <row> <column>"
HELD_OUT = frozenset((garment, garment % len(QUADRANTS)) for garment in range(len(GARMENTS)))
SPLITS = {"train": ("train", 60_000), "test": ("test", 10_000), "heldout": ("test", 10_000)}
_SPLIT_CODES = {"train": 0, "test": 1, "heldout": 2}


@dataclass(frozen=True)
class Placement:
    """One garment on the canvas: its Fashion-MNIST class, its quadrant (index into :data:`QUADRANTS`) and the
    index of the source image in the split it is drawn from."""

    garment: int
    quadrant: int
    source: int


def quadrant_box(quadrant: int) -> tuple[int, int]:
    """(row, column) of a quadrant's top-left pixel."""
    return (quadrant // 2) * CELL, (quadrant % 2) * CELL


def caption_of(layout: tuple[Placement, ...]) -> str:
    return " and ".join(f"a {GARMENTS[p.garment]} {QUADRANTS[p.quadrant]}" for p in layout)


def tokenize(caption: str) -> Tensor:
    """Word indices into :data:`VOCAB`, padded to :data:`CAPTION_TOKENS`; an unknown word is a ValueError."""
    words = caption.split()
    unknown = [w for w in words if w not in VOCAB]
    if unknown or len(words) > CAPTION_TOKENS:
        raise ValueError(f"caption {caption!r}: words must come from fashion_pairs' vocabulary and number at most "
                         f"{CAPTION_TOKENS} (unknown: {unknown})")
    ids = [VOCAB.index(w) for w in words]
    return torch.tensor(ids + [0] * (CAPTION_TOKENS - len(ids)), dtype=torch.long)


def all_captions() -> list[str]:
    """Every caption a canvas can carry (two garments in two quadrants, in reading order): 6 x 100 = 600."""
    return [f"a {GARMENTS[g1]} {QUADRANTS[q1]} and a {GARMENTS[g2]} {QUADRANTS[q2]}"
            for q1 in range(len(QUADRANTS)) for q2 in range(q1 + 1, len(QUADRANTS))
            for g1 in range(len(GARMENTS)) for g2 in range(len(GARMENTS))]


def decode(tokens: Tensor) -> str:
    """The caption text of word indices (padding dropped): the inverse of :func:`tokenize`."""
    return " ".join(VOCAB[int(i)] for i in tokens if int(i) != 0)


def parse_tokens(tokens: Tensor) -> tuple[Placement, ...]:
    """The placements a tokenised caption names (``source`` -1: a caption does not say which image); the inverse
    of :func:`caption_of` up to the source images.  A caption outside the grammar is a ValueError."""
    words = decode(tokens).split()
    placements = []
    for start in range(0, len(words), 5):  # "a <garment> <row> <column>" then "and"
        phrase = words[start : start + 4]
        place = " ".join(phrase[2:4])
        if len(phrase) != 4 or phrase[0] != "a" or phrase[1] not in GARMENTS or place not in QUADRANTS:
            raise ValueError(f"not a fashion_pairs caption: {' '.join(words)!r}")
        placements.append(Placement(GARMENTS.index(phrase[1]), QUADRANTS.index(place), -1))
    return tuple(placements)


class FashionPairs(Dataset):
    """The captioned canvases of one split (see the module docstring)."""

    def __init__(self, root: str | Path | None = None, split: str = "train", seed: int = 0,
                 length: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"fashion_pairs: unknown split {split!r}; valid: {', '.join(SPLITS)}")
        source_split, default_length = SPLITS[split]
        source = build_fashion_mnist(root=root, split=source_split)
        self.images = shrink(to_signed_unit(source.pixels, source.max_value))  # (N, 1, 16, 16) in [-1, 1]
        labels = source.labels
        self.by_class = [torch.nonzero(labels == c).flatten().numpy() for c in range(len(GARMENTS))]
        self.split, self.seed = split, seed
        self.length = default_length if length is None else length

    def __len__(self) -> int:
        return self.length

    def _acceptable(self, pairs: list[tuple[int, int]]) -> bool:
        held = sum(pair in HELD_OUT for pair in pairs)
        return held >= 1 if self.split == "heldout" else held == 0

    def layout(self, index: int) -> tuple[Placement, ...]:
        """The two placements of canvas ``index``, in reading order of their quadrants."""
        if not 0 <= index < self.length:
            raise IndexError(f"fashion_pairs[{self.split}] has {self.length} canvases, index {index}")
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
        while True:
            quadrants = sorted(rng.choice(len(QUADRANTS), size=2, replace=False).tolist())
            garments = rng.integers(0, len(GARMENTS), size=2).tolist()
            pairs = list(zip(garments, quadrants, strict=True))
            if self._acceptable(pairs):
                break
        return tuple(Placement(g, q, int(rng.choice(self.by_class[g]))) for g, q in pairs)

    def caption(self, index: int) -> str:
        return caption_of(self.layout(index))

    def tokens(self, index: int) -> Tensor:
        return tokenize(self.caption(index))

    def render(self, layout: tuple[Placement, ...]) -> Tensor:
        canvas = torch.full((1, CANVAS, CANVAS), -1.0)
        for placement in layout:
            row, col = quadrant_box(placement.quadrant)
            canvas[:, row : row + CELL, col : col + CELL] = self.images[placement.source]
        return canvas

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        layout = self.layout(index)
        return self.render(layout), tokenize(caption_of(layout))


def quadrant_crops(images: Tensor) -> Tensor:
    """(B, C, 32, 32) -> (B, 4, C, 16, 16): each canvas's quadrants in :data:`QUADRANTS` order."""
    if images.shape[-2:] != (CANVAS, CANVAS):
        raise ValueError(f"fashion_pairs canvases are {CANVAS}x{CANVAS}, got {tuple(images.shape[-2:])}")
    crops = [images[..., r : r + CELL, c : c + CELL] for r, c in map(quadrant_box, range(len(QUADRANTS)))]
    return torch.stack(crops, dim=1)


def shrink(images: Tensor) -> Tensor:
    """(N, C, 28, 28) in [-1, 1] to 16x16 cells, as ``fit_size`` resizes one image (antialiased bilinear)."""
    cells = F.interpolate(images, size=(CELL, CELL), mode="bilinear", align_corners=False, antialias=True)
    return cells.clamp_(-1.0, 1.0)
