"""The jobs of a sweep: one row per job folder (its run name, overrides, status, metrics and the
hparams its TensorBoard session records), and the knobs the sweep varied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lungseg.errors import LungsegError
from lungseg.runs import RESULT_FILE, TENSORBOARD, event_folders
from lungseg.training.records import run_status
from lungseg.training.run_names import job_run_name, read_sweep_file, split_override, varying_keys

METRICS = ("best/val_dice", "best/val_loss", "test/dice", "test/iou", "test/loss")


def job_overrides(job: Path) -> dict[str, str]:
    """``key -> value`` of the job's command-line overrides (``+``/``~`` prefixes dropped)."""
    items = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    return dict(split_override(item) for item in items)


def job_session(job: Path) -> tuple[str, dict[str, Any]] | None:
    """The run name and hparams a job's TensorBoard events record (its newest ``tensorboard/<name>``
    folder)."""
    from lungseg.training.tensorboard_hparams import read_session

    for folder in event_folders(job / TENSORBOARD):
        session = read_session(folder)
        if session is not None:
            return session
    return None


def read_job(job: Path, varying: list[str] | None = None) -> dict[str, Any]:
    """One row: job, run name, overrides, status, error, metrics, value returned to the sweeper,
    epochs, wall time, and the hparams its TensorBoard session records."""
    result_file = job / RESULT_FILE
    try:
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    except json.JSONDecodeError:
        result = {"status": "killed", "error": f"{result_file} is not valid JSON"}
    metrics = result.get("metrics") or {}
    overrides = job_overrides(job)
    session = job_session(job)
    if session is not None:
        run, hparams = session
    else:
        items = [f"{k}={v}" for k, v in overrides.items()]
        run, hparams = (
            job_run_name(varying or varying_keys(job.parent, items, None), items) or job.name,
            {},
        )
    return {
        "job": job.name,
        "run": run,
        "overrides": overrides,
        "status": run_status(result),
        "error": result.get("error", ""),
        "epochs": result.get("epochs"),
        "wall_s": result.get("wall_s"),
        "value": result.get("value"),
        "hparams": hparams,
        **{name: metrics.get(name) for name in METRICS},
        "best/val_dice_per_image": metrics.get("best/val_dice_per_image"),
    }


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows of every job folder (one with ``.hydra/overrides.yaml``) under ``sweep_dir``, in job
    order."""
    if not sweep_dir.is_dir():
        raise LungsegError(
            f"{sweep_dir}: no such folder; pass a multirun folder, e.g. "
            "outputs/multirun/<date>/<time>"
        )
    jobs = [d for d in sweep_dir.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()]
    if not jobs:
        raise LungsegError(
            f"{sweep_dir}: no job folders (<job>/.hydra/overrides.yaml) inside; "
            "pass the folder a --multirun wrote, e.g. outputs/multirun/<date>/<time>"
        )
    jobs.sort(key=lambda d: (0, int(d.name), "") if d.name.isdigit() else (1, 0, d.name))
    varying = recorded_varying(sweep_dir)
    return [read_job(d, varying) for d in jobs]


def recorded_varying(sweep_dir: Path) -> list[str]:
    """The keys the sweep's definition varies (``sweep.yaml`` or Hydra's ``multirun.yaml``), [] if
    unrecorded."""
    if read_sweep_file(sweep_dir).get("varying") or (sweep_dir / "multirun.yaml").is_file():
        return varying_keys(sweep_dir, [], None)
    return []


def swept_knobs(rows: list[dict[str, Any]], order: list[str] | None = None) -> list[str]:
    """The overrides whose values differ between jobs: in the sweep's own ``order`` first, then by
    name."""
    keys = sorted(
        {k for row in rows for k in row["overrides"]},
        key=lambda k: (
            k not in (order or []),
            (order or []).index(k) if k in (order or []) else 0,
            k,
        ),
    )
    return [k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1]
