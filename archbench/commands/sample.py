"""``python -m archbench.sample run_dir=DIR [key=value ...]``: draw images from a trained run.

The drawing is :mod:`archbench.training.sample_run`; this module parses, calls it and prints what it wrote.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from archbench.console.args import help_text, parse_args, wants_help
from archbench.console.errors import UsageError, fail, interruptible
from archbench.console.logs import setup_logging

PROGRAM = "archbench.sample"
ABOUT = """\
Loads the EMA weights of the newest checkpoint in run_dir (or checkpoint=), rebuilds the backbone and objective
from the config stored in it (run_dir may also be a pretrained folder written by save_pretrained or
python -m archbench.export), and writes:

* a PNG grid plus an .npz beside it (arr_0: uint8 images [N, H, W, C], arr_1: int64 labels, -1 when
  unconditional, or [N, T] caption word indices) when out ends with .png (the default) or format=png;
* a sample set for FID-50k when out ends with .npz or format=npz (default out
  <run_dir>/samples/samples_step<N>_n<num_samples>_seed<seed>.npz): ADM's and DiT's sample_ddp.py layout plus a
  meta JSON array. Under torchrun --nproc_per_node=K -m archbench.sample ... (gloo on CPU, NCCL on GPUs) the ranks
  split the chunks of chunk_size samples, each drawn as one batch from a generator seeded by (seed, chunk), so
  the file is identical for any K. Finished chunks are kept in <out>.parts/; a re-run after an interruption
  draws only the missing or damaged ones, then rank 0 merges them into out and removes the folder.

Labels cycle through labels=, class= or, by default, every class: sample i gets class i mod C. A captioned run
(data.name=fashion_pairs) takes caption='a sneaker top left and a bag bottom right' (several separated by ';',
cycled) or, by default, the captions of caption_split's first num_samples examples; a grid writes each caption
under its image, and arr_1 holds the caption word indices [N, T].

Every file records the SHA-256 of the EMA weights it was drawn from and its settings. A complete set of the same
weights and settings is kept (nothing to draw); an output, or a set's parts, that holds something else (other
weights, other settings, another kind of file) is refused unless overwrite=true, which says what it replaces."""


def usage() -> str:
    from archbench.training.sample_run import SampleRequest

    return help_text(SampleRequest, usage=f"python -m {PROGRAM} run_dir=DIR [key=value ...]", about=ABOUT)


@interruptible(PROGRAM)
def main(argv: Sequence[str] | None = None) -> int:
    """Parse, draw a grid or a sample set, print what was written."""
    args = list(sys.argv[1:] if argv is None else argv)
    if wants_help(args):
        print(usage())
        return 0
    setup_logging()
    from archbench.training.checkpoint import CheckpointError
    from archbench.training.config import ConfigError
    from archbench.training.sample_run import SampleRequest, draw_grid, draw_set

    try:
        request = parse_args(SampleRequest, args).resolved()
        if request.format == "png":
            png, npz = draw_grid(request)
            print(f"wrote {png} and {npz}")
            return 0
        result = draw_set(request)
    except (UsageError, ConfigError, CheckpointError, OSError) as exc:
        return fail(PROGRAM, exc)
    if result.rank == 0:
        print(f"wrote {result.path} ({request.num_samples} samples in {result.num_chunks} chunks of "
              f"{request.chunk_size}: {result.num_chunks - result.reused} drawn now, {result.reused} already drawn)")
    return 0
