"""``python -m archbench.export run_dir=DIR out=FOLDER [checkpoint=PATH] [push_to_hub=OWNER/NAME]``

Writes the EMA backbone of a training run (its newest checkpoint, or ``checkpoint=``) as a pretrained folder:
``model.safetensors`` + ``config.json`` (registry name, build config, and the run's diffusion, data and sample
settings). ``archbench.from_pretrained(FOLDER)`` rebuilds the backbone; ``python -m archbench.sample`` and
``python -m archbench.eval`` accept the folder as ``run_dir=``. ``push_to_hub=`` also uploads it (network and a
Hugging Face token needed).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from archbench.console import command_args, fail, interruptible, one_line

PROGRAM = "archbench.export"
KEYS = ("run_dir", "checkpoint", "out", "push_to_hub")


@interruptible("archbench.export")
def main(argv: Sequence[str] | None = None) -> int:
    from archbench.training.checkpoint import CheckpointError
    from archbench.training.config import ConfigError
    from archbench.training.runs import export_pretrained
    from backbones.hub import PretrainedError, push_to_hub

    args_in = command_args(argv, __doc__)
    if args_in is None:
        return 0
    args: dict[str, str | None] = dict.fromkeys(KEYS)
    for text in args_in:
        key, sep, value = text.partition("=")
        if not sep or key not in KEYS:
            return fail(PROGRAM, f"cannot use {text!r}; arguments are key=value with keys {', '.join(KEYS)}")
        args[key] = value
    if not args["out"] or not (args["run_dir"] or args["checkpoint"]):
        return fail(PROGRAM, "give run_dir=<training run> (or checkpoint=<file>) and out=<folder to write>")
    try:
        exported = export_pretrained(args["run_dir"], args["out"], args["checkpoint"])
        print(f"wrote {exported['folder']} ({exported['config']['backbone']['name']}, step {exported['step']})")
        if args["push_to_hub"]:
            print(f"pushed: {push_to_hub(exported['net'], args['push_to_hub'], extra=exported['extra'])}")
    except (CheckpointError, ConfigError, PretrainedError, OSError) as exc:
        return fail(PROGRAM, one_line(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
