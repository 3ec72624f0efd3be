"""Precomputed caption features (archbench/data/caption_features.py): the file layout round-trips, every caption a
dataset can show is listed for encoding, each example's y is its caption's row, and bad files are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_support import needs_fashion_mnist

from archbench.data.caption_features import (
    CaptionFeatureDataset,
    load_caption_features,
    write_caption_features,
)
from archbench.data.captions import decode_captions, first_captions, language, with_caption_features
from archbench.data.fashion_pairs import CAPTION_TOKENS, VOCAB, FashionPairs, tokenize

DIM = 6


def encode(captions: list[str]) -> np.ndarray:
    """A text encoder standing in for CLIP: a fixed random vector per word plus one per position, zero padding."""
    rng = np.random.default_rng(0)
    words, places = rng.normal(size=(len(VOCAB), DIM)), rng.normal(size=(CAPTION_TOKENS, DIM))
    out = np.zeros((len(captions), CAPTION_TOKENS, DIM), np.float32)
    for k, text in enumerate(captions):
        for t, word in enumerate(int(i) for i in tokenize(text) if int(i)):
            out[k, t] = words[word] + places[t]
    return out


def test_the_file_round_trips_and_looks_captions_up_by_text(tmp_path):
    captions = language("fashion_pairs").all_captions()
    features = encode(captions)
    path = write_caption_features(tmp_path / "f.npz", captions, features)
    table = load_caption_features(path)
    assert (table.tokens, table.dim) == (CAPTION_TOKENS, DIM) and len(table.index) == 600
    picked = [captions[5], captions[599], captions[5]]
    assert torch.equal(table.lookup(picked), torch.from_numpy(features[[5, 599, 5]]))
    tokens = torch.stack([tokenize(text) for text in picked])
    assert torch.equal(table.for_tokens("fashion_pairs", tokens), table.lookup(picked))
    with pytest.raises(ValueError, match="has no features for the caption 'a bag top left'"):
        table.lookup(["a bag top left"])


@needs_fashion_mnist
def test_every_caption_of_every_split_is_listed_and_each_example_carries_its_row(tmp_path):
    listed = set(language("fashion_pairs").all_captions())
    assert len(listed) == 600
    for split in ("train", "test", "heldout"):
        dataset = FashionPairs(split=split, length=400)
        assert set(decode_captions("fashion_pairs", first_captions(dataset, 400))) <= listed, split
    captions = sorted(listed)
    path = write_caption_features(tmp_path / "f.npz", captions, encode(captions))
    dataset = with_caption_features(FashionPairs(split="test", length=8), "fashion_pairs", str(path))
    assert isinstance(dataset, CaptionFeatureDataset) and len(dataset) == 8
    base = FashionPairs(split="test", length=8)
    for i in (0, 7):
        image, y = dataset[i]
        assert torch.equal(image, base[i][0]) and torch.equal(dataset.tokens(i), base.tokens(i))
        assert torch.equal(y, torch.from_numpy(encode([base.caption(i)])[0]))


@pytest.mark.parametrize(("arrays", "message"), [
    ({"captions": np.array(["a"])}, r"must hold arrays 'captions' \(K,\) and 'features' \(K, T, D\); it holds"),
    ({"captions": np.array(["a", "b"]), "features": np.zeros((3, 2, 2), np.float32)},
     r"'features' must be float \(K, T, D\) with K = 2 captions, got float32 \(3, 2, 2\)"),
    ({"captions": np.array(["a", "a"]), "features": np.zeros((2, 2, 2), np.float32)},
     r"1 caption\(s\) appear more than once"),
    ({"captions": np.array(["a"]), "features": np.full((1, 2, 2), np.nan, np.float32)}, "non-finite values"),
    ({"captions": np.array([1, 2]), "features": np.zeros((2, 2, 2), np.float32)}, "1-D array of strings"),
])
def test_bad_files_are_one_line(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load_caption_features(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_caption_features(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="is not a readable .npz"):
        load_caption_features(tmp_path / "text.npz")


def test_the_captions_command_lists_every_caption_to_encode(tmp_path, capsys):
    from archbench.commands.data import main as data_main

    assert data_main(["captions", f"out={tmp_path / 'captions.txt'}"]) == 0
    assert "wrote 600 captions" in capsys.readouterr().out
    lines = (tmp_path / "captions.txt").read_text().splitlines()
    assert len(set(lines)) == 600 and all(tokenize(line)[0] == VOCAB.index("a") for line in lines)
    assert data_main(["captions", "name=digits"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["archbench.data: error: dataset 'digits' has no captions; captioned datasets: fashion_pairs"]
