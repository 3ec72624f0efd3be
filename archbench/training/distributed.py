"""Process-group setup for ``torchrun``: NCCL on GPUs, gloo on CPU, and no-ops in a single process.

The training loop calls these helpers unconditionally; with one process they cost nothing, so there is a
single code path for one process and for N.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, rank on this node, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def available_devices() -> list[str]:
    """The device types this machine can run on: cpu, cuda (with the number of GPUs), mps."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append(f"cuda ({torch.cuda.device_count()} GPU(s))")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(spec: str, here: bool = True) -> None:
    """Refuse, in one line naming the valid choices and what this machine has, a device that is not one of
    :data:`DEVICE_CHOICES` or (``here``: it is used on this machine) that this machine does not have."""
    spec = str(spec)
    if spec == "auto":
        return
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps") or (device.type != "cuda" and device.index):
        raise RuntimeError(f"unknown device {spec!r}; valid choices: {DEVICE_CHOICES} (available here: "
                           f"{', '.join(available_devices())})")
    if not here:
        return
    if device.type == "cuda" and not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise RuntimeError(
            f"no CUDA device is available (torch {torch.__version__}, {built}, sees 0 GPUs); "
            f"run on the CPU with device=cpu (or device=auto); available here: {', '.join(available_devices())}"
        )
    if device.type == "mps" and "mps" not in available_devices():
        raise RuntimeError(f"Apple's Metal (mps) is not available on this machine (torch {torch.__version__}); "
                           f"valid choices: {DEVICE_CHOICES} (available here: {', '.join(available_devices())})")


def pick_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; anything else is checked
    (:func:`check_device`) and used as given."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    check_device(spec)
    device = torch.device(spec)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        if device.index >= torch.cuda.device_count():
            raise RuntimeError(f"{device} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def init_distributed(device_spec: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (env:// rendezvous), else describe a single process."""
    if not launched_by_torchrun():
        return DistInfo(device=pick_device(device_spec))
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_spec, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (in place and returned); identity in one process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (so all ranks stop at the same step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
