"""OmegaConf resolvers used in ``conf/``: hardware-dependent defaults decided when the config is composed."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision(device: str = "auto") -> str:
    """Lightning precision for ``device`` (cpu, gpu or auto = gpu when CUDA is available).

    GPU: bf16-mixed where supported (Ampere and newer), else 16-mixed. CPU: bf16-mixed with
    native bf16, else 32-true.
    """
    if device == "auto":
        device = "gpu" if torch.cuda.is_available() else "cpu"
    if device == "gpu":
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def register() -> None:
    """Register ``${lungseg.precision:<device>}`` (idempotent)."""
    if not OmegaConf.has_resolver("lungseg.precision"):
        OmegaConf.register_new_resolver("lungseg.precision", precision)
