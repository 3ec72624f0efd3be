"""The picture of a sample grid: tiles upscaled to a readable size, class names above the columns, row names at
the left, a title on top.

Each image is enlarged by an integer nearest-neighbour factor (:func:`tile_scale`), so every pixel of it is a
``scale x scale`` block of exactly its value: nothing is smoothed or resampled. Text uses PIL's built-in font
(``ImageFont.load_default()``), so no font file is needed. Only the PNG picture is drawn here; sample arrays
(``.npz``) keep the images at full resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

MIN_TILE = 64  # px: the smallest side a tile is enlarged to (at least)
GAP = 2  # px between tiles and around the grid
TEXT_PAD = 3  # px around a line of text
BACKGROUND = 255  # white behind the tiles and the text
INK = 0  # black text
CAPTION_TILE = 128  # px: the width a captioned tile is enlarged to (at least)
MAX_ROW_NAME = 200  # px: row names wider than this are cut short


def tile_scale(height: int, width: int | None = None, target: int = MIN_TILE) -> int:
    """The integer factor that brings an image's smaller side to at least ``target`` px: 8 -> 8, 16 -> 4,
    28 -> 3, 32 -> 2, 64 and up -> 1."""
    side = min(height, width or height)
    return max(1, math.ceil(target / max(1, side)))


def column_classes(labels: torch.Tensor | Sequence[int] | None, nrow: int, count: int) -> list[int] | None:
    """The class of each column of a ``count``-image grid with ``nrow`` columns (filled row by row), or None when
    there are no labels, a label is negative (unconditional) or some column holds more than one class."""
    if labels is None or count < 1:
        return None
    values = [int(v) for v in (labels.tolist() if isinstance(labels, torch.Tensor) else labels)]
    if len(values) != count:
        raise ValueError(f"got {len(values)} labels for {count} samples")
    if min(values) < 0:
        return None
    out = []
    for column in range(min(nrow, count)):
        held = set(values[column::nrow])
        if len(held) != 1:
            return None
        out.append(held.pop())
    return out


def column_names(classes: Sequence[int] | None, class_names: Sequence[str] | None) -> list[str] | None:
    """A name per column: ``class_names[c]`` where known, else ``class c``."""
    if classes is None:
        return None
    names = list(class_names or ())
    return [names[c] if 0 <= c < len(names) else f"class {c}" for c in classes]


def tile_pixels(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] (C 1 or 3) -> uint8 [N, H, W, 3], the pixels ``torchvision``'s ``save_image`` gives."""
    pixels = images.detach().float().cpu().clamp(-1, 1).add(1).div(2).mul(255).add_(0.5).clamp_(0, 255)
    pixels = pixels.to(torch.uint8)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default()


def _width(font: Any, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(math.ceil(right - min(left, 0)))


def _line_height(font: Any) -> int:
    _, top, _, bottom = font.getbbox("Ag/|y")
    return int(math.ceil(bottom - min(top, 0)))


def _cut(font: Any, text: str, width: int) -> str:
    """``text`` cut short with ``..`` to fit ``width`` px (at least its first character)."""
    if _width(font, text) <= width:
        return text
    for end in range(len(text) - 1, 0, -1):
        if _width(font, text[:end] + "..") <= width:
            return text[:end] + ".."
    return text[:1]


def fit_lines(font: Any, text: str, width: int, max_lines: int = 2) -> list[str]:
    """``text`` in at most ``max_lines`` lines of at most ``width`` px: broken after spaces and slashes, the
    last line cut short when it still does not fit."""
    if _width(font, text) <= width:
        return [text]
    words, word = [], ""
    for char in text:
        word += char
        if char in " /":
            words.append(word)
            word = ""
    if word:
        words.append(word)
    lines: list[str] = []
    current = ""
    for part in words:
        if current and _width(font, (current + part).rstrip()) > width:
            lines.append(current.rstrip())
            current = part
        else:
            current += part
    lines.append(current.rstrip())
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], "".join(lines[max_lines - 1:])]
    return [_cut(font, line, width) for line in lines]


