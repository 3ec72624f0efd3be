"""``python -m archbench.zoo [PATTERN] [readme=PATH | --readme [PATH]]``: the table of registered backbones."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from archbench.console.args import arg, help_text, parse_args, wants_help
from archbench.console.errors import UsageError, fail

PROGRAM = "archbench.zoo"


@dataclass(frozen=True, kw_only=True)
class ZooArgs:
    pattern: str = arg("*", doc="fnmatch pattern of the names to list, e.g. 'dis_*' (also positional)")
    readme: str | None = arg(None, const="README.md",
                             doc="rewrite the table between the zoo markers of this README instead of printing it "
                                 "(a bare --readme: README.md)")


def usage() -> str:
    return help_text(ZooArgs, usage=f"python -m {PROGRAM} [PATTERN] [readme=PATH]",
                     about="Print the table of registered backbones (Markdown), or write it into the README.",
                     positional=("pattern",))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, then print the table or rewrite the README's copy of it."""
    from archbench.measure.zoo import README_BEGIN, README_END, has_markers, update_readme, zoo_markdown

    args = list(sys.argv[1:] if argv is None else argv)
    if wants_help(args):
        print(usage())
        return 0
    try:
        request = parse_args(ZooArgs, args, positional=("pattern",))
        if request.readme is None:
            print(zoo_markdown(request.pattern))
            return 0
        readme = Path(request.readme)
        if not has_markers(readme):
            raise UsageError(f"{readme} is not a README with the zoo markers {README_BEGIN} ... {README_END}; "
                             "run from the repository root or give readme=PATH")
        update_readme(readme)
    except (UsageError, OSError) as exc:
        return fail(PROGRAM, exc)
    return 0
