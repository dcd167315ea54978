"""Sweep summary: every job of a multirun with its knobs, best val Dice/loss, test metrics, epochs, wall time
and status; the best job; ``summary.csv``, ``summary.md`` and ``summary.png`` (val Dice against each knob).

    python -m lungseg.sweep_summary outputs/multirun/<date>/<time>

Written at the end of every ``--multirun`` too (the Hydra callback in ``conf/hydra/default.yaml``). Each job's
``result.json`` (written by ``lungseg.train``) holds its numbers; a job whose file still says ``running`` and
whose process is gone was killed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lungseg.atomic import write_text
from lungseg.errors import LungsegError, exit_on_user_error
from lungseg.resolvers import monitor_mode

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
METRICS = ("best/val_dice", "best/val_loss", "test/dice", "test/iou", "test/loss")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _status(result: dict[str, Any]) -> str:
    """finished / failed, or for a job that never wrote its end: running (its process lives here) or killed."""
    status = result.get("status", "killed")
    if status != "running":
        return status
    here = result.get("host") == socket.gethostname()
    return "running" if here and _alive(int(result.get("pid", -1))) else "killed"


def _overrides(job: Path) -> dict[str, str]:
    """``key -> value`` of the job's command-line overrides (``+``/``~`` prefixes dropped)."""
    items = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    pairs = (str(item).partition("=") for item in items)
    return {key.lstrip("+~"): value for key, _, value in pairs}


def read_job(job: Path) -> dict[str, Any]:
    """One row: job name, overrides, status, error, metrics, epochs, wall time."""
    result_file = job / RESULT_FILE
    try:
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    except json.JSONDecodeError:
        result = {"status": "killed", "error": f"{result_file} is not valid JSON"}
    metrics = result.get("metrics") or {}
    return {"job": job.name, "overrides": _overrides(job), "status": _status(result),
            "error": result.get("error", ""), "epochs": result.get("epochs"), "wall_s": result.get("wall_s"),
            **{name: metrics.get(name) for name in METRICS}}


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows of every job folder (one with ``.hydra/overrides.yaml``) under ``sweep_dir``, in job order."""
    if not sweep_dir.is_dir():
        raise LungsegError(f"{sweep_dir}: no such folder; pass a multirun folder, e.g. outputs/multirun/<date>/<time>")
    jobs = [d for d in sweep_dir.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()]
    if not jobs:
        raise LungsegError(f"{sweep_dir}: no job folders (<job>/.hydra/overrides.yaml) inside; "
                           "pass the folder a --multirun wrote, e.g. outputs/multirun/<date>/<time>")
    jobs.sort(key=lambda d: (0, int(d.name), "") if d.name.isdigit() else (1, 0, d.name))
    return [read_job(d) for d in jobs]


def swept_knobs(rows: list[dict[str, Any]]) -> list[str]:
    """The overrides whose values differ between jobs."""
    keys = sorted({k for row in rows for k in row["overrides"]})
    return [k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def best_row(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The finished job with the best ``metric`` (lowest for a loss, else highest)."""
    scored = [r for r in rows if r["status"] == "finished" and _number(r.get(metric)) is not None]
    if not scored:
        return None
    sign = -1.0 if monitor_mode(metric) == "min" else 1.0
    return max(scored, key=lambda r: sign * float(r[metric]))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def table(rows: list[dict[str, Any]], knobs: list[str]) -> list[list[str]]:
    """Header and one line per job: job, knobs, metrics, epochs, wall time, status, error."""
    header = ["job", *knobs, *METRICS, "epochs", "wall_s", "status", "error"]
    lines = [[r["job"], *(r["overrides"].get(k, "") for k in knobs), *(_cell(r.get(m)) for m in METRICS),
              _cell(r["epochs"]), "" if r["wall_s"] is None else f"{float(r['wall_s']):.1f}", r["status"],
              str(r["error"]).splitlines()[0][:80] if r["error"] else ""] for r in rows]
    return [header, *lines]


