"""The selective scan as a package: the reference loop, the fast chunked scan, kernel dispatch.

``selective_scan`` is the one entry point; ``impl=`` picks the implementation (see :mod:`backbones.ssm.scan`).
"""

from backbones.ssm.kernels import mamba_ssm_available
from backbones.ssm.scan import SCAN_IMPLS, selective_scan, selective_scan_macs

__all__ = ["SCAN_IMPLS", "mamba_ssm_available", "selective_scan", "selective_scan_macs"]
