"""``python -m archbench.export run_dir=DIR out=FOLDER [checkpoint=PATH] [push_to_hub=OWNER/NAME]``.

Writes a run's EMA backbone as a pretrained folder (:func:`archbench.training.runs.export_pretrained`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from archbench.console.args import arg, help_text, parse_args, wants_help
from archbench.console.errors import UsageError, fail, interruptible
from archbench.console.logs import setup_logging

PROGRAM = "archbench.export"
ABOUT = """\
Writes the EMA backbone of a training run (its newest checkpoint, or checkpoint=) as a pretrained folder:
model.safetensors + config.json (registry name, build config, and the run's diffusion, data and sample
settings). archbench.from_pretrained(FOLDER) rebuilds the backbone; python -m archbench.sample and
python -m archbench.eval accept the folder as run_dir=. push_to_hub= also uploads it (network and a Hugging Face
token needed)."""


@dataclass(frozen=True, kw_only=True)
class ExportArgs:
    run_dir: str | None = arg(None, doc="the training run (its newest checkpoint)")
    checkpoint: str | None = arg(None, doc="a checkpoint file instead of run_dir's newest")
    out: str | None = arg(None, doc="the folder to write (required)")
    push_to_hub: str | None = arg(None, doc="also upload to this Hub repository (owner/name)")

    def __post_init__(self) -> None:
        if not self.out or not (self.run_dir or self.checkpoint):
            raise UsageError("give run_dir=<training run> (or checkpoint=<file>) and out=<folder to write>")


def usage() -> str:
    return help_text(ExportArgs, usage=f"python -m {PROGRAM} run_dir=DIR out=FOLDER [key=value ...]", about=ABOUT)


@interruptible(PROGRAM)
def main(argv: Sequence[str] | None = None) -> int:
    """Parse, export (and push), print what was written."""
    args = list(sys.argv[1:] if argv is None else argv)
    if wants_help(args):
        print(usage())
        return 0
    setup_logging()
    from archbench.training.checkpoint import CheckpointError
    from archbench.training.config import ConfigError
    from archbench.training.runs import export_pretrained
    from backbones.hub import PretrainedError, push_to_hub

    try:
        request = parse_args(ExportArgs, args)
        exported = export_pretrained(request.run_dir, request.out, request.checkpoint)
        print(f"wrote {exported.folder} ({exported.run.backbone}, step {exported.run.step})")
        if request.push_to_hub:
            print(f"pushed: {push_to_hub(exported.run.net, request.push_to_hub, extra=exported.extra)}")
    except (UsageError, ConfigError, CheckpointError, PretrainedError, OSError) as exc:
        return fail(PROGRAM, exc)
    return 0
