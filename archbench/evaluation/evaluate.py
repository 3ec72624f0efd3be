"""``evaluate(request)``: score a training run's fresh samples, or a sample file, against real data.

The one evaluation entry point: ``python -m archbench.eval`` parses its key=value arguments into an
:class:`EvalRequest` and calls :func:`evaluate`; the study builds the same request for each checkpoint it
scores.  So a study's scores and the command's are the same computation::

    from archbench.evaluation.evaluate import EvalRequest, evaluate
    record = evaluate(EvalRequest(run_dir="runs/x", num_samples=500, steps=25))

The record is what ``eval.json`` holds (the metrics of :data:`archbench.evaluation.metrics.METRICS`, the
sampling settings, the feature network and the reference used), plus ``path``: where it was written.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from archbench.console.args import arg
from archbench.console.errors import UsageError, one_line
from archbench.console.files import write_text_atomic
from archbench.console.progress import progress, tracked
from archbench.console.threads import parse_threads, set_threads
from archbench.training.runs import LoadedRun, load_ema_model

log = logging.getLogger("archbench.eval")
DEFAULT_NUM_SAMPLES = 10_000


class EvalError(UsageError):
    """A bad argument or an input eval cannot use (a :class:`UsageError`, so a ValueError too)."""


@dataclass(frozen=True, kw_only=True)
class EvalRequest:
    """What to score, against what, and how fresh samples are drawn; the fields are the eval command's keys.

    The samples: fresh ones from ``run_dir`` (a training run or a pretrained folder; ``checkpoint`` picks a
    checkpoint file) drawn with ``sampler``, ``steps``, ``cfg_scale``, ``guide_channels`` (None: the run's
    ``sample`` setting, else the objective's default), ``seed`` and ``batch_size``; or the first ``num_samples``
    of the sample file ``samples``. The reference: ``ref_npz`` (an ADM reference batch), else the real data of
    ``dataset`` (default: the run's) at the samples' resolution. Numbers below their minimum raise EvalError here,
    for library callers as for the command line.
    """

    run_dir: str | None = arg(None, doc="a training run folder (its newest checkpoint) or a pretrained folder")
    checkpoint: str | None = arg(None, doc="a checkpoint file to use instead of run_dir's newest")
    samples: str | None = arg(None, doc="score this sample set (.npz: arr_0 uint8 images, arr_1 labels) instead")
    ref_npz: str | None = arg(None, doc="an ADM reference batch (mu, sigma; its arr_0 images, when present)")
    dataset: str | None = arg(None, shown="the run's", doc="the real data to compare with (without ref_npz)")
    num_samples: int | None = arg(None, minimum=1, shown=f"{DEFAULT_NUM_SAMPLES} from a run, all of a set",
                                  doc="samples to score")
    features: str = arg("auto", doc="feature network: auto (the dataset CNN for fashion_mnist/digits, else "
                                    "inception), inception, fashion_mnist_cnn or digits_cnn")
    sampler: str | None = arg(None, shown="the run's", doc="sampler for fresh samples")
    steps: int | None = arg(None, minimum=1, shown="the run's", doc="sampling steps (an int)")
    cfg_scale: float | None = arg(None, shown="the run's", doc="classifier-free guidance scale (1: no guidance)")
    guide_channels: int | None = arg(None, minimum=1, shown="the run's", doc="guide only the first N channels")
    seed: int = arg(0, doc="the seed of the one noise stream over all fresh samples")
    batch_size: int = arg(64, minimum=1, doc="fresh samples per forward pass")
    feature_batch_size: int = arg(250, minimum=1, doc="images per pass of the feature network")
    device: str = arg("auto", doc="auto, cpu, cuda or cuda:N")
    threads: str = arg("auto", doc="CPU threads: auto (time a few forward passes at 1, 2, 4, ... and keep the "
                       "fastest; OMP_NUM_THREADS pins it) or N")
    weights: str | None = arg(None, shown="the usual places", doc="the feature network's weights file")
    ref_split: str = arg("test", doc="the dataset split of the reference: held-out images, as studies and CI "
                         "score (a model that memorised its training set gains nothing); the literature's FID-50k "
                         "compares with training-set statistics: ref_npz= or ref_split=train")
    ref_items: int | None = arg(None, minimum=1, shown="all", doc="reference items (the split's first N)")
    out: str | None = arg(None, shown="run_dir/eval.json, else SET.eval.json", doc="where the record is written")
    train_if_missing: bool = arg(False, doc="train a missing dataset CNN first (about a minute on CPU)")
    cache: str | None = arg(None, shown="$ARCHBENCH_CACHE", doc="reference statistics and dataset CNNs")
    progress: bool = arg(True, doc="one progress bar per phase on stderr (reference statistics, sampling, "
                                   "scoring); false: none")

    def __post_init__(self) -> None:
        for f in fields(self):
            low, value = f.metadata.get("minimum"), getattr(self, f.name)
            if low is not None and value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                                          or value < low):
                raise EvalError(f"{f.name} must be an integer >= {low:g}, got {value!r}")
        try:
            parse_threads(self.threads)
        except ValueError as exc:
            raise EvalError(str(exc)) from None

    @property
    def sampling(self) -> dict[str, Any]:
        """The sampler settings asked for (None: the run's own)."""
        return {"sampler": self.sampler, "steps": self.steps, "cfg_scale": self.cfg_scale,
                "guide_channels": self.guide_channels}


def _text(value: str | Path | None) -> str | None:
    return None if value is None else str(value)


def _features_name(requested: str, dataset: str) -> str:
    from archbench.evaluation import CNN_DATASETS

    if requested != "auto":
        return requested
    return f"{dataset}_cnn" if dataset in CNN_DATASETS else "inception"


def _feature_weights(request: EvalRequest, name: str) -> str | None:
    """The weights asked for, else the dataset CNN committed under recipes/baselines (the one CI and the studies
    score with), else None (the feature network's usual place)."""
    from archbench.evaluation.cond_accuracy import committed_classifier

    if request.weights is not None or name == "inception":
        return _text(request.weights)
    committed = committed_classifier(name.removesuffix("_cnn"), name)
    return None if committed is None else str(committed)


def check_feature_network(request: EvalRequest, dataset: str) -> None:
    """Fail now, in one line, when the feature network ``request`` would score ``dataset``'s samples with is not on
    disk: a study checks this before it trains anything, not after every arm has trained."""
    from archbench.evaluation.dataset_cnn import default_cnn_path, sidecar_path
    from archbench.evaluation.inception import InceptionWeightsMissing, find_inception_weights

    name = _features_name(request.features, dataset)
    if name == "inception":
        try:
            find_inception_weights(request.weights)
        except InceptionWeightsMissing as exc:
            raise EvalError(one_line(exc)) from None
        return
    cnn = name.removesuffix("_cnn")
    weights = _feature_weights(request, name)
    path = Path(weights) if weights else default_cnn_path(cnn, request.cache)
    if request.train_if_missing or (path.is_file() and sidecar_path(path).is_file()):
        return
    raise EvalError(f"features={request.features} scores {dataset} samples with the {name} network, which is not at "
                    f"{path}: train it once with python -m archbench.eval train-features dataset={cnn} out={path}, "
                    "or give eval.features / eval.weights")


def _source(request: EvalRequest, device: Any) -> dict[str, Any]:
    """What is scored: the run (if any), the sample file (if any), the dataset and the image size."""
    from archbench.data import DATASETS
    from archbench.evaluation.sample_files import SampleFile, SampleFileError

    if request.samples is None and request.run_dir is None and request.checkpoint is None:
        raise EvalError("give run_dir=<training run folder> (or checkpoint=<file>), or samples=<set.npz> to score")
    run = None
    if request.run_dir or request.checkpoint:
        run = load_ema_model(_text(request.run_dir), _text(request.checkpoint), device)
    data = run.data if run else {}
    dataset = request.dataset or data.get("name")
    if dataset is not None and dataset not in DATASETS:
        raise EvalError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    files = None
    if request.samples is not None:
        try:
            files = SampleFile.open(request.samples)
        except SampleFileError as exc:
            raise EvalError(one_line(exc)) from None
        if request.ref_npz is None and dataset is None:
            raise EvalError(f"samples={files.path}: say what to compare with: ref_npz=<ADM reference batch .npz> or "
                            f"dataset=<name> (valid: {', '.join(DATASETS)})")
        height, width, _ = files.image_shape
        if request.ref_npz is None and height != width:
            raise EvalError(f"samples={files.path} holds {height}x{width} images; dataset references are square")
        return {"run": run, "files": files, "dataset": dataset, "image_size": height, "data": data}
    assert run is not None
    if request.ref_npz is None and dataset is None:
        raise EvalError(
            f"{run.path} does not say which dataset it was trained on, so there is no reference to score against; "
            "export it from its training run (python -m archbench.export) or evaluate the run_dir"
        )
    if int(data["channels"]) not in (1, 3):
        raise EvalError(f"run {run.path} models {data['channels']}-channel latents; decoding them is not supported")
    return {"run": run, "files": None, "dataset": dataset, "image_size": int(data["image_size"]), "data": data}


def _draw(request: EvalRequest, run: LoadedRun, device: Any) -> dict[str, Any]:
    """Sample from the run as the CI regression always has (one seeded stream); images, labels, settings."""
    from archbench.sampling.grid import draw_images, grid_labels
    from archbench.sampling.settings import sampling_settings
    from archbench.sampling.threads import settle_threads

    data = run.data
    try:
        chosen = sampling_settings(request.sampling, run.sample, run.objective)
    except ValueError as exc:
        raise EvalError(one_line(exc)) from None
    n = request.num_samples or DEFAULT_NUM_SAMPLES
    labels = conditions = grid_labels(n, run.num_classes)
    if getattr(run.net, "captioned", False):  # the captions of the reference split's first n examples
        labels, conditions = _split_captions(data, request.ref_split, n)
    shape = (int(data["channels"]), int(data["image_size"]), int(data["image_size"]))
    settle_threads(request.threads, run.net, shape, request.batch_size, run.num_classes, device)
    log.info("sampling %d images from %s (EMA, step %d, %s, %s steps, cfg %.2f)",
             n, run.path, run.step, chosen.sampler, chosen.steps, chosen.cfg_scale)
    start = time.perf_counter()
    try:
        samples = draw_images(
            run.net, run.objective, chosen, num_samples=n,
            shape=(int(data["channels"]), int(data["image_size"]), int(data["image_size"])), labels=conditions,
            seed=request.seed, batch_size=request.batch_size, device=device, progress=request.progress,
        )
    except ValueError as exc:
        raise EvalError(one_line(exc)) from None
    return {"images": samples.clamp(-1, 1), "count": n, "labels": labels,
            "settings": {**chosen.as_dict(), "seed": request.seed},
            "sampling_s": time.perf_counter() - start, "samples": None,
            "checkpoint": str(run.path), "step": run.step}


def _split_captions(data: dict[str, Any], split: str, n: int) -> tuple[Any, Any]:
    """The caption tokens of ``split``'s first ``n`` examples (what the score reads) and what the model takes for
    them (the same tokens, or their precomputed features)."""
    from archbench.data.captions import split_captions

    name = str(data["name"])
    try:
        return split_captions(data, split, n)
    except ValueError as exc:
        raise EvalError(f"num_samples={n}, ref_split={split} of {name}: {one_line(exc)}") from None


def _read(request: EvalRequest, files: Any, run: dict[str, Any] | None) -> dict[str, Any]:
    """A sample file's first ``num_samples`` images (streamed), their labels and, when archbench wrote it, how."""
    import torch

    n = request.num_samples or files.num_images
    if n > files.num_images:
        raise EvalError(f"num_samples={n} but samples={files.path} holds only {files.num_images} images")
    meta = files.meta or {}
    labels = files.conditional_labels
    sampling = meta.get("sampling", {})
    settings = {key: sampling.get(key) for key in ("sampler", "steps", "cfg_scale", "guide_channels")}
    source = meta.get("source", {})
    return {
        "images": files.batches(request.feature_batch_size, limit=n),
        "count": n,
        "labels": None if labels is None else torch.from_numpy(labels[:n]),
        "settings": {**settings, "seed": meta.get("seed")},
        "sampling_s": 0.0,
        "samples": {"path": str(files.path), "images": files.num_images, "used": n,
                    "image_shape": list(files.image_shape), "meta": files.meta},
        "checkpoint": source.get("checkpoint", str(run.path) if run else None),
        "step": source.get("step", run.step if run else None),
    }


def _reference(request: EvalRequest, source: dict[str, Any], extractor: Any) -> Any:
    from archbench.evaluation import reference_stats
    from archbench.evaluation.reference import ReferenceBatchError, adm_reference

    if request.ref_npz is not None:
        try:
            return adm_reference(request.ref_npz, extractor, cache=request.cache,
                                 batch_size=request.feature_batch_size, log=log.info, progress=request.progress)
        except ReferenceBatchError as exc:
            raise EvalError(one_line(exc)) from None
    same_data = source["data"].get("name") == source["dataset"]
    return reference_stats(
        source["dataset"],
        request.ref_split,
        source["image_size"],
        extractor,
        request.ref_items,
        resize_mode=source["data"].get("resize_mode", "resize") if same_data else "resize",
        root=source["data"].get("root") if same_data else None,
        cache=request.cache,
        batch_size=request.feature_batch_size,
        log=log.info,
        progress=request.progress,
    )


def _classifier_labels(extractor: Any, dataset: str | None, labels: Any) -> Any:
    """The conditioning labels when the feature network classifies this very dataset's classes, else None."""
    classifies = getattr(extractor, "dataset", None)
    if labels is None:
        return None
    if labels.ndim == 2:  # captions: scored part by part, by the classifier of the parts
        if dataset == "fashion_pairs" and classifies == "fashion_mnist":
            return labels
        log.info("compositional score not computed: it reads fashion_pairs captions with the fashion_mnist CNN")
        return None
    if classifies is None or classifies != dataset:
        log.info("conditional accuracy not computed: features=%s has no classifier for %s's classes",
                 extractor.name, dataset or "this data")
        return None
    return labels


def _scoring_batches(request: EvalRequest, drawn: dict[str, Any], extractor: Any) -> Any:
    """The images to score, ``feature_batch_size`` at a time (the batches :func:`score_samples` would cut), shown
    as one bar over the feature network's pass when ``request.progress``."""
    import torch

    from archbench.evaluation.features import image_batches

    images, count = drawn["images"], drawn["count"]
    batches = image_batches(images, request.feature_batch_size) if isinstance(images, torch.Tensor) else images
    bar = progress(count, f"scoring {count} samples with {extractor.name}", request.progress, unit="img")
    return tracked(batches, bar)


def evaluate(request: EvalRequest) -> dict[str, Any]:
    """Score what ``request`` names, write its ``eval.json`` and return the record (with ``path``).

    Bad requests and unusable inputs raise :class:`EvalError` (or the loader's own errors: a missing checkpoint,
    missing feature weights, a missing dataset), each with a one-line message.
    """
    from archbench.evaluation import get_feature_extractor, score_samples
    from archbench.training.distributed import pick_device

    try:
        device = pick_device(str(request.device))
    except RuntimeError as exc:
        raise EvalError(f"device={request.device}: {one_line(exc)}") from None
    source = _source(request, device)
    run, dataset = source["run"], source["dataset"]
    if run is None and parse_threads(request.threads) != "auto":  # scoring a file: the count, if one is given
        set_threads(int(request.threads))
    name = _features_name(request.features, dataset or "")
    extractor = get_feature_extractor(
        name, weights=_feature_weights(request, name), device=device, train_if_missing=request.train_if_missing,
        cache=request.cache,
    )
    reference = _reference(request, source, extractor)
    drawn = _read(request, source["files"], run) if source["files"] is not None else _draw(request, run, device)
    start = time.perf_counter()
    scores = score_samples(
        _scoring_batches(request, drawn, extractor),
        extractor,
        reference,
        labels=_classifier_labels(extractor, dataset, drawn["labels"]),
        batch_size=request.feature_batch_size,
    )
    record = {
        **scores,
        **drawn["settings"],
        "checkpoint": drawn["checkpoint"],
        "step": drawn["step"],
        "backbone": run.backbone if run else None,
        "dataset": dataset,
        "samples": drawn["samples"],
        "feature_network": extractor.name,
        "feature_checksum": extractor.checksum,
        "feature_dim": extractor.dim,
        "reference_source": "ref_npz" if request.ref_npz is not None else "dataset",
        "reference": reference.meta,
        "seconds": {"sampling": round(drawn["sampling_s"], 2), "scoring": round(time.perf_counter() - start, 2)},
    }
    if request.out:
        out = Path(request.out)
    elif run is not None:
        out = run.run_dir / "eval.json"
    else:
        out = source["files"].path.with_suffix(".eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(record, indent=2) + "\n")
    record["path"] = str(out)
    return record
