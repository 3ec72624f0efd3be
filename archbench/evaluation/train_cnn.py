"""Deterministic training of the dataset CNN (fixed seed, deterministic kernels, single-process data order)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from archbench.evaluation.dataset_cnn import CNN_DATASETS, CNNConfig, DatasetCNN, default_cnn_path, save_cnn


def load_tensors(dataset: Dataset, max_items: int | None = None, batch_size: int = 2000) -> tuple[torch.Tensor, ...]:
    """The first ``max_items`` items of ``dataset`` as (images, labels) tensors, in dataset order."""
    n = len(dataset) if max_items is None else min(max_items, len(dataset))  # type: ignore[arg-type]
    subset = torch.utils.data.Subset(dataset, range(n))
    xs, ys = [], []
    for x, y in DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return torch.cat(xs), torch.cat(ys).long()


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed, deterministic kernels, one intra-op thread; restores the caller's RNG, threads and flags afterwards.

    One thread makes the weights (and so their checksum) independent of the machine's core count, and on a
    shared 2-core machine it is also faster than two contending threads.
    """
    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(was, warn_only=warn_only)


@torch.no_grad()
def accuracy(model: DatasetCNN, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        correct += int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
    return correct / max(1, len(images))


def train_dataset_cnn(
    dataset: str,
    *,
    out: str | os.PathLike[str] | None = None,
    epochs: int = 3,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-3,
    max_train_items: int | None = None,
    max_test_items: int | None = None,
    root: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the feature CNN on ``dataset``'s train split, report test accuracy, save weights + sidecar.

    Returns the sidecar dict (path under ``"path"``). Same seed, data and torch build give the same checksum.
    """
    from archbench.data import build_dataset, dataset_info

    if dataset not in CNN_DATASETS:
        raise ValueError(f"train-features supports {', '.join(CNN_DATASETS)}, not {dataset!r}")
    info = dataset_info(dataset)
    path = Path(out) if out is not None else default_cnn_path(dataset, cache)
    x_train, y_train = load_tensors(build_dataset(dataset, root=root, split="train"), max_train_items)
    x_test, y_test = load_tensors(build_dataset(dataset, root=root, split="test"), max_test_items)
    config = CNNConfig(in_channels=info.channels, input_size=info.image_size, num_classes=info.num_classes)
    start = time.perf_counter()
    with deterministic(seed):
        model = DatasetCNN(config)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        steps = epochs * -(-len(x_train) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps))
        order_gen = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(x_train), generator=order_gen)
            total = 0.0
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            log(f"epoch {epoch + 1}/{epochs}: train loss {total / len(x_train):.4f}")
        test_acc = accuracy(model, x_test, y_test)
    seconds = time.perf_counter() - start
    log(f"{dataset}_cnn: test accuracy {test_acc:.4f} on {len(x_test)} images, trained in {seconds:.1f} s")
    meta = save_cnn(
        model,
        path,
        {
            "network": f"{dataset}_cnn",
            "dataset": dataset,
            "test_accuracy": test_acc,
            "test_items": len(x_test),
            "train_items": len(x_train),
            "epochs": epochs,
            "seed": seed,
            "batch_size": batch_size,
            "lr": lr,
            "train_seconds": round(seconds, 2),
            "torch": torch.__version__,
        },
    )
    log(f"saved {path} (sha256 {meta['sha256'][:16]}...)")
    return {**meta, "path": str(path)}
