"""Evaluate a training run's samples or a sample file, or train the offline feature network.

  python -m archbench.eval run_dir=DIR [num_samples=10000] [features=auto|inception|fashion_mnist_cnn|digits_cnn]
      [sampler=ddim] [steps=50] [cfg_scale=1.0] [guide_channels=N] [seed=0] [batch_size=64] [checkpoint=PATH]
      [device=auto] [weights=PATH] [ref_split=train] [ref_items=N] [ref_npz=PATH] [out=DIR/eval.json]
      [train_if_missing=false] [cache=DIR]

    Samples ``num_samples`` images from the EMA weights of the newest checkpoint in ``run_dir`` (or from a
    pretrained folder exported from a run; sampler, steps, cfg_scale and guide_channels default to the run's
    ``sample`` settings), extracts features, compares them with cached
    statistics of the run's real dataset (``ref_split`` at the run's resolution) and writes ``run_dir/eval.json``:
    the score (FID for ``inception``, ``FD-<network>`` otherwise), k-NN precision/recall (k=3), Inception Score
    and KID (``features=inception``), the conditional accuracy (a dataset CNN's classifier agreeing with the
    conditioning labels of a class-conditional model), and what was used.
    ``features=auto`` picks the dataset CNN for fashion_mnist/digits, else inception.

  python -m archbench.eval samples=SET.npz [ref_npz=REF.npz | dataset=NAME | run_dir=DIR] [num_samples=N] ...

    Scores an existing sample set (``arr_0`` uint8 [N, H, W, C], labels in ``arr_1``: written by
    ``python -m archbench.sample out=SET.npz``, under torchrun for FID-50k, or by ADM's / DiT's sample_ddp.py);
    ``num_samples`` defaults to all of it. The reference is ``ref_npz`` if given, else the real data of
    ``dataset=`` (or of ``run_dir``'s run) at the samples' resolution. Writes ``out``, else
    ``run_dir/eval.json``, else ``SET.eval.json``.

    ``ref_npz=PATH``: an ADM reference batch (``mu``, ``sigma``; its images ``arr_0``, when present, give the
    reference points of precision/recall and KID). Its statistics replace the dataset's; ``mu``/``sigma`` must fit
    the feature network (2048-d for inception).

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
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from archbench.console import fail, interruptible, one_line, setup_logging, write_text_atomic
from archbench.training.runs import load_ema_model

PROGRAM = "archbench.eval"
TRAIN_FEATURES = "train-features"
log = logging.getLogger("archbench.eval")

# key -> (type, default); None defaults mean "not given" (the run's or library's choice).
RUN_ARGS: dict[str, tuple[type, Any]] = {
    "run_dir": (str, None),
    "checkpoint": (str, None),
    "samples": (str, None),
    "ref_npz": (str, None),
    "dataset": (str, None),
    "num_samples": (int, None),  # None: 10,000 drawn from a run; all of a samples= file
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
DEFAULT_NUM_SAMPLES = 10_000
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


def _source(args: dict[str, Any], device: Any) -> dict[str, Any]:
    """What is scored: the run (if any), the sample file (if any), the dataset and the image size."""
    from archbench.data import DATASETS
    from archbench.evaluation.sample_files import SampleFile, SampleFileError

    if args["samples"] is None and args["run_dir"] is None and args["checkpoint"] is None:
        raise EvalError("give run_dir=<training run folder> (or checkpoint=<file>), or samples=<set.npz> to score")
    run = load_ema_model(args["run_dir"], args["checkpoint"], device) if args["run_dir"] or args["checkpoint"] else None
    data = run["config"]["data"] if run else {}
    dataset = args["dataset"] or data.get("name")
    if dataset is not None and dataset not in DATASETS:
        raise EvalError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    files = None
    if args["samples"] is not None:
        try:
            files = SampleFile.open(args["samples"])
        except SampleFileError as exc:
            raise EvalError(one_line(exc)) from None
        if args["ref_npz"] is None and dataset is None:
            raise EvalError(f"samples={files.path}: say what to compare with: ref_npz=<ADM reference batch .npz> or "
                            f"dataset=<name> (valid: {', '.join(DATASETS)})")
        height, width, _ = files.image_shape
        if args["ref_npz"] is None and height != width:
            raise EvalError(f"samples={files.path} holds {height}x{width} images; dataset references are square")
        return {"run": run, "files": files, "dataset": dataset, "image_size": height, "data": data}
    assert run is not None
    if args["ref_npz"] is None and dataset is None:
        raise EvalError(
            f"{run['path']} does not say which dataset it was trained on, so there is no reference to score against; "
            "export it from its training run (python -m archbench.export) or evaluate the run_dir"
        )
    if int(data["channels"]) not in (1, 3):
        raise EvalError(f"run {run['path']} models {data['channels']}-channel latents; decoding them is not supported")
    return {"run": run, "files": None, "dataset": dataset, "image_size": int(data["image_size"]), "data": data}


def _draw(args: dict[str, Any], run: dict[str, Any], device: Any) -> dict[str, Any]:
    """Sample from the run as the CI regression always has (one seeded stream); images, labels, settings."""
    from archbench.sampling.grid import generate, grid_labels
    from archbench.sampling.settings import sampling_settings

    config, data = run["config"], run["config"]["data"]
    try:
        chosen = sampling_settings(args, config.get("sample", {}), run["objective"])
    except ValueError as exc:
        raise EvalError(one_line(exc)) from None
    n = args["num_samples"] or DEFAULT_NUM_SAMPLES
    labels = grid_labels(n, int(getattr(run["net"], "num_classes", 0) or 0))
    log.info("sampling %d images from %s (EMA, step %d, %s, %s steps, cfg %.2f)",
             n, run["path"], run["step"], chosen["sampler"], chosen["steps"], chosen["cfg_scale"])
    start = time.perf_counter()
    try:
        samples = generate(
            run["net"],
            run["objective"],
            num_samples=n,
            shape=(int(data["channels"]), int(data["image_size"]), int(data["image_size"])),
            labels=labels,
            sampler=chosen["sampler"],
            steps=chosen["steps"],
            cfg_scale=chosen["cfg_scale"],
            guide_channels=chosen["guide_channels"],
            seed=args["seed"],
            batch_size=args["batch_size"],
            device=device,
            progress=args["progress"],
        )
    except ValueError as exc:
        raise EvalError(one_line(exc)) from None
    return {"images": samples.clamp(-1, 1), "labels": labels, "settings": {**chosen, "seed": args["seed"]},
            "sampling_s": time.perf_counter() - start, "samples": None,
            "checkpoint": str(run["path"]), "step": run["step"]}


def _read(args: dict[str, Any], files: Any, run: dict[str, Any] | None) -> dict[str, Any]:
    """A sample file's first ``num_samples`` images (streamed), their labels and, when archbench wrote it, how."""
    import torch

    n = args["num_samples"] or files.num_images
    if n > files.num_images:
        raise EvalError(f"num_samples={n} but samples={files.path} holds only {files.num_images} images")
    meta = files.meta or {}
    labels = files.conditional_labels
    sampling = meta.get("sampling", {})
    settings = {key: sampling.get(key) for key in ("sampler", "steps", "cfg_scale", "guide_channels")}
    source = meta.get("source", {})
    return {
        "images": files.batches(args["feature_batch_size"], limit=n),
        "labels": None if labels is None else torch.from_numpy(labels[:n]),
        "settings": {**settings, "seed": meta.get("seed")},
        "sampling_s": 0.0,
        "samples": {"path": str(files.path), "images": files.num_images, "used": n,
                    "image_shape": list(files.image_shape), "meta": files.meta},
        "checkpoint": source.get("checkpoint", str(run["path"]) if run else None),
        "step": source.get("step", run["step"] if run else None),
    }


