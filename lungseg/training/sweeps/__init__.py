"""Sweep summary: every job of a multirun with its readable name, knobs, best val Dice/loss, test
metrics, epochs, wall time and status; the best job; ``summary.csv``, ``summary.md`` and
``summary.png`` (the metric against each knob); for an Optuna sweep also its history and parameter
importances (``optuna.png``); and the TensorBoard HParams experiment of the sweep (its varied knobs
first). Written at the end of every ``--multirun`` by the Hydra callback :class:`SweepSummary`
(``conf/hydra/default.yaml``), and by ``python -m lungseg.sweep_summary``. A job whose
``result.json`` still says ``running`` and whose process is gone was killed."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lungseg.atomic import atomic_open, write_text
from lungseg.markdown import table
from lungseg.training.run_names import write_sweep_file
from lungseg.training.sweeps.jobs import METRICS, collect, recorded_varying, swept_knobs
from lungseg.training.sweeps.optuna_study import optuna_figure, optuna_markdown, optuna_summary
from lungseg.training.sweeps.plots import plot
from lungseg.training.sweeps.results import best_row, cell, job_table

log = logging.getLogger(__name__)


def hparams_experiment(
    rows: list[dict[str, Any]], sweep_dir: Path, knobs: list[str]
) -> Path | None:
    """The sweep's TensorBoard HParams experiment (its varied knobs first), from the sessions its
    jobs wrote."""
    from lungseg.training.tensorboard_hparams import HPARAMS_METRICS, write_sweep_experiment

    sessions = [r["hparams"] for r in rows if r["hparams"]]
    if not sessions:
        return None
    seen = {m for r in rows for m in (*METRICS, "best/val_dice_per_image") if r.get(m) is not None}
    metrics = [tag for tag, _ in HPARAMS_METRICS if tag in seen or tag.startswith("run/")]
    varying = [k for k in knobs if any(k in s for s in sessions)]
    return write_sweep_experiment(sweep_dir, sessions, varying, metrics)


def summarize(sweep_dir: str | Path, metric: str = "best/val_dice") -> dict[str, Any]:
    """Write ``summary.csv``, ``summary.md``, ``summary.png`` (and ``optuna.png`` for an Optuna
    sweep) and the TensorBoard HParams experiment into ``sweep_dir``; return the rows, knobs, best
    job and the printed report."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    knobs = swept_knobs(rows, recorded_varying(sweep_dir))
    lines = job_table(rows, knobs)
    with atomic_open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*lines[0][:-1], "error", "overrides"])
        for row, line in zip(rows, lines[1:], strict=True):
            overrides = " ".join(f"{k}={v}" for k, v in row["overrides"].items())
            writer.writerow([*line[:-1], row["error"], overrides])
    best = best_row(rows, metric)
    counts = {
        s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "killed", "running")
    }
    verdict = (
        f"best job: {best['job']} ({metric} {cell(best[metric])}) {best['run']}"
        if best
        else "best job: none finished"
    )
    widths = [max(len(str(c)) for c in col) for col in zip(*lines, strict=True)]
    text = "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
    status = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    report = f"sweep {sweep_dir}: {len(rows)} jobs ({status})\n{text}\n{verdict}"
    figure = f"![{metric} per knob](summary.png)"
    markdown = f"# Sweep {sweep_dir.name}\n\n{table(lines)}\n\n{verdict}\n\n{figure}\n"
    plot(rows, knobs, metric, sweep_dir / "summary.png")
    optuna = optuna_summary(rows, sweep_dir)
    if optuna is not None:
        optuna_figure(optuna, metric, sweep_dir / "optuna.png")
        markdown += "\n" + optuna_markdown(optuna, metric)
        ranked = (
            ", ".join(f"{k} {v:.2f}" for k, v in optuna["importances"].items()) or optuna["note"]
        )
        report += f"\noptuna: {len(optuna['history'])} finished trials; importances: {ranked}"
    write_text(sweep_dir / "summary.md", markdown)
    try:
        hparams_experiment(rows, sweep_dir, knobs)
    except Exception as err:  # the table and plots stand without TensorBoard's view
        log.warning("no TensorBoard HParams experiment for %s: %s", sweep_dir, err)
    return {"rows": rows, "knobs": knobs, "best": best, "report": report, "optuna": optuna}


class SweepSummary(Callback):
    """Hydra callback: record the swept keys when a ``--multirun`` starts; print and write its
    summary at the end."""

    def __init__(self, metric: str | None = "best/val_dice") -> None:
        self.metric = metric or "best/val_dice"

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """``<sweep>/sweep.yaml``: the keys the sweep varies, which name every job
        (``lungseg.training.run_names``)."""
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            write_sweep_file(
                sweep_dir, config.hydra.overrides.task, config.hydra.sweeper.get("params")
            )
        except Exception as err:  # the jobs then name themselves by their own overrides
            log.warning("could not record the swept keys in %s: %s", sweep_dir, err)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            summary = summarize(sweep_dir, self.metric)
        except Exception as err:  # a summary must never turn a finished sweep into a failure
            log.warning("no sweep summary for %s: %s", sweep_dir, err)
            return
        print(
            summary["report"] + f"\nwritten: {sweep_dir}/summary.csv, summary.md, summary.png\n"
            f"see it: tensorboard --logdir {sweep_dir}  (HParams tab)",
            flush=True,
        )
