"""The data order of a training run: a seeded, resumable, world-size-independent sampler and its loader.

Every epoch is one permutation of the dataset (seeded by ``seed + epoch``), cut into global batches of
``batch_size``.  Rank ``r`` of ``W`` takes positions ``r, r + W, r + 2W, ...`` of each global batch, so
for any number of ranks (and any gradient-accumulation split) optimiser step ``s`` sees exactly the same
set of examples.  Resuming sets the epoch and how many micro-batches of it were already consumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class IndexedDataset(Dataset):
    """Yields ``(index, x, y)`` so per-example noise can be keyed by the example, not its batch position."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any, Any]:
        x, y = self.dataset[index]
        return index, x, y


class ResumableSampler(DistributedSampler):
    """A DistributedSampler whose epoch is cut into whole global batches and that can skip ahead.

    Unlike the stock sampler, the per-epoch length does not depend on the world size (the tail that does
    not fill a global batch is dropped), which makes one process and N processes see the same steps.
    """

    def __init__(self, dataset: Dataset, *, global_batch: int, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        if global_batch % num_replicas:
            raise ValueError(f"global batch {global_batch} is not divisible by the world size {num_replicas}")
        self.global_batch = global_batch
        self.steps_per_epoch = len(dataset) // global_batch  # type: ignore[arg-type]
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the dataset has {len(dataset)} examples, fewer than one global batch of {global_batch}"  # type: ignore[arg-type]
            )
        self.num_samples = self.steps_per_epoch * global_batch // num_replicas
        self.total_size = self.num_samples * num_replicas
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Start ``epoch`` after this rank's first ``skip`` examples."""
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator)[: self.total_size]  # type: ignore[arg-type]
        mine = order[self.rank :: self.num_replicas].tolist()
        return iter(mine[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def build_loader(
    dataset: Dataset,
    *,
    global_batch: int,
    micro_batch: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int,
    pin_memory: bool = False,
) -> tuple[DataLoader, ResumableSampler, torch.Generator]:
    """Loader of ``(index, x, y)`` micro-batches, its sampler, and the generator that seeds its workers.

    The caller re-seeds the returned generator at each epoch start: the DataLoader otherwise draws its
    worker base seed from the global torch RNG, which would make a resumed run diverge.
    """
    indexed = IndexedDataset(dataset)
    sampler = ResumableSampler(indexed, global_batch=global_batch, num_replicas=world_size, rank=rank, seed=seed)
    generator = torch.Generator()
    loader = DataLoader(
        indexed,
        batch_size=micro_batch,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=generator,
    )
    return loader, sampler, generator
