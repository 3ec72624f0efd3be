"""Captions of a captioned dataset as the sampling stages need them: the first n of a split as condition
tokens, caption text to tokens and back, and what a model takes for them (the tokens, or their precomputed
features: :mod:`archbench.data.caption_features`).

Training grids, ``eval`` and ``sample`` all draw with "the captions of a split's first n examples"; this is the
one place that reads them (through the dataset's ``tokens(i)``, which skips rendering the image, when it has it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class CaptionLanguage:
    """A captioned dataset's words: text -> tokens, tokens -> text, and every caption it can show."""

    tokenize: Callable[[str], Tensor]
    decode: Callable[[Tensor], str]
    all_captions: Callable[[], list[str]]


def _fashion_pairs() -> CaptionLanguage:
    from archbench.data import fashion_pairs

    return CaptionLanguage(fashion_pairs.tokenize, fashion_pairs.decode, fashion_pairs.all_captions)


LANGUAGES: dict[str, Callable[[], CaptionLanguage]] = {"fashion_pairs": _fashion_pairs}


def first_captions(dataset: Any, n: int) -> Tensor:
    """(n, T) condition tokens of ``dataset``'s first ``n`` examples; a ValueError when it has fewer."""
    if n > len(dataset):
        raise ValueError(f"{n} captions asked for but the split has {len(dataset)}")
    read = dataset.tokens if hasattr(dataset, "tokens") else (lambda i: dataset[i][1])
    return torch.stack([torch.as_tensor(read(i)) for i in range(n)])


def language(name: str) -> CaptionLanguage:
    if name not in LANGUAGES:
        raise ValueError(f"dataset {name!r} has no captions; captioned datasets: {', '.join(LANGUAGES)}")
    return LANGUAGES[name]()


def encode_captions(name: str, texts: Sequence[str]) -> Tensor:
    """(len(texts), T) tokens of caption texts in ``name``'s vocabulary; a ValueError names a bad caption."""
    return torch.stack([language(name).tokenize(text.strip()) for text in texts])


def decode_captions(name: str, tokens: Tensor) -> list[str]:
    """The texts of (N, T) caption tokens (padding dropped)."""
    decode = language(name).decode
    return [decode(row) for row in tokens]


def with_caption_features(dataset: Any, name: str, path: str | None) -> Any:
    """``dataset`` as a run with ``data.caption_features=path`` trains on it (unchanged when ``path`` is None)."""
    if path is None:
        return dataset
    from archbench.data.caption_features import CaptionFeatureDataset, load_caption_features

    language(name)  # a dataset without captions has nothing to look up
    return CaptionFeatureDataset(dataset, load_caption_features(path), name)


def model_conditions(dataset: Any, tokens: Tensor) -> Tensor:
    """What a model trained on ``dataset`` takes for these (N, T) caption tokens: the tokens themselves, or their
    precomputed features when the dataset carries them."""
    return dataset.conditions(tokens) if hasattr(dataset, "conditions") else tokens


def run_conditions(data: dict[str, Any]) -> Callable[[Tensor], Tensor] | None:
    """For a run whose config's data section is ``data``: caption tokens -> its precomputed features, or None when
    the model takes the tokens themselves."""
    path = data.get("caption_features")
    if not path:
        return None
    from archbench.data.caption_features import load_caption_features

    table, name = load_caption_features(path), str(data["name"])
    return lambda tokens: table.for_tokens(name, tokens)


def split_captions(data: dict[str, Any], split: str, n: int) -> tuple[Tensor, Tensor]:
    """For a run whose config's data section is ``data``: the caption tokens of ``split``'s first ``n`` examples
    (what scores and labels read) and what the model takes for them (the tokens, or their features)."""
    from archbench.data.catalog import build_dataset

    name = str(data["name"])
    dataset = with_caption_features(build_dataset(name, root=data.get("root"), split=split), name,
                                    data.get("caption_features"))
    tokens = first_captions(dataset, n)
    return tokens, model_conditions(dataset, tokens)
