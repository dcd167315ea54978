"""One-line checks of the settings a user types, run before any work: numbers, sizes, writable folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lungseg.errors import LungsegError


def setting(cfg: DictConfig, key: str) -> Any:
    """The value of a dotted ``key`` (None when absent)."""
    return OmegaConf.select(cfg, key, default=None)


def whole_number(cfg: DictConfig, key: str, minimum: int = 1, allowed: tuple[int, ...] = ()) -> int:
    """A whole number >= ``minimum`` (or one of ``allowed``); else one line naming the setting."""
    value = setting(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or (value < minimum and value not in allowed):
        extra = f" (or {', '.join(map(str, allowed))})" if allowed else ""
        raise LungsegError(f"{key}={value}: must be a whole number >= {minimum}{extra}")
    return value


def positive_number(cfg: DictConfig, key: str) -> float:
    """A number > 0; else one line naming the setting."""
    value = setting(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise LungsegError(f"{key}={value}: must be a number > 0")
    return float(value)


def non_negative_number(cfg: DictConfig, key: str) -> float:
    """A number >= 0; else one line naming the setting."""
    value = setting(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise LungsegError(f"{key}={value}: must be a number >= 0")
    return float(value)


def image_size(cfg: DictConfig, key: str, divisor: int) -> int:
    """An input size the network can take: a whole multiple of ``divisor`` (2**depth)."""
    value = whole_number(cfg, key, minimum=divisor)
    if value % divisor:
        lower = value // divisor * divisor
        raise LungsegError(f"{key}={value}: must be a multiple of {divisor} (2**model.depth) for this network; "
                           f"e.g. {lower or divisor} or {lower + divisor}")
    return value


def writable_dir(path: str | Path, key: str) -> Path:
    """Create folder ``path`` if needed and prove it takes files; else one line naming ``key``."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise LungsegError(f"{key}={path}: is a file, not a folder; choose a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".lungseg-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise LungsegError(f"{key}={path}: cannot write there ({err.strerror or err}); choose a writable folder") \
            from None
    return path


def check_train(cfg: DictConfig) -> None:
    """The training settings that would otherwise fail late or with a traceback."""
    whole_number(cfg, "trainer.max_epochs", allowed=(-1,))
    whole_number(cfg, "data.batch_size")
    non_negative_number(cfg, "data.cache_mb")
    whole_number(cfg, "seed", minimum=0)
    positive_number(cfg, "optimizer.lr")
    image_size(cfg, "data.image_size", 2 ** whole_number(cfg, "model.depth"))
    writable_dir(cfg.paths.output_dir, "paths.output_dir")
