"""fashion_pairs: deterministic captioned canvases whose held-out (garment, place) pairings never appear in training,
and the compositional score, which on the dataset's own canvases is about the CNN's accuracy squared and falls to
chance with shuffled captions."""

from __future__ import annotations

import random

import pytest
import torch
from train_support import needs_fashion_mnist

from archbench.data import build_dataset
from archbench.data import fashion_mnist as fashion
from archbench.data.fashion_pairs import (
    CANVAS,
    CAPTION_TOKENS,
    CELL,
    GARMENTS,
    HELD_OUT,
    QUADRANTS,
    VOCAB,
    FashionPairs,
    quadrant_box,
    tokenize,
)

pytestmark = needs_fashion_mnist


@pytest.fixture(scope="module")
def splits() -> dict[str, FashionPairs]:
    return {split: FashionPairs(split=split) for split in ("train", "test", "heldout")}


def test_every_canvas_is_a_function_of_seed_split_and_index(splits):
    again = FashionPairs(split="test")
    other_seed = FashionPairs(split="test", seed=1)
    for index in (0, 1, 777, 9999):
        assert again.layout(index) == splits["test"].layout(index)
        assert torch.equal(again[index][0], splits["test"][index][0])
    assert any(other_seed.layout(i) != splits["test"].layout(i) for i in range(20))
    assert len(splits["train"]) == 60_000 and len(splits["test"]) == len(splits["heldout"]) == 10_000


def test_held_out_pairings_never_appear_in_training_and_always_in_heldout(splits):
    assert len(HELD_OUT) == len(GARMENTS) and {q for _, q in HELD_OUT} == set(range(len(QUADRANTS)))
    for split, rule in (("train", lambda n: n == 0), ("test", lambda n: n == 0), ("heldout", lambda n: n >= 1)):
        for index in range(0, len(splits[split]), 7):
            held = sum((p.garment, p.quadrant) in HELD_OUT for p in splits[split].layout(index))
            assert rule(held), (split, index, splits[split].caption(index))
    seen = {(p.garment, p.quadrant) for i in range(3000) for p in splits["train"].layout(i)}
    assert len(seen) == len(GARMENTS) * len(QUADRANTS) - len(HELD_OUT)  # every other pairing is trained on


def test_a_canvas_holds_its_garments_where_its_caption_says_and_black_elsewhere(splits):
    dataset = splits["test"]
    image, tokens = dataset[3]
    layout = dataset.layout(3)
    assert image.shape == (1, CANVAS, CANVAS) and torch.equal(tokens, dataset.tokens(3))
    named = {p.quadrant: p for p in layout}
    for quadrant in range(len(QUADRANTS)):
        row, col = quadrant_box(quadrant)
        cell = image[:, row : row + CELL, col : col + CELL]
        if quadrant in named:
            assert torch.equal(cell, dataset.images[named[quadrant].source])
            assert fashion.build_fashion_mnist(split="test").labels[named[quadrant].source] == named[quadrant].garment
        else:
            assert torch.all(cell == -1)
    words = dataset.caption(3).split()
    assert words[1] == GARMENTS[layout[0].garment] and " ".join(words[2:4]) == QUADRANTS[layout[0].quadrant]


def test_captions_tokenize_to_fixed_length_word_indices():
    tokens = tokenize("a sneaker top left and a bag bottom right")
    assert tokens.shape == (CAPTION_TOKENS,) and [VOCAB[i] for i in tokens[:3]] == ["a", "sneaker", "top"]
    assert tokenize("a bag top left").tolist()[4:] == [0] * 5
    with pytest.raises(ValueError, match="unknown: \\['hat'\\]"):
        tokenize("a hat top left")


def test_the_catalogue_builds_it_at_32_and_refuses_other_sizes():
    assert build_dataset("fashion_pairs", split="heldout")[0][0].shape == (1, 32, 32)
    with pytest.raises(ValueError, match="fashion_pairs canvases are 32x32"):
        build_dataset("fashion_pairs", image_size=16)


def test_the_composition_score_is_about_accuracy_squared_and_chance_when_shuffled(splits):
    from archbench.evaluation.composition import composition_score
    from archbench.evaluation.cond_accuracy import committed_classifier
    from archbench.evaluation.dataset_cnn import DatasetCNNFeatures

    cnn = DatasetCNNFeatures.from_file(committed_classifier("fashion_mnist"))
    dataset = splits["test"]
    images = torch.stack([dataset[i][0] for i in range(1000)])
    layouts = [dataset.layout(i) for i in range(1000)]
    single = fashion.build_fashion_mnist(split="test", image_size=16)
    cells = torch.stack([single[i][0] for i in range(2000)])
    accuracy = float((cnn.outputs(cells)["class_logits"].argmax(1) == single.labels[:2000]).float().mean())
    real = composition_score(images, layouts, cnn)
    assert real.empty == 1.0 and abs(real.score - accuracy**2) < 0.06
    shuffled = layouts[:]
    random.Random(0).shuffle(shuffled)
    assert composition_score(images, shuffled, cnn).score < 0.03
    blank = composition_score(torch.full_like(images, -1.0), layouts, cnn)
    assert blank.score == 0.0 and blank.placed == 0.0 and blank.empty == 1.0


def test_scoring_captioned_samples_adds_the_composition_metric(splits):
    """score_samples with captions as labels: the composition column, and no class accuracy (the labels are not
    classes)."""
    from archbench.evaluation import reference_stats, score_samples
    from archbench.evaluation.cond_accuracy import committed_classifier
    from archbench.evaluation.dataset_cnn import DatasetCNNFeatures

    cnn = DatasetCNNFeatures.from_file(committed_classifier("fashion_mnist"))
    dataset = splits["heldout"]
    images = torch.stack([dataset[i][0] for i in range(300)])
    captions = torch.stack([dataset[i][1] for i in range(300)])
    reference = reference_stats("fashion_pairs", "test", 32, cnn, 500, batch_size=250)
    scores = score_samples(images, cnn, reference, labels=captions, batch_size=128)
    assert 0.5 < scores["composition"] < 0.75 and scores["cond_accuracy"] is None
