"""Evaluate a training run's samples, or train the offline feature network.

  python -m archbench.eval run_dir=DIR [num_samples=10000] [features=auto|inception|fashion_mnist_cnn|digits_cnn]
      [sampler=ddim] [steps=50] [cfg_scale=1.0] [guide_channels=N] [seed=0] [batch_size=64] [checkpoint=PATH]
      [device=auto] [weights=PATH] [ref_split=train] [ref_items=N] [out=DIR/eval.json] [train_if_missing=false]
      [cache=DIR]

    Samples ``num_samples`` images from the EMA weights of the newest checkpoint in ``run_dir`` (or from a
    pretrained folder exported from a run; sampler, steps, cfg_scale and guide_channels default to the run's
    ``sample`` settings), extracts features, compares them with cached
    statistics of the run's real dataset (``ref_split`` at the run's resolution) and writes ``run_dir/eval.json``:
    the score (FID for ``inception``, ``FD-<network>`` otherwise), k-NN precision/recall (k=3), and what was used.
    ``features=auto`` picks the dataset CNN for fashion_mnist/digits, else inception.

  python -m archbench.eval train-features [dataset=fashion_mnist|digits] [out=PATH] [epochs=3] [seed=0]
      [train_items=N] [cache=DIR]

    Trains the dataset CNN deterministically, prints its test accuracy and saves weights + a JSON sidecar with
    their SHA-256 (default: $ARCHBENCH_CACHE or ~/.cache/archbench, under features/).

Inception weights are never downloaded: see archbench.evaluation.inception (weights=PATH,
$ARCHBENCH_INCEPTION_WEIGHTS, or torch hub's checkpoints folder).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from archbench.console import fail, interruptible, one_line
from archbench.training.runs import load_ema_model

PROGRAM = "archbench.eval"
TRAIN_FEATURES = "train-features"
log = logging.getLogger("archbench.eval")

# key -> (type, default); None defaults mean "not given" (the run's or library's choice).
RUN_ARGS: dict[str, tuple[type, Any]] = {
    "run_dir": (str, None),
    "checkpoint": (str, None),
    "num_samples": (int, 10_000),
    "features": (str, "auto"),
    "sampler": (str, None),
    "steps": (int, None),
    "cfg_scale": (float, None),
    "guide_channels": (int, None),
    "seed": (int, 0),
    "batch_size": (int, 64),
    "feature_batch_size": (int, 250),
    "device": (str, "auto"),
    "weights": (str, None),
    "ref_split": (str, "train"),
    "ref_items": (int, None),
    "out": (str, None),
    "train_if_missing": (bool, False),
    "cache": (str, None),
    "progress": (bool, True),
}
TRAIN_ARGS: dict[str, tuple[type, Any]] = {
    "dataset": (str, None),
    "out": (str, None),
    "epochs": (int, 3),
    "seed": (int, 0),
    "train_items": (int, None),
    "root": (str, None),
    "cache": (str, None),
}


class EvalError(ValueError):
    """A bad argument or an input eval cannot use."""


def _convert(key: str, kind: type, text: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise EvalError(f"{key} must be true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise EvalError(f"{key} must be {kind.__name__}, got {text!r}") from None


def parse_args(argv: Sequence[str], spec: dict[str, tuple[type, Any]]) -> dict[str, Any]:
    """``key=value`` arguments over ``spec``'s defaults; unknown keys and bad values raise EvalError."""
    args = {key: default for key, (_, default) in spec.items()}
    for text in argv:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise EvalError(f"cannot parse {text!r}; arguments are key=value (see --help)")
        if key not in spec:
            raise EvalError(f"unknown argument {key!r}; valid: {', '.join(spec)}")
        args[key] = _convert(key, spec[key][0], value)
    for key in ("num_samples", "batch_size", "feature_batch_size", "epochs", "train_items", "ref_items", "steps",
                "guide_channels"):
        if key in args and args[key] is not None and args[key] < 1:
            raise EvalError(f"{key} must be a positive integer, got {args[key]}")
    return args


def _features_name(requested: str, dataset: str) -> str:
    from archbench.evaluation import CNN_DATASETS

    if requested != "auto":
        return requested
    return f"{dataset}_cnn" if dataset in CNN_DATASETS else "inception"


