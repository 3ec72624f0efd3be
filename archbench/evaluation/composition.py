"""The compositional score of ``fashion_pairs`` samples: does each canvas hold the garments its caption names, in
the places it names, and nothing elsewhere?

Each 16x16 quadrant is read on its own by the committed Fashion-MNIST CNN (the network behind the CPU studies'
FD and conditional accuracy, which reads 16x16 garments at 80%): a named quadrant counts when the CNN puts it in
the named class, an unnamed one when it is empty (its mean brightness below :data:`EMPTY_BELOW`, far under any
real garment's).  A canvas counts when all four quadrants do.  On the dataset's own canvases the score is about
the CNN's single-garment accuracy squared; with the captions shuffled it falls to about the chance that two
random placements coincide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from archbench.data.fashion_pairs import QUADRANTS, Placement, parse_tokens, quadrant_crops

# Mean brightness (in [0, 1]) under which a quadrant is empty: of the 10,000 Fashion-MNIST test garments shrunk to
# 16x16 the darkest averages 0.031 (the median 0.27); a black quadrant is 0.
EMPTY_BELOW = 0.025


@dataclass(frozen=True)
class CompositionScore:
    """The share of canvases right in every quadrant, and its two parts."""

    score: float  # every quadrant right
    placed: float  # named quadrants classified as named
    empty: float  # unnamed quadrants empty
    count: int

    def as_record(self) -> dict[str, float]:
        return {"composition": self.score, "composition_placed": self.placed, "composition_empty": self.empty}


def expected_classes(layouts: Sequence[Sequence[Placement]]) -> Tensor:
    """(N, 4): the class named for each quadrant, -1 where the caption names nothing."""
    expected = torch.full((len(layouts), len(QUADRANTS)), -1, dtype=torch.long)
    for row, layout in enumerate(layouts):
        for placement in layout:
            expected[row, placement.quadrant] = placement.garment
    return expected


def quadrants_right(images: Tensor, expected: Tensor, classifier: object, batch_size: int = 512) -> Tensor:
    """(N, 4) booleans: each quadrant of ``images`` ((N, 1, 32, 32) in [-1, 1]) holds the class ``expected`` names
    (-1: nothing); ``classifier`` is a :class:`~archbench.evaluation.dataset_cnn.DatasetCNNFeatures` for
    Fashion-MNIST."""
    if len(images) != len(expected) or not len(images):
        raise ValueError(f"composition score: {len(images)} images for {len(expected)} captions")
    crops = quadrant_crops(images.clamp(-1, 1))  # (N, 4, 1, 16, 16)
    flat = crops.flatten(0, 1)
    predicted = torch.cat([classifier.outputs(flat[i : i + batch_size])["class_logits"].argmax(1).cpu()
                           for i in range(0, len(flat), batch_size)]).view(len(images), len(QUADRANTS))
    empty = ((crops.float() + 1) / 2).mean(dim=(2, 3, 4)).cpu() < EMPTY_BELOW
    expected = expected.cpu()
    return torch.where(expected >= 0, (predicted == expected) & ~empty, empty)


def caption_classes(captions: Tensor) -> Tensor:
    """(N, 4) expected classes from tokenised captions (N, T)."""
    return expected_classes([parse_tokens(caption) for caption in captions])


def composition_score(images: Tensor, layouts: Sequence[Sequence[Placement]], classifier: object,
                      batch_size: int = 512) -> CompositionScore:
    """Score ``images`` ((N, 1, 32, 32) in [-1, 1]) against the ``layouts`` their captions describe."""
    expected = expected_classes(layouts)
    right = quadrants_right(images, expected, classifier, batch_size)
    named = expected >= 0
    return CompositionScore(
        score=float(right.all(dim=1).float().mean()),
        placed=float(right[named].float().mean()),
        empty=float(right[~named].float().mean()),
        count=len(images),
    )
