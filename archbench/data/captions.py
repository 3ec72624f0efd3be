"""Captions of a captioned dataset as the sampling stages need them: the first n of a split as condition
tokens, and caption text to tokens and back.

Training grids, ``eval`` and ``sample`` all draw with "the captions of a split's first n examples"; this is the
one place that reads them (through the dataset's ``tokens(i)``, which skips rendering the image, when it has it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


def _fashion_pairs() -> tuple[Callable[[str], Tensor], Callable[[Tensor], str]]:
    from archbench.data.fashion_pairs import decode, tokenize

    return tokenize, decode


TOKENIZERS: dict[str, Callable[[], tuple[Callable[[str], Tensor], Callable[[Tensor], str]]]] = {
    "fashion_pairs": _fashion_pairs,
}


def first_captions(dataset: Any, n: int) -> Tensor:
    """(n, T) condition tokens of ``dataset``'s first ``n`` examples; a ValueError when it has fewer."""
    if n > len(dataset):
        raise ValueError(f"{n} captions asked for but the split has {len(dataset)}")
    read = dataset.tokens if hasattr(dataset, "tokens") else (lambda i: dataset[i][1])
    return torch.stack([torch.as_tensor(read(i)) for i in range(n)])


def _tokenizer(name: str) -> tuple[Callable[[str], Tensor], Callable[[Tensor], str]]:
    if name not in TOKENIZERS:
        raise ValueError(f"dataset {name!r} has no captions; captioned datasets: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[name]()


def encode_captions(name: str, texts: Sequence[str]) -> Tensor:
    """(len(texts), T) tokens of caption texts in ``name``'s vocabulary; a ValueError names a bad caption."""
    tokenize, _ = _tokenizer(name)
    return torch.stack([tokenize(text.strip()) for text in texts])


def decode_captions(name: str, tokens: Tensor) -> list[str]:
    """The texts of (N, T) caption tokens (padding dropped)."""
    _, decode = _tokenizer(name)
    return [decode(row) for row in tokens]