def plot(rows: list[dict[str, Any]], knobs: list[str], metric: str, path: Path) -> None:
    """One panel per swept knob: ``metric`` of every finished job against the knob's value; the best in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if _number(r.get(metric)) is not None]
    knobs = knobs or ["job"]
    fig, axes = plt.subplots(1, len(knobs), figsize=(4 * len(knobs), 3.5), squeeze=False)
    best = best_row(rows, metric)
    for ax, knob in zip(axes[0], knobs, strict=True):
        raw = [r["job"] if knob == "job" else r["overrides"].get(knob, "") for r in done]
        numbers = [_number(v) for v in raw]
        numeric = all(n is not None for n in numbers)
        labels = sorted(set(raw))
        xs = numbers if numeric else [labels.index(v) for v in raw]
        ys = [float(r[metric]) for r in done]
        ax.scatter(xs, ys, color=["red" if r is best else "tab:blue" for r in done],
                   zorder=3)
        for x, y, r in zip(xs, ys, done, strict=True):
            if r is best:  # on top of any job with the same value
                ax.scatter([x], [y], color="red", zorder=4, label=f"best: job {r['job']}")
                ax.legend(loc="best", fontsize=8)
        if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_xlabel(knob)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(sweep_dir: str | Path, metric: str = "best/val_dice") -> dict[str, Any]:
    """Write ``summary.csv``, ``summary.md`` and ``summary.png`` into ``sweep_dir``; return the rows and best job."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    knobs = swept_knobs(rows)
    lines = table(rows, knobs)
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*lines[0][:-1], "error", "overrides"])
        for row, line in zip(rows, lines[1:], strict=True):
            overrides = " ".join(f"{k}={v}" for k, v in row["overrides"].items())
            writer.writerow([*line[:-1], row["error"], overrides])
    best = best_row(rows, metric)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "killed", "running")}
    verdict = (f"best job: {best['job']} ({metric} {_cell(best[metric])}) "
               + " ".join(f"{k}={best['overrides'].get(k)}" for k in knobs)) if best else "best job: none finished"
    widths = [max(len(str(c)) for c in col) for col in zip(*lines, strict=True)]
    text = "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)
    status = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    report = f"sweep {sweep_dir}: {len(rows)} jobs ({status})\n{text}\n{verdict}"
    md = ["| " + " | ".join(lines[0]) + " |", "|" + " --- |" * len(lines[0])]
    md += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in lines[1:]]
    (sweep_dir / "summary.md").write_text(f"# Sweep {sweep_dir.name}\n\n" + "\n".join(md) + f"\n\n{verdict}\n")
    plot(rows, knobs, metric, sweep_dir / "summary.png")
    return {"rows": rows, "knobs": knobs, "best": best, "report": report}


class SweepSummary(Callback):
    """Hydra callback: print and write the sweep summary when a ``--multirun`` ends."""

    def __init__(self, metric: str | None = "best/val_dice") -> None:
        self.metric = metric or "best/val_dice"

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            summary = summarize(sweep_dir, self.metric)
        except Exception as err:  # a summary must never turn a finished sweep into a failure
            log.warning("no sweep summary for %s: %s", sweep_dir, err)
            return
        print(summary["report"] + f"\nwritten: {sweep_dir}/summary.csv, summary.md, summary.png", flush=True)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m lungseg.sweep_summary <multirun folder> [--metric best/val_dice]``."""
    parser = argparse.ArgumentParser(prog="python -m lungseg.sweep_summary", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="the folder a --multirun wrote, e.g. outputs/multirun/<date>/<time>")
    parser.add_argument("--metric", default="best/val_dice", help="what 'best' means (a loss is minimised)")
    args = parser.parse_args(argv)
    summary = summarize(args.sweep_dir, args.metric)
    print(summary["report"])
    print(f"written: {Path(args.sweep_dir) / 'summary.csv'}, summary.md, summary.png")


if __name__ == "__main__":
    main(sys.argv[1:])
