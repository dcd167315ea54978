"""Safe resume: ``ckpt_path=`` continues a run only under the config its checkpoint was trained
with."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lungseg.artifacts.description import DESCRIPTION_KEY
from lungseg.errors import LungsegError

# What defines the training a checkpoint is part of: changing any of it mid-run is refused.
CHECKED = (
    "seed",
    "data",
    "model",
    "loss",
    "optimizer",
    "scheduler",
    "module",
    "trainer.precision",
    "trainer.accumulate_grad_batches",
    "trainer.gradient_clip_val",
    "trainer.check_val_every_n_epoch",
    "callbacks.model_checkpoint.monitor",
    "callbacks.early_stopping",
    "callbacks.precise_batchnorm",
)
# Not compared: how the same training runs here (free to change), and the module's copies of the
# groups above.
IGNORED = (
    "data.num_workers",
    "data.cache",
    "data.cache_mb",
    "data.pin_memory",
    "module.compile",
    "module.channels_last",
    "optimizer.fused",
    "optimizer.foreach",
    "module.net",
    "module.loss",
    "module.optimizer",
    "module.scheduler",
)
MAX_SHOWN = 12
# Class paths that moved when lungseg 0.3 grouped the package by role: a checkpoint written before
# records the old names of the same classes, which must not read as a changed recipe.
MOVED = {
    "lungseg.module.": "lungseg.training.module.",
    "lungseg.callbacks.": "lungseg.training.callbacks.",
    "lungseg.sweep_summary.": "lungseg.training.sweeps.",
}


def current_name(value: Any) -> Any:
    """A recorded value with a moved class path (``MOVED``) renamed to where the class lives now."""
    if isinstance(value, str):
        for old, new in MOVED.items():
            if value.startswith(old):
                return new + value[len(old) :]
    return value


def flatten_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are compared whole."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
        return out if out or not prefix else {prefix: {}}
    return {prefix: node}


def _checked(key: str) -> bool:
    inside = any(key == c or key.startswith(c + ".") for c in CHECKED)
    return inside and not any(key == r or key.startswith(r + ".") for r in IGNORED)


def config_changes(
    recorded: Mapping[str, Any], current: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint value, new value) for every checked setting that differs (absent:
    ``<unset>``)."""
    old, new = (
        {k: current_name(v) for k, v in flatten_config(recorded).items()},
        flatten_config(current),
    )
    keys = sorted(k for k in old.keys() | new.keys() if _checked(k))
    return [
        (k, old.get(k, "<unset>"), new.get(k, "<unset>"))
        for k in keys
        if old.get(k, "<unset>") != new.get(k, "<unset>")
    ]


def check_resume(
    ckpt: Mapping[str, Any], path: str | Path, current: Mapping[str, Any], allow_changes: bool
) -> None:
    """Refuse to resume ``path`` under ``current`` (the resolved run config) when a checked setting
    differs, with a short diff; ``allow_changes`` (``resume.allow_changes=true``) lets an expert
    resume anyway."""
    if allow_changes:
        return
    recorded = (ckpt.get(DESCRIPTION_KEY) or {}).get("config")
    if not recorded:
        raise LungsegError(
            f"ckpt_path={path}: written by an older lungseg, it does not record its run config, so "
            "the resume cannot be checked; pass resume.allow_changes=true to resume it anyway"
        )
    changes = config_changes(recorded, current)
    if changes:
        shown = [
            f"  {k}: {old!r} in the checkpoint, {new!r} now" for k, old, new in changes[:MAX_SHOWN]
        ]
        more = [f"  ... and {len(changes) - MAX_SHOWN} more"] if len(changes) > MAX_SHOWN else []
        raise LungsegError(
            f"ckpt_path={path}: refused to resume under a different config ({len(changes)} "
            "setting(s) differ):\n"
            + "\n".join(shown + more)
            + "\nResume with the checkpoint's settings (its +experiment= and overrides; "
            "trainer.max_epochs may be raised), start a new run without ckpt_path=, or pass "
            "resume.allow_changes=true to resume anyway"
        )
