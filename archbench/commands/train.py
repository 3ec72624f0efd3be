"""``python -m archbench.train [recipe=NAME] [backbone=NAME] [diffusion=NAME] [key=value ...] [--cfg]``

With no arguments: the embedded default recipe, a small DiS on Fashion-MNIST (or scikit-learn digits when
the Debian package is absent) for a few CPU minutes, writing sample grids under ``runs/default-fashion_mnist-dis_t4``.
Under ``torchrun --nproc_per_node=N -m archbench.train ...`` it trains with DDP (NCCL on GPUs, gloo on CPU).

Exit codes: 0 done, 1 error (one line on stderr), 128+signal when SIGTERM/SIGINT stopped it after saving.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence

from archbench.console.errors import fail, interruptible, one_line
from archbench.console.logs import setup_logging

log = logging.getLogger("archbench.train")

USAGE = """\
usage: python -m archbench.train [recipe=NAME] [backbone=NAME] [diffusion=NAME] [KEY=VALUE ...] [--cfg]

  recipe=NAME      {recipes}
  backbone=NAME    any registry name (python -m archbench.zoo lists them), e.g. dis_s2, dit_b2, uvit_s2, unet_ddpm
  diffusion=NAME   {objectives}  (diffusion.KEY: that objective's settings, python -m archbench.train
                   diffusion=NAME --cfg shows them)
  KEY=VALUE        any key of the resolved config, Hydra override grammar: train.lr=2e-4 backbone.depth=6
                   run_dir=runs/x train.resume=auto|<path>|null data.root=/data
  --cfg            print the resolved config (YAML) and exit
"""


@interruptible("archbench.train")
def main(argv: Sequence[str] | None = None) -> int:
    """Parse, compose, train; every expected failure is reported as one line with exit code 1."""
    from archbench.diffusion import OBJECTIVES
    from archbench.training.config import compose_config, recipe_names, to_container, to_yaml
    from archbench.training.launch import EXPECTED_ERRORS, train_from_overrides
    from archbench.training.schema import key_rows, run_config
    from archbench.training.setup import check_config

    started = time.perf_counter()
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE.format(recipes=" | ".join(recipe_names()), objectives=" | ".join(OBJECTIVES)))
        print("keys (type, default):")
        for key, kind, default, doc in key_rows():
            print(f"  {key:24s} {kind} = {default}: {doc}")
        return 0
    show_cfg = "--cfg" in args
    overrides = [a for a in args if a != "--cfg"]
    flags = [a for a in overrides if a.startswith("-")]
    if flags:
        return fail("archbench.train", f"unknown option {flags[0]!r}; options are --cfg and -h, the rest is key=value")
    setup_logging(int(os.environ.get("RANK", "0")))
    try:
        if show_cfg:
            cfg = compose_config(overrides)
            check_config(run_config(to_container(cfg)), int(os.environ.get("WORLD_SIZE", "1")))  # as the run does
            print(to_yaml(cfg), end="")
            return 0
        result = train_from_overrides(overrides)
    except EXPECTED_ERRORS as exc:
        return fail("archbench.train", one_line(exc))
    if result.signum is not None:
        return 128 + int(result.signum)
    log.info("done: %s (step %d, checkpoint %s)", result.run_dir, result.step, result.checkpoint)
    _report_final_grid(result, time.perf_counter() - started)
    return 0


def _report_final_grid(result, seconds: float) -> None:
    """Wall-clock, and how many of the last grid's samples the committed dataset CNN puts in their class."""
    wall = f"wall-clock {seconds / 60:.1f} min"
    if result.grid is None or result.grid[1] is None or int(os.environ.get("RANK", "0")) != 0:
        log.info(wall)
        return
    from archbench.evaluation.cond_accuracy import classifier_accuracy

    samples, labels, cfg_scale = result.grid
    if labels.ndim == 2:  # captions
        _report_composition(samples, labels, cfg_scale, result.dataset, wall)
        return
    accuracy = classifier_accuracy(samples, labels, result.dataset)
    if accuracy is None:
        log.info("%s (no committed %s classifier to score the grid)", wall, result.dataset)
        return
    log.info(
        "final grid (cfg %g): %.0f%% of %d samples classified as their class by the committed %s CNN "
        "(chance %.0f%%); %s", cfg_scale, 100 * accuracy, len(labels), result.dataset,
        100 / (int(labels.max()) + 1), wall,
    )


def _report_composition(samples, captions, cfg_scale: float, dataset: str, wall: str) -> None:
    """The compositional score of a captioned final grid (fashion_pairs: each named garment in its place)."""
    if dataset != "fashion_pairs":
        log.info(wall)
        return
    from archbench.data.fashion_pairs import parse_tokens
    from archbench.evaluation.composition import composition_score
    from archbench.evaluation.cond_accuracy import committed_classifier
    from archbench.evaluation.dataset_cnn import DatasetCNNFeatures

    path = committed_classifier("fashion_mnist")
    if path is None:
        log.info("%s (no committed fashion_mnist classifier to score the grid)", wall)
        return
    score = composition_score(samples, [parse_tokens(c) for c in captions], DatasetCNNFeatures.from_file(path))
    log.info("final grid (cfg %g): %.0f%% of %d canvases hold every named garment in its place and nothing "
             "elsewhere (named places right %.0f%%, empty places empty %.0f%%); %s", cfg_scale, 100 * score.score,
             score.count, 100 * score.placed, 100 * score.empty, wall)