def _reference(args: dict[str, Any], source: dict[str, Any], extractor: Any) -> Any:
    from archbench.evaluation import reference_stats
    from archbench.evaluation.reference import ReferenceBatchError, adm_reference

    if args["ref_npz"] is not None:
        try:
            return adm_reference(args["ref_npz"], extractor, cache=args["cache"],
                                 batch_size=args["feature_batch_size"], log=log.info)
        except ReferenceBatchError as exc:
            raise EvalError(one_line(exc)) from None
    same_data = source["data"].get("name") == source["dataset"]
    return reference_stats(
        source["dataset"],
        args["ref_split"],
        source["image_size"],
        extractor,
        args["ref_items"],
        resize_mode=source["data"].get("resize_mode", "resize") if same_data else "resize",
        root=source["data"].get("root") if same_data else None,
        cache=args["cache"],
        batch_size=args["feature_batch_size"],
        log=log.info,
    )


def _classifier_labels(extractor: Any, dataset: str | None, labels: Any) -> Any:
    """The conditioning labels when the feature network classifies this very dataset's classes, else None."""
    classifies = getattr(extractor, "dataset", None)
    if labels is None:
        return None
    if classifies is None or classifies != dataset:
        log.info("conditional accuracy not computed: features=%s has no classifier for %s's classes",
                 extractor.name, dataset or "this data")
        return None
    return labels