def evaluate_run(args: dict[str, Any]) -> dict[str, Any]:
    """Sample from the run's EMA model, score the samples, write ``eval.json``; returns the record."""
    from archbench.evaluation import get_feature_extractor, reference_stats, score_samples
    from archbench.sampling.grid import generate, grid_labels
    from archbench.sampling.settings import sampling_settings
    from archbench.training.distributed import pick_device

    if args["run_dir"] is None and args["checkpoint"] is None:
        raise EvalError("give run_dir=<training run folder> (or checkpoint=<file>)")
    try:
        device = pick_device(str(args["device"]))
    except RuntimeError as exc:
        raise EvalError(f"device={args['device']}: {one_line(exc)}") from None
    run = load_ema_model(args["run_dir"], args["checkpoint"], device)
    config, data = run["config"], run["config"]["data"]
    if not data.get("name"):
        raise EvalError(
            f"{run['path']} does not say which dataset it was trained on, so there is no reference to score against; "
            "export it from its training run (python -m archbench.export) or evaluate the run_dir"
        )
    if int(data["channels"]) not in (1, 3):
        raise EvalError(f"run {run['path']} models {data['channels']}-channel latents; decoding them is not supported")
    name = _features_name(args["features"], data["name"])
    extractor = get_feature_extractor(
        name, weights=args["weights"], device=device, train_if_missing=args["train_if_missing"], cache=args["cache"]
    )
    reference = reference_stats(
        data["name"],
        args["ref_split"],
        int(data["image_size"]),
        extractor,
        args["ref_items"],
        resize_mode=data.get("resize_mode", "resize"),
        root=data.get("root"),
        cache=args["cache"],
        batch_size=args["feature_batch_size"],
        log=log.info,
    )
    try:
        chosen = sampling_settings(args, config.get("sample", {}), run["objective"])
    except ValueError as exc:
        raise EvalError(one_line(exc)) from None
    sampler, steps, cfg_scale = chosen["sampler"], chosen["steps"], chosen["cfg_scale"]
    n = args["num_samples"]
    num_classes = int(getattr(run["net"], "num_classes", 0) or 0)
    log.info("sampling %d images from %s (EMA, step %d, %s, %s steps, cfg %.2f)",
             n, run["path"], run["step"], sampler, steps, cfg_scale)
    start = time.perf_counter()
    try:
        samples = generate(
            run["net"],
            run["objective"],
            num_samples=n,
            shape=(int(data["channels"]), int(data["image_size"]), int(data["image_size"])),
            labels=grid_labels(n, num_classes),
            sampler=sampler,
            steps=steps,
            cfg_scale=cfg_scale,
            guide_channels=chosen["guide_channels"],
            seed=args["seed"],
            batch_size=args["batch_size"],
            device=device,
            progress=args["progress"],
        )
    except ValueError as exc:
        raise EvalError(one_line(exc)) from None
    sampling_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = score_samples(samples.clamp(-1, 1), extractor, reference, batch_size=args["feature_batch_size"])
    record = {
        **scores,
        "sampler": sampler,
        "steps": steps,
        "cfg_scale": cfg_scale,
        "guide_channels": chosen["guide_channels"],
        "seed": args["seed"],
        "checkpoint": str(run["path"]),
        "step": run["step"],
        "backbone": config.get("backbone", {}).get("name"),
        "feature_network": extractor.name,
        "feature_checksum": extractor.checksum,
        "feature_dim": extractor.dim,
        "reference": reference.meta,
        "seconds": {"sampling": round(sampling_s, 2), "scoring": round(time.perf_counter() - start, 2)},
    }
    out = Path(args["out"]) if args["out"] else run["run_dir"] / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)
    record["path"] = str(out)
    return record


def train_features(args: dict[str, Any]) -> dict[str, Any]:
    from archbench.data import default_dataset
    from archbench.evaluation import train_dataset_cnn

    dataset = args["dataset"] or default_dataset()
    return train_dataset_cnn(
        dataset,
        out=args["out"],
        epochs=args["epochs"],
        seed=args["seed"],
        max_train_items=args["train_items"],
        root=args["root"],
        cache=args["cache"],
    )


@interruptible("archbench.eval")
def main(argv: Sequence[str] | None = None) -> int:
    from archbench.data import DatasetNotFoundError
    from archbench.training.checkpoint import CheckpointError
    from archbench.training.config import ConfigError

    args_in = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in args_in):
        print(__doc__)
        return 0
    root = logging.getLogger("archbench")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[archbench] %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    expected = (EvalError, CheckpointError, ConfigError, DatasetNotFoundError, OSError, ValueError, ImportError)
    try:
        if args_in and args_in[0] == TRAIN_FEATURES:
            meta = train_features(parse_args(args_in[1:], TRAIN_ARGS))
            print(f"{meta['network']}: test accuracy {meta['test_accuracy']:.4f}, feature dim {meta['feature_dim']}, "
                  f"sha256 {meta['sha256']}, saved to {meta['path']}")
            return 0
        record = evaluate_run(parse_args(args_in, RUN_ARGS))
    except expected as exc:
        return fail(PROGRAM, one_line(exc))
    pr = "" if record["precision"] is None else f", precision {record['precision']:.3f}, recall {record['recall']:.3f}"
    score = f"{record['score_name']} = {record['score']:.4f}"
    print(f"{score} ({record['num_samples']} samples{pr}); wrote {record['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
