"""One-line checks of the settings a user types, run before any work: numbers, sizes, writable
folders."""

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
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (value < minimum and value not in allowed)
    ):
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


def fraction(
    value: Any, key: str, open_interval: bool = True, optional: bool = False
) -> float | None:
    """A number between 0 and 1 (excluding both ends with ``open_interval``: a probability threshold
    of 0 or 1 makes every mask all lung or empty); None allowed when ``optional``. Else one line
    naming ``key``."""
    if value is None and optional:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and (0 < value < 1 if open_interval else 0 <= value <= 1)
    if not ok:
        bounds = "strictly between 0 and 1" if open_interval else "between 0 and 1"
        raise LungsegError(f"{key}={value}: must be a number {bounds}")
    return float(value)


def optional_whole_number(
    cfg: DictConfig, key: str, minimum: int = 1, allowed: tuple[Any, ...] = (None,)
) -> Any:
    """A whole number >= ``minimum``, or one of ``allowed`` (null, "auto")."""
    value = setting(cfg, key)
    if value in allowed:
        return value
    return whole_number(cfg, key, minimum)


def check_inference(cfg: DictConfig) -> None:
    """The settings predict, evaluate and robustness share, before a model is loaded."""
    fraction(setting(cfg, "threshold"), "threshold", optional=True)
    review_below = setting(cfg, "quality.review_below")
    fraction(review_below, "quality.review_below", open_interval=False, optional=True)
    limits = setting(cfg, "plausibility") or {}
    low, high = (
        fraction(limits.get(k), f"plausibility.{k}", open_interval=False, optional=True)
        for k in ("min_lung_fraction", "max_lung_fraction")
    )
    if low is not None and high is not None and low >= high:
        raise LungsegError(
            f"plausibility.min_lung_fraction={low} must be below "
            f"plausibility.max_lung_fraction={high}"
        )
    if "max_components" in limits:
        whole_number(cfg, "plausibility.max_components")
    optional_whole_number(cfg, "threads")


def check_predict(cfg: DictConfig) -> None:
    """lungseg.predict's settings, before any work."""
    check_inference(cfg)
    whole_number(cfg, "batch_size")
    optional_whole_number(cfg, "num_workers", allowed=("auto",))
    optional_whole_number(cfg, "overlay_size", minimum=16)


def check_evaluate(cfg: DictConfig) -> None:
    """lungseg.evaluate's settings, before any work."""
    check_inference(cfg)
    whole_number(cfg, "data.batch_size")
    whole_number(cfg, "auroc_bins", minimum=2)
    whole_number(cfg, "calibration_bins")
    whole_number(cfg, "n_samples", minimum=0)
    whole_number(cfg, "n_worst", minimum=0)
    spacing = setting(cfg, "pixel_spacing_mm")
    values = (
        list(spacing)
        if isinstance(spacing, (list, tuple)) or OmegaConf.is_list(spacing)
        else [spacing]
    )
    if spacing is not None and (
        len(values) not in (1, 2)
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values
        )
    ):
        raise LungsegError(
            f"pixel_spacing_mm={spacing}: must be a number > 0 or [row, col] of two (mm per pixel)"
        )


def check_robustness(cfg: DictConfig) -> None:
    """lungseg.robustness' settings, before any work."""
    check_inference(cfg)
    whole_number(cfg, "seed", minimum=0)


def image_size(cfg: DictConfig, key: str, divisor: int) -> int:
    """An input size the network can take: a whole multiple of ``divisor`` (2**depth)."""
    value = whole_number(cfg, key, minimum=divisor)
    if value % divisor:
        lower = value // divisor * divisor
        raise LungsegError(
            f"{key}={value}: must be a multiple of {divisor} (2**model.depth) for this network; "
            f"e.g. {lower or divisor} or {lower + divisor}"
        )
    return value


def writable_dir(path: str | Path, key: str) -> Path:
    """Create folder ``path`` if needed and prove it takes files; else one line naming ``key``."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise LungsegError(
            f"{key}={path}: is a file, not a folder; choose a folder (it is created if missing)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".lungseg-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise LungsegError(
            f"{key}={path}: cannot write there ({err.strerror or err}); choose a writable folder"
        ) from None
    return path


def refuse_existing(path: Path, key: str, overwrite: bool) -> None:
    """Refuse to replace an earlier output unless ``overwrite=true``; one line naming the
    setting."""
    if path.exists() and not overwrite:
        raise LungsegError(
            f"{key}={path}: already exists; pass overwrite=true to replace it, or "
            f"choose another {key}="
        )


def check_train(cfg: DictConfig) -> None:
    """The training settings that would otherwise fail late or with a traceback."""
    whole_number(cfg, "trainer.max_epochs", allowed=(-1,))
    whole_number(cfg, "data.batch_size")
    non_negative_number(cfg, "data.cache_mb")
    whole_number(cfg, "seed", minimum=0)
    positive_number(cfg, "optimizer.lr")
    image_size(cfg, "data.image_size", 2 ** whole_number(cfg, "model.depth"))
    writable_dir(cfg.paths.output_dir, "paths.output_dir")