def evaluate_run(args: dict[str, Any]) -> dict[str, Any]:
    """Score a run's fresh samples (or a ``samples=`` file) against the dataset (or ``ref_npz=``), write
    ``eval.json``; returns the record."""
    from archbench.evaluation import get_feature_extractor, score_samples
    from archbench.training.distributed import pick_device

    try:
        device = pick_device(str(args["device"]))
    except RuntimeError as exc:
        raise EvalError(f"device={args['device']}: {one_line(exc)}") from None
    source = _source(args, device)
    run, dataset = source["run"], source["dataset"]
    name = _features_name(args["features"], dataset or "")
    extractor = get_feature_extractor(
        name, weights=args["weights"], device=device, train_if_missing=args["train_if_missing"], cache=args["cache"]
    )
    reference = _reference(args, source, extractor)
    drawn = _read(args, source["files"], run) if source["files"] is not None else _draw(args, run, device)
    start = time.perf_counter()
    scores = score_samples(
        drawn["images"],
        extractor,
        reference,
        labels=_classifier_labels(extractor, dataset, drawn["labels"]),
        batch_size=args["feature_batch_size"],
    )
    record = {
        **scores,
        **drawn["settings"],
        "checkpoint": drawn["checkpoint"],
        "step": drawn["step"],
        "backbone": run["config"].get("backbone", {}).get("name") if run else None,
        "dataset": dataset,
        "samples": drawn["samples"],
        "feature_network": extractor.name,
        "feature_checksum": extractor.checksum,
        "feature_dim": extractor.dim,
        "reference_source": "ref_npz" if args["ref_npz"] is not None else "dataset",
        "reference": reference.meta,
        "seconds": {"sampling": round(drawn["sampling_s"], 2), "scoring": round(time.perf_counter() - start, 2)},
    }
    if args["out"]:
        out = Path(args["out"])
    elif run is not None:
        out = run["run_dir"] / "eval.json"
    else:
        out = source["files"].path.with_suffix(".eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(record, indent=2) + "\n")
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


def result_line(record: dict[str, Any]) -> str:
    """The score and every other metric that was computed, on one line."""
    parts = [f"{record['num_samples']} samples"]
    if record.get("precision") is not None:
        parts.append(f"precision {record['precision']:.3f}, recall {record['recall']:.3f}")
    if record.get("inception_score") is not None:
        parts.append(f"IS {record['inception_score']:.3f} +- {record['inception_score_std']:.3f}")
    if record.get("kid") is not None:
        parts.append(f"KID {record['kid']:.5f} +- {record['kid_std']:.5f}")
    if record.get("cond_accuracy") is not None:
        parts.append(f"cond. accuracy {record['cond_accuracy']:.3f}")
    return f"{record['score_name']} = {record['score']:.4f} ({', '.join(parts)})"


@interruptible("archbench.eval")
def main(argv: Sequence[str] | None = None) -> int:
    from archbench.data import DatasetNotFoundError
    from archbench.training.checkpoint import CheckpointError
    from archbench.training.config import ConfigError

    args_in = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in args_in):
        print(__doc__)
        return 0
    setup_logging()
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
    print(f"{result_line(record)}; wrote {record['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
