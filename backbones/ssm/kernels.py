"""mamba-ssm's fused CUDA selective-scan kernel, used only where it imports and the tensors live on CUDA."""

from __future__ import annotations

import functools

from torch import Tensor


@functools.lru_cache(maxsize=1)
def mamba_ssm_available() -> bool:
    """Whether the ``mamba_ssm`` CUDA selective-scan kernel can be imported (cached: imports are slow)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception:  # ImportError, but also broken CUDA extension builds (OSError, RuntimeError)
        return False
    return True


def mamba_ssm_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Dispatch to the fused CUDA kernel, refusing with an actionable message when it cannot run."""
    if not mamba_ssm_available():
        raise RuntimeError(
            "selective_scan(impl='mamba_ssm'): the mamba_ssm package (with its CUDA extension) is not "
            "importable; install `mamba-ssm` on a CUDA machine or use impl='fast' / impl='auto'"
        )
    if not u.is_cuda:
        raise RuntimeError(
            f"selective_scan(impl='mamba_ssm'): the mamba_ssm kernel needs CUDA tensors, got device "
            f"{u.device}; use impl='fast' (or impl='auto', which picks it) off-GPU"
        )
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
