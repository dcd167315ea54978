"""Running a trained model outside training: the device, the precision and the input size, decided one way."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lungseg.errors import LungsegError
from lungseg.resolvers import cpu_has_native_bf16

log = logging.getLogger(__name__)
DEFAULT_IMAGE_SIZE = 256
PRECISIONS = ("32", "bf16", "16")


def run_dir(ckpt_path: str | Path) -> Path:
    """The training run of a checkpoint: the parent of ``checkpoints/``, else the checkpoint's folder."""
    ckpt_path = Path(ckpt_path).resolve()
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def trained_image_size(ckpt_path: str | Path) -> int | None:
    """``data.image_size`` from the run's ``.hydra/config.yaml`` beside the checkpoint, if there is one."""
    config = run_dir(ckpt_path) / ".hydra" / "config.yaml"
    try:
        size = OmegaConf.select(OmegaConf.load(config), "data.image_size", default=None)
    except Exception:  # no run config, or one we cannot read: the caller falls back
        return None
    return int(size) if size is not None else None


def model_image_size(ckpt_path: str | Path, setting: int | None, divisor: int = 1,
                     default: int = DEFAULT_IMAGE_SIZE) -> int:
    """The input size: ``setting`` if given, else the checkpoint run's ``data.image_size``, else ``default``."""
    size = setting if setting is not None else trained_image_size(ckpt_path)
    if size is None:
        size = default
        log.warning("no training config beside %s; using image_size=%d (set image_size= if the model was "
                    "trained at another size)", ckpt_path, size)
    if not isinstance(size, int) or size < divisor or size % divisor:
        raise LungsegError(f"image_size={size}: must be a positive multiple of {divisor} for this model")
    return size


def pick_device(setting: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an explicit device must exist."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise LungsegError(f"device={setting}: use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LungsegError(f"device={setting}: no CUDA GPU is available here; use device=cpu or device=auto")
    return device


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto`` -> bf16 on bf16 GPUs and CPUs with native bf16, 16 on older GPUs, else 32 (as training does)."""
    precision = str(precision)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "16"
        return "bf16" if cpu_has_native_bf16() else "32"
    if precision not in PRECISIONS:
        raise LungsegError(f"precision={precision}: use auto, 32, bf16 or 16")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for ``precision`` (auto, 32, bf16 or 16; a no-op for fp32)."""
    precision = resolve_precision(device, precision)
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
