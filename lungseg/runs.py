"""The layout of a training run's folder: ``checkpoints/<name>.ckpt``, ``tensorboard/<run name>/``
(one per name the run was logged under, a resume may add one) and ``result.json`` (the run's
record)."""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS, TENSORBOARD, RESULT_FILE = "checkpoints", "tensorboard", "result.json"


def checkpoint_run(ckpt_path: str | Path | None) -> Path | None:
    """The training run a checkpoint belongs to: ``<run>`` of ``<run>/checkpoints/<name>.ckpt``,
    else None."""
    if ckpt_path and Path(ckpt_path).parent.name == CHECKPOINTS:
        return Path(ckpt_path).parent.parent
    return None


def event_folders(tensorboard_dir: str | Path) -> list[Path]:
    """The named TensorBoard runs (folders holding event files) under a run's ``tensorboard/``,
    newest first."""
    named = [
        d
        for d in Path(tensorboard_dir).glob("*")
        if d.is_dir() and any(d.glob("events.out.tfevents.*"))
    ]
    return sorted(named, key=lambda d: d.stat().st_mtime, reverse=True)


def events_dir(tensorboard_dir: str | Path) -> Path:
    """Where a run's training events are: the newest named run, or ``tensorboard/`` itself for runs
    written before names."""
    named = event_folders(tensorboard_dir)
    return named[0] if named else Path(tensorboard_dir)
