"""Where and how a model runs: the device, the precision (in Lightning's words), the memory format
and threads, decided one way for training, evaluation, prediction and export. Torch is imported only
by the functions that need it, so the torch-free paths (ONNX Runtime, OpenVINO) can ask about the
host too."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
from typing import TYPE_CHECKING

from lungseg.cpu import cpu_has_avx512, cpu_has_native_bf16
from lungseg.errors import LungsegError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
# Lightning's precision names and the autocast dtype each means (None: plain fp32)
AUTOCAST = {"32-true": None, "bf16-mixed": "bfloat16", "16-mixed": "float16"}
ALIASES = {
    "32": "32-true",
    "fp32": "32-true",
    "bf16": "bf16-mixed",
    "16": "16-mixed",
    "fp16": "16-mixed",
}


def use_channels_last(setting: bool | str, device_type: str = "cpu", training: bool = True) -> bool:
    """``module.channels_last``: true or false as set; ``auto``: channels_last, except for training
    on a CPU without AVX-512, where oneDNN's AVX2 weight-gradient kernel for NHWC is far slower than
    for its own blocked layout (reached from NCHW), so NCHW trains faster there while channels_last
    still infers faster (docs/performance.md)."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise LungsegError(f"module.channels_last={setting}: use auto, true or false")
    return not training or device_type != "cpu" or cpu_has_avx512()


def has_native_bf16(device_type: str) -> bool:
    """bf16 in hardware on this device: Ampere or newer GPUs (not emulated on V100/T4), or a bf16
    CPU."""
    if device_type == "cuda":
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return cpu_has_native_bf16()


def native_precision(device_type: str) -> str:
    """The fastest precision this device runs natively: bf16-mixed where it has bf16, 16-mixed on
    older GPUs, else 32-true."""
    if has_native_bf16(device_type):
        return "bf16-mixed"
    return "16-mixed" if device_type == "cuda" else "32-true"


def accelerator_device_type(accelerator: str = "auto") -> str:
    """``cuda`` or ``cpu`` for a Lightning accelerator name (auto = cuda when available)."""
    import torch

    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator in ("gpu", "cuda") else "cpu"


def normalise_precision(setting: str) -> str:
    """Lightning's name for a precision setting (32, bf16 and 16 accepted as short forms)."""
    name = ALIASES.get(str(setting), str(setting))
    if name not in AUTOCAST:
        raise LungsegError(
            f"precision={setting}: use auto, 32-true, bf16-mixed or 16-mixed (or 32, bf16, 16)"
        )
    return name


def supports(device_type: str, precision: str) -> bool:
    """Whether ``device_type`` runs ``precision`` natively (fp16 autocast only on GPUs)."""
    if precision == "bf16-mixed":
        return has_native_bf16(device_type)
    return precision == "32-true" or device_type == "cuda"


def resolve_precision(
    device: torch.device, setting: str | None = "auto", trained: str | None = None
) -> str:
    """``auto``: the training precision ``trained`` where this device runs it natively, else fp32
    (no trained precision known: the device's native one). Anything else is taken as asked."""
    if setting not in (None, "auto"):
        return normalise_precision(str(setting))
    if trained is None:
        return native_precision(device.type)
    trained = normalise_precision(trained)
    if supports(device.type, trained):
        return trained
    log.info("trained in %s, which %s does not run natively: using 32-true", trained, device.type)
    return "32-true"


def pick_device(setting: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an explicit device must exist."""
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise LungsegError(f"device={setting}: use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LungsegError(
            f"device={setting}: no CUDA GPU is available here; use device=cpu or device=auto"
        )
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for a resolved ``precision`` (a no-op for 32-true)."""
    import torch

    dtype = AUTOCAST[normalise_precision(precision)]
    return (
        contextlib.nullcontext()
        if dtype is None
        else torch.autocast(device.type, dtype=getattr(torch, dtype))
    )


def set_threads(threads: int | None) -> None:
    """Torch intra-op threads when asked (``threads=``); None keeps torch's default (one per
    physical core)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))


# A film with more than this many times the model's pixels costs more to read, clean and write than
# the network costs to segment it (a 2048 px film beside a 256 px model: 64 times).
LARGE_FILM = 16


def threads_beside_finishing(film_pixels: int, model_pixels: int) -> int | None:
    """Torch threads for a network on a CPU that shares it with the threads reading, cleaning and
    writing the films (``lungseg.predict``): all cores but one for films of more than
    ``LARGE_FILM`` times the model's pixels, whose finishing outweighs the network, since the
    network's OpenMP threads spin at every barrier while the finishing holds a core (1.1-1.35x end
    to end on 2 cores, docs/dicom.md); None (torch's default, one per core) otherwise."""
    cores = usable_cores()
    if cores < 2 or film_pixels <= LARGE_FILM * model_pixels:
        return None
    return cores - 1


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else the machine's
    count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# glibc's mallopt parameters (malloc.h) and the ceiling glibc itself gives its sliding mmap
# threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); when it slides there, it sets the trim threshold
# to twice that, as we do
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_MMAP_THRESHOLD = 32 * 2**20
MALLOC_ENV = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)
MALLOC_TUNABLES = (
    "glibc.malloc.trim_threshold",
    "glibc.malloc.mmap_threshold",
    "glibc.malloc.top_pad",
    "glibc.malloc.mmap_max",
)


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MiB for reuse instead of giving them back
    to the kernel.

    Each batch a DataLoader collates is a few MiB of fresh tensors, freed a step later. With glibc's
    sliding thresholds, whether those blocks are handed back (the heap trimmed) after every batch
    and faulted in again, zeroed page by page, for the next depends on where they fall in the heap:
    a cost per image that differs from one process to the next, and with the set's size. Fixed
    thresholds make every batch reuse the pages the process already has. Process-wide; a no-op on
    other C libraries and where ``MALLOC_*_`` variables or ``GLIBC_TUNABLES`` set malloc's
    thresholds. True when set (or already set by this process)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(name in os.environ for name in MALLOC_ENV) or any(
        name in tunables for name in MALLOC_TUNABLES
    ):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        libc = ctypes.CDLL(None)
    except (ValueError, OSError, AttributeError):  # not glibc, or no confstr (Windows)
        return False
    return bool(
        libc.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)
        and libc.mallopt(M_TRIM_THRESHOLD, 2 * HEAP_MMAP_THRESHOLD)
    )


def default_num_workers() -> int:
    """DataLoader workers: none on CPU-only machines (the cached pipeline is cheap next to the model
    and a worker would steal a core from training), up to 8 beside a GPU."""
    import torch

    if not torch.cuda.is_available():
        return 0
    return min(8, max(1, usable_cores() - 1))