def render(
    images: torch.Tensor,
    nrow: int,
    *,
    columns: Sequence[str] | None = None,
    rows: Sequence[str] | None = None,
    title: str | None = None,
    scale: int | None = None,
    captions: Sequence[str] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The grid picture, uint8 [height, width, 3], and where its parts lie (``scale``, ``origin``: the top-left
    pixel of the first tile, ``step``: from one tile's corner to the next, in x and y).

    ``images`` [N, C, H, W] in [-1, 1] with C 1 or 3 fill ``nrow`` columns row by row. ``columns`` names each
    column in a header strip, ``rows`` each row in a strip at the left; ``title`` is one line above everything.
    ``captions`` (one per image) go under their images in up to three lines; the tiles are then at least
    :data:`CAPTION_TILE` px wide, so that a caption stays readable.
    """
    from PIL import Image, ImageDraw

    count, _, height, width = images.shape
    ncol = max(1, min(nrow, count))
    nrows = math.ceil(count / ncol)
    if captions is not None and len(captions) != count:
        raise ValueError(f"got {len(captions)} captions for {count} images")
    scale = scale or max(tile_scale(height, width), math.ceil(CAPTION_TILE / width) if captions else 1)
    tile_h, tile_w = height * scale, width * scale
    font = _font()
    line = _line_height(font)
    caption_lines = [fit_lines(font, str(text), tile_w, max_lines=3) for text in captions] if captions else None
    caption_h = max(len(lines) for lines in caption_lines) * line + TEXT_PAD if caption_lines else 0

    column_lines = [fit_lines(font, str(name), tile_w, max_lines=3) for name in columns] if columns else None
    if column_lines is not None and len(column_lines) != ncol:
        raise ValueError(f"got {len(column_lines)} column names for {ncol} columns")
    row_text = [_cut(font, str(name), MAX_ROW_NAME) for name in rows] if rows else None
    if row_text is not None and len(row_text) != nrows:
        raise ValueError(f"got {len(row_text)} row names for {nrows} rows")

    title_h = line + 2 * TEXT_PAD if title else 0
    header_h = max(len(lines) for lines in column_lines) * line + 2 * TEXT_PAD if column_lines else 0
    left_w = max(_width(font, name) for name in row_text) + 2 * TEXT_PAD if row_text else 0
    grid_w = ncol * tile_w + (ncol + 1) * GAP
    total_w = left_w + grid_w
    if title:
        title = _cut(font, title, max(total_w, 400) - 2 * TEXT_PAD)
        total_w = max(total_w, _width(font, title) + 2 * TEXT_PAD)
    total_h = title_h + header_h + nrows * (tile_h + caption_h) + (nrows + 1) * GAP

    canvas = np.full((total_h, total_w, 3), BACKGROUND, dtype=np.uint8)
    x0, y0 = left_w + GAP, title_h + header_h + GAP
    step_x, step_y = tile_w + GAP, tile_h + caption_h + GAP
    tiles = tile_pixels(images)
    for i in range(count):
        r, c = divmod(i, ncol)
        block = tiles[i].repeat(scale, axis=0).repeat(scale, axis=1)
        canvas[y0 + r * step_y: y0 + r * step_y + tile_h, x0 + c * step_x: x0 + c * step_x + tile_w] = block

    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    ink = (INK, INK, INK)
    if title:
        draw.text((TEXT_PAD, TEXT_PAD), title, fill=ink, font=font)
    if column_lines:
        block_h = max(len(lines) for lines in column_lines) * line
        for c, lines in enumerate(column_lines):
            top = title_h + TEXT_PAD + block_h - len(lines) * line  # names sit right above their column
            for k, text in enumerate(lines):
                x = x0 + c * step_x + (tile_w - _width(font, text)) // 2
                draw.text((x, top + k * line), text, fill=ink, font=font)
    for i, lines in enumerate(caption_lines or []):
        r, c = divmod(i, ncol)
        for k, text in enumerate(lines):
            x = x0 + c * step_x + (tile_w - _width(font, text)) // 2
            draw.text((x, y0 + r * step_y + tile_h + TEXT_PAD // 2 + k * line), text, fill=ink, font=font)
    if row_text:
        for r, text in enumerate(row_text):
            y = y0 + r * step_y + (tile_h - line) // 2
            draw.text((left_w - TEXT_PAD - _width(font, text), y), text, fill=ink, font=font)
    layout = {"scale": scale, "origin": (x0, y0), "step": (step_x, step_y), "tile": (tile_w, tile_h),
              "header": (title_h, title_h + header_h), "left": left_w}
    return np.asarray(picture), layout
