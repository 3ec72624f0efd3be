"""The table of registered backbones (README and ``python -m archbench.zoo``), built from the registry."""

from __future__ import annotations

from pathlib import Path

import torch

from archbench.console import ArgumentParser, fail
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


def update_readme(path: Path) -> None:
    """Rewrite the table between the zoo markers of a README in place."""
    text = path.read_text()
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(f"{head}{README_BEGIN}\n{zoo_markdown()}\n{README_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description="Print the table of registered backbones (Markdown).")
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'dis_*'")
    parser.add_argument("--readme", type=Path, nargs="?", const=Path("README.md"), help="update this README's table")
    args = parser.parse_args(argv)
    if args.readme:
        if not args.readme.is_file() or README_BEGIN not in args.readme.read_text():
            return fail(
                "archbench.zoo", f"{args.readme} is not a README with the zoo markers {README_BEGIN} ... {README_END}; "
                "run from the repository root or give --readme PATH"
            )
        update_readme(args.readme)
    else:
        print(zoo_markdown(args.pattern))
    return 0


if __name__ == "__main__":
    main()
