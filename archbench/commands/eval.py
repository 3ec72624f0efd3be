"""``python -m archbench.eval``: score a training run's samples or a sample file, or train the offline feature CNN.

  python -m archbench.eval run_dir=DIR [num_samples=10000] [features=auto] [steps=N] [key=value ...]

    Samples ``num_samples`` images from the EMA weights of the newest checkpoint in ``run_dir`` (or from a
    pretrained folder exported from a run; sampler, steps, cfg_scale and guide_channels default to the run's
    ``sample`` settings), extracts features, compares them with cached statistics of the run's real dataset
    (``ref_split`` at the run's resolution) and writes ``run_dir/eval.json``: the score (FID for ``inception``,
    ``FD-<network>`` otherwise), k-NN precision/recall (k=3), Inception Score and KID (``features=inception``),
    the conditional accuracy (a dataset CNN's classifier agreeing with the conditioning labels of a
    class-conditional model), and what was used. ``features=auto`` picks the dataset CNN for
    fashion_mnist/digits, else inception.

  python -m archbench.eval samples=SET.npz [ref_npz=REF.npz | dataset=NAME | run_dir=DIR] [num_samples=N] ...

    Scores an existing sample set (``arr_0`` uint8 [N, H, W, C], labels in ``arr_1``: written by
    ``python -m archbench.sample out=SET.npz``, under torchrun for FID-50k, or by ADM's / DiT's sample_ddp.py);
    ``num_samples`` defaults to all of it. The reference is ``ref_npz`` if given, else the real data of
    ``dataset=`` (or of ``run_dir``'s run) at the samples' resolution. Writes ``out``, else
    ``run_dir/eval.json``, else ``SET.eval.json``.

    ``ref_npz=PATH``: an ADM reference batch (``mu``, ``sigma``; its images ``arr_0``, when present, give the
    reference points of precision/recall and KID). Its statistics replace the dataset's; ``mu``/``sigma`` must fit
    the feature network (2048-d for inception).

  python -m archbench.eval train-features [dataset=fashion_mnist|digits] [out=PATH] [epochs=3] [key=value ...]

    Trains the dataset CNN deterministically, prints its test accuracy and saves weights + a JSON sidecar with
    their SHA-256 (default: $ARCHBENCH_CACHE or ~/.cache/archbench, under features/).

Inception weights are never downloaded: see archbench.evaluation.inception (weights=PATH,
$ARCHBENCH_INCEPTION_WEIGHTS, or torch hub's checkpoints folder). This module only parses and prints: the keys
are the fields of archbench.evaluation.evaluate.EvalRequest, and evaluate(EvalRequest(...)) is the same call
from Python (the study makes it for every checkpoint it scores).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from archbench.console.args import arg, help_text, parse_args, wants_help
from archbench.console.errors import UsageError, fail, interruptible, one_line
from archbench.console.logs import setup_logging
from archbench.evaluation.evaluate import EvalRequest, evaluate
from archbench.evaluation.metrics import result_line

PROGRAM = "archbench.eval"
TRAIN_FEATURES = "train-features"


@dataclass(frozen=True, kw_only=True)
class TrainFeaturesArgs:
    """The keys of ``train-features``."""

    dataset: str | None = arg(None, shown="the default dataset", doc="fashion_mnist or digits")
    out: str | None = arg(None, shown="$ARCHBENCH_CACHE/features/", doc="where the weights and sidecar go")
    epochs: int = arg(3, minimum=1, doc="training epochs")
    seed: int = arg(0, doc="the training seed")
    train_items: int | None = arg(None, minimum=1, shown="all", doc="train on the first N items")
    root: str | None = arg(None, doc="the dataset's folder")
    cache: str | None = arg(None, shown="$ARCHBENCH_CACHE", doc="cache folder")


def usage() -> str:
    """``--help``: this docstring, then every key of both forms, generated from their dataclasses."""
    return "\n\n".join([
        __doc__.strip("\n"),
        help_text(EvalRequest, usage=f"python -m {PROGRAM} run_dir=DIR | samples=SET.npz [key=value ...]"),
        help_text(TrainFeaturesArgs, usage=f"python -m {PROGRAM} {TRAIN_FEATURES} [key=value ...]"),
    ])


def train_features(args: TrainFeaturesArgs) -> dict[str, object]:
    """Train the dataset CNN deterministically; its metadata (accuracy, checksum, path)."""
    from archbench.data import default_dataset
    from archbench.evaluation import train_dataset_cnn

    return train_dataset_cnn(
        args.dataset or default_dataset(),
        out=args.out,
        epochs=args.epochs,
        seed=args.seed,
        max_train_items=args.train_items,
        root=args.root,
        cache=args.cache,
    )


@interruptible(PROGRAM)
def main(argv: Sequence[str] | None = None) -> int:
    """Parse into a request, evaluate it (or train the features), print the result line."""
    from archbench.data import DatasetNotFoundError
    from archbench.training.checkpoint import CheckpointError
    from archbench.training.config import ConfigError

    args_in = list(sys.argv[1:] if argv is None else argv)
    if wants_help(args_in) or args_in[:1] == ["help"]:
        print(usage())
        return 0
    setup_logging()
    expected = (UsageError, CheckpointError, ConfigError, DatasetNotFoundError, OSError, ValueError, ImportError)
    try:
        if args_in and args_in[0] == TRAIN_FEATURES:
            meta = train_features(parse_args(TrainFeaturesArgs, args_in[1:]))
            print(f"{meta['network']}: test accuracy {meta['test_accuracy']:.4f}, feature dim {meta['feature_dim']}, "
                  f"sha256 {meta['sha256']}, saved to {meta['path']}")
            return 0
        record = evaluate(parse_args(EvalRequest, args_in))
    except expected as exc:
        return fail(PROGRAM, one_line(exc))
    print(f"{result_line(record)}; wrote {record['path']}")
    return 0

