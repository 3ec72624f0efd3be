"""The table of registered backbones (README and ``python -m archbench.zoo``, see :mod:`archbench.commands.zoo`),
built from the registry."""

from __future__ import annotations

from pathlib import Path

import torch

from archbench.console.files import write_text_atomic
from backbones.registry import backbone_config, build, get_spec, list_backbones


def count_parameters(name: str, **overrides) -> int:
    """Parameters of ``build(name, **overrides)``, counted on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = build(name, **overrides)
    return sum(p.numel() for p in model.parameters())


def zoo_rows(pattern: str = "*") -> list[dict]:
    rows = []
    for name in list_backbones(pattern):
        config = backbone_config(name)
        rows.append(
            {
                "name": name,
                "family": config["family"],
                "description": get_spec(name).description,
                "input": f"{config['image_size']}x{config['image_size']}x{config['in_channels']}",
                "classes": config["num_classes"],
                "params": count_parameters(name),
            }
        )
    return rows


def zoo_markdown(pattern: str = "*") -> str:
    """A Markdown table: name, family, default input, classes, parameters (default configuration)."""
    lines = [
        "| name | family | what | default input | classes | params |",
        "|---|---|---|---|---:|---:|",
    ]
    for row in zoo_rows(pattern):
        lines.append(
            f"| `{row['name']}` | {row['family']} | {row['description']} | {row['input']} | "
            f"{row['classes']} | {row['params']:,} |"
        )
    return "\n".join(lines)


README_BEGIN, README_END = "<!-- zoo:begin -->", "<!-- zoo:end -->"


def has_markers(path: Path) -> bool:
    """Whether ``path`` is a file holding the zoo markers :func:`update_readme` writes between."""
    return path.is_file() and README_BEGIN in path.read_text() and README_END in path.read_text()


def update_readme(path: Path) -> None:
    """Rewrite the table between the zoo markers of a README in place."""
    text = path.read_text()
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    write_text_atomic(path, f"{head}{README_BEGIN}\n{zoo_markdown()}\n{README_END}{tail}")
