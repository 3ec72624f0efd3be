"""The selective scan as a package: the reference loop, the fast chunked scan, kernel dispatch.

``selective_scan`` is the one entry point; ``impl=`` picks the implementation (see :mod:`backbones.ssm.scan`).
``ssd_scan`` is the same for the Mamba-2 SSD scan (see :mod:`backbones.ssm.ssd`).
"""

from backbones.ssm.kernels import mamba_ssm_available
from backbones.ssm.scan import SCAN_IMPLS, resolve_impl, selective_scan, selective_scan_macs
from backbones.ssm.ssd import SSD_IMPLS, resolve_ssd_impl, ssd_scan, ssd_scan_macs
from backbones.ssm.triton_scan import triton_available

__all__ = [
    "SCAN_IMPLS",
    "SSD_IMPLS",
    "mamba_ssm_available",
    "resolve_impl",
    "resolve_ssd_impl",
    "selective_scan",
    "selective_scan_macs",
    "ssd_scan",
    "ssd_scan_macs",
    "triton_available",
]
