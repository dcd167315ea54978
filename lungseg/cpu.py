"""What this CPU is and can do (its name, its instruction-set flags, native bf16), read from
``/proc/cpuinfo`` without importing torch, so that torch-free inference (ONNX Runtime, OpenVINO) and
``backend=auto`` can ask too."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

from lungseg.errors import LungsegError

# The flags that decide which kernels run fast: AVX2 only, AVX-512, VNNI int8 dot products, native
# bf16, AMX tiles.
SPEED_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
# Overrides the CPU's bf16 detection: 1 treats it as a bf16 CPU (emulated where it has none: slow,
# but the same arithmetic, so an AVX2 machine can check the bf16 path), 0 as an fp32 CPU. Unset:
# read /proc/cpuinfo.
CPU_BF16_ENV = "LUNGSEG_CPU_BF16"


@functools.cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module says."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of :data:`SPEED_FLAGS` this CPU has, in that order."""
    words = set()
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            words.update(line.split(":", 1)[1].split())
    return [flag for flag in SPEED_FLAGS if flag in words]


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX), or ``LUNGSEG_CPU_BF16``
    says to act so; emulated bf16 is slower than fp32, so it is never picked by itself."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise LungsegError(
            f"{CPU_BF16_ENV}={forced}: use 1 (act as a bf16 CPU), 0 (an fp32 CPU) or leave it unset"
        )
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_avx512() -> bool:
    """True when the CPU has AVX-512 (oneDNN's fast channels_last kernels for every convolution
    pass)."""
    return "avx512f" in cpu_flags()
