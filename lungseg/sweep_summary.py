"""Sweep summary: every job of a multirun with its readable name, knobs, best val Dice/loss, test metrics, epochs,
wall time and status; the best job; ``summary.csv``, ``summary.md`` and ``summary.png`` (val Dice against each
knob); for an Optuna sweep also the optimisation history and parameter importances (``optuna.png``); and the
TensorBoard HParams experiment of the sweep (its varied knobs first; ``lungseg.training.tensorboard_hparams``).

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
from lungseg.training.run_names import job_run_name, read_sweep_file, varying_keys, write_sweep_file

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


def _session(job: Path) -> tuple[str, dict[str, Any]] | None:
    """The run name and hparams a job's TensorBoard events record (its newest ``tensorboard/<name>`` folder)."""
    from lungseg.training.tensorboard_hparams import read_session

    folders = [d for d in (job / "tensorboard").glob("*") if d.is_dir() and any(d.glob("events.out.tfevents.*"))]
    for folder in sorted(folders, key=lambda d: d.stat().st_mtime, reverse=True):
        session = read_session(folder)
        if session is not None:
            return session
    return None


def read_job(job: Path, varying: list[str] | None = None) -> dict[str, Any]:
    """One row: job, run name, overrides, status, error, metrics, value returned to the sweeper, epochs, wall
    time, and the hparams its TensorBoard session records."""
    result_file = job / RESULT_FILE
    try:
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    except json.JSONDecodeError:
        result = {"status": "killed", "error": f"{result_file} is not valid JSON"}
    metrics = result.get("metrics") or {}
    overrides = _overrides(job)
    session = _session(job)
    if session is not None:
        run, hparams = session
    else:
        items = [f"{k}={v}" for k, v in overrides.items()]
        run, hparams = job_run_name(varying or varying_keys(job.parent, items, None), items) or job.name, {}
    return {"job": job.name, "run": run, "overrides": overrides, "status": _status(result),
            "error": result.get("error", ""), "epochs": result.get("epochs"), "wall_s": result.get("wall_s"),
            "value": result.get("value"), "hparams": hparams, **{name: metrics.get(name) for name in METRICS},
            "best/val_dice_per_image": metrics.get("best/val_dice_per_image")}


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows of every job folder (one with ``.hydra/overrides.yaml``) under ``sweep_dir``, in job order."""
    if not sweep_dir.is_dir():
        raise LungsegError(f"{sweep_dir}: no such folder; pass a multirun folder, e.g. outputs/multirun/<date>/<time>")
    jobs = [d for d in sweep_dir.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()]
    if not jobs:
        raise LungsegError(f"{sweep_dir}: no job folders (<job>/.hydra/overrides.yaml) inside; "
                           "pass the folder a --multirun wrote, e.g. outputs/multirun/<date>/<time>")
    jobs.sort(key=lambda d: (0, int(d.name), "") if d.name.isdigit() else (1, 0, d.name))
    varying = _recorded_varying(sweep_dir)
    return [read_job(d, varying) for d in jobs]


def _recorded_varying(sweep_dir: Path) -> list[str]:
    """The keys the sweep's definition varies (``sweep.yaml`` or Hydra's ``multirun.yaml``), [] if unrecorded."""
    if read_sweep_file(sweep_dir).get("varying") or (sweep_dir / "multirun.yaml").is_file():
        return varying_keys(sweep_dir, [], None)
    return []


def swept_knobs(rows: list[dict[str, Any]], order: list[str] | None = None) -> list[str]:
    """The overrides whose values differ between jobs: in the sweep's own ``order`` first, then by name."""
    keys = sorted({k for row in rows for k in row["overrides"]}, key=lambda k: (k not in (order or []),
                                                                                (order or []).index(k)
                                                                                if k in (order or []) else 0, k))
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
    header = ["job", "run", *knobs, *METRICS, "epochs", "wall_s", "status", "error"]
    lines = [[r["job"], r["run"], *(r["overrides"].get(k, "") for k in knobs), *(_cell(r.get(m)) for m in METRICS),
              _cell(r["epochs"]), "" if r["wall_s"] is None else f"{float(r['wall_s']):.1f}", r["status"],
              str(r["error"]).splitlines()[0][:80] if r["error"] else ""] for r in rows]
    return [header, *lines]


MAX_LABEL = 14  # characters of a categorical tick label


def _label(value: Any) -> str:
    number = _number(value)
    text = f"{number:g}" if number is not None else str(value)
    return text if len(text) <= MAX_LABEL else text[:MAX_LABEL - 1] + "…"


def knob_axis(ax: Any, raw: list[Any]) -> list[float]:
    """Set ``ax``'s x axis for a knob's values and return each value's x: log for numbers spanning a decade or
    more, categorical positions for strings and for a few (<= 6) distinct numbers, linear otherwise."""
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

    numbers = [_number(v) for v in raw]
    numeric = bool(raw) and all(n is not None for n in numbers)
    distinct = sorted(set(raw), key=lambda v: (_number(v) is None, _number(v) or 0.0, str(v)))
    if numeric:
        low, high = min(numbers), max(numbers)
        if low > 0 and high / low >= 10:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(numticks=6))
            ax.xaxis.set_minor_formatter(NullFormatter())
            return numbers
        if len(distinct) > 6:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            return numbers
    index = {v: i for i, v in enumerate(distinct)}
    ax.set_xticks(range(len(distinct)), [_label(v) for v in distinct], rotation=0 if numeric else 30,
                  ha="center" if numeric else "right")
    ax.set_xlim(-0.5, len(distinct) - 0.5)
    seen: dict[Any, int] = {}
    xs = []
    for v in raw:  # jobs sharing a value side by side, not on top of each other
        k = seen[v] = seen.get(v, -1) + 1
        n = raw.count(v)
        xs.append(index[v] + (0.3 * (k / (n - 1) - 0.5) if n > 1 else 0.0))
    return xs


def thin_tick_labels(fig: Any) -> None:
    """Hide each x tick label that would overlap the one kept before it (after layout), on every axes."""
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        kept = None
        for label in ax.get_xticklabels():
            if not label.get_text() or not label.get_visible():
                continue
            box = label.get_window_extent(renderer).expanded(1.15, 1.0)
            if kept is not None and box.overlaps(kept):
                label.set_visible(False)
            else:
                kept = box


def figure(rows: list[dict[str, Any]], knobs: list[str], metric: str) -> Any:
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
        xs = knob_axis(ax, raw)
        ys = [float(r[metric]) for r in done]
        ax.scatter(xs, ys, color=["red" if r is best else "tab:blue" for r in done], zorder=3)
        for x, y, r in zip(xs, ys, done, strict=True):
            if r is best:  # on top of any job with the same value
                ax.scatter([x], [y], color="red", zorder=4, label=f"best: {r['run']}")
                ax.legend(loc="best", fontsize=7)
        ax.set_xlabel(knob)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    thin_tick_labels(fig)
    return fig


def plot(rows: list[dict[str, Any]], knobs: list[str], metric: str, path: Path) -> None:
    """Write :func:`figure` to ``path``."""
    import matplotlib.pyplot as plt

    fig = figure(rows, knobs, metric)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _hydra_cfg(rows: list[dict[str, Any]], sweep_dir: Path) -> dict[str, Any]:
    """The ``hydra`` node a job of the sweep recorded (``<job>/.hydra/hydra.yaml``), unresolved; {} if none."""
    for row in rows:
        try:
            return (yaml.safe_load((sweep_dir / row["job"] / ".hydra" / "hydra.yaml").read_text()) or {})["hydra"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            continue
    return {}


def _load_study(sweeper: dict[str, Any]) -> Any:
    """The study kept in ``hydra.sweeper.storage``, or None (no storage, or it cannot be opened)."""
    import optuna

    storage = sweeper.get("storage")
    if not storage or "${" in str(storage):
        return None
    try:
        return optuna.load_study(study_name=sweeper.get("study_name"), storage=storage)
    except Exception as err:  # a moved or deleted database: rebuild from the jobs instead
        log.info("optuna storage %s not readable (%s); rebuilding the study from the jobs", storage, err)
        return None


def rebuild_study(rows: list[dict[str, Any]], space: dict[str, Any], direction: str) -> Any:
    """An in-memory Optuna study with one trial per job: its searched params (from its overrides) and the value
    it returned (result.json ``value``); failed and killed jobs as failed trials."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    study = optuna.create_study(direction=direction)
    for row in rows:
        params, dists = {}, {}
        for key, dist in space.items():
            raw = row["overrides"].get(key.lstrip("+~"))
            if raw is None:
                continue
            if isinstance(dist, CategoricalDistribution):
                value = next((c for c in dist.choices if str(c) == raw), None)
            else:
                number = _number(raw)
                value = None if number is None else (int(number) if "Int" in type(dist).__name__ else number)
            if value is not None:
                params[key], dists[key] = value, dist
        value = _number(row.get("value"))
        finished = row["status"] == "finished" and value is not None
        state = optuna.trial.TrialState.COMPLETE if finished else optuna.trial.TrialState.FAIL
        try:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, state=state,
                                                      value=value if finished else None))
        except ValueError as err:  # a value outside its distribution (the search space changed): leave it out
            log.warning("job %s left out of the optuna study: %s", row["job"], err)
    return study


def optuna_summary(rows: list[dict[str, Any]], sweep_dir: Path) -> dict[str, Any] | None:
    """For an Optuna sweep: its history (trial, value, best so far) and parameter importances (fANOVA, else mean
    decrease in impurity; optuna 2.x computes both with scikit-learn), from ``hydra.sweeper.storage`` or rebuilt
    from the jobs; None for any other sweep."""
    sweeper = _hydra_cfg(rows, sweep_dir).get("sweeper") or {}
    if "optuna" not in str(sweeper.get("_target_", "")):
        return None
    import optuna
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = str(sweeper.get("direction") or "minimize")
    study = _load_study(sweeper)
    if study is None:
        searched = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        searched += read_sweep_file(sweep_dir).get("overrides") or []
        space, _ = create_params_from_overrides(searched)
        study = rebuild_study(rows, space, direction)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    history, best = [], None
    sign = 1.0 if direction == "maximize" else -1.0
    for trial in complete:
        best = trial.value if best is None or sign * trial.value > sign * best else best
        history.append({"trial": trial.number, "value": trial.value, "best": best})
    importances, note, used = {}, "", ""
    evaluators = {"fANOVA": optuna.importance.FanovaImportanceEvaluator,
                  "mean decrease in impurity": optuna.importance.MeanDecreaseImpurityImportanceEvaluator}
    for method, evaluator in evaluators.items():  # optuna 2.x's fANOVA fails on scikit-learn >= 1.3's trees
        try:
            importances = dict(optuna.importance.get_param_importances(study, evaluator=evaluator(seed=0)))
            note, used = "", method
            break
        except ImportError:
            note = "parameter importances need scikit-learn (pip install scikit-learn)"
            break
        except (RuntimeError, ValueError) as err:  # fewer than two finished trials, nothing searched, fANOVA
            note = f"no parameter importances: {err}"
    return {"direction": direction, "history": history, "importances": importances, "note": note,
            "method": used, "failed": len(study.trials) - len(complete)}


def optuna_figure(report: dict[str, Any], metric: str, path: Path) -> None:
    """Optimisation history (each trial's value, the best so far) and parameter importances, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    history = report["history"]
    left.scatter([h["trial"] for h in history], [h["value"] for h in history], label="trial", zorder=3)
    left.step([h["trial"] for h in history], [h["best"] for h in history], where="post", color="red",
              label="best so far")
    left.set(xlabel="trial", ylabel=metric, title="Optimisation history")
    left.xaxis.get_major_locator().set_params(integer=True)
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    names = list(report["importances"])[::-1]
    right.barh(names, [report["importances"][n] for n in names])
    right.set(xlabel=f"importance ({report['method'] or 'none'})", title="Parameter importances")
    if not names:
        right.text(0.5, 0.5, report["note"] or "none", ha="center", va="center", wrap=True, fontsize=8)
    fig.tight_layout()
    thin_tick_labels(fig)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _optuna_markdown(report: dict[str, Any], metric: str) -> str:
    lines = ["## Optuna", "", f"Objective: {metric} ({report['direction']}); {len(report['history'])} finished "
             f"trials, {report['failed']} failed.", "", "![optimisation history and importances](optuna.png)", "",
             f"| trial | {metric} | best so far |", "| --- | --- | --- |"]
    lines += [f"| {h['trial']} | {_cell(h['value'])} | {_cell(h['best'])} |" for h in report["history"]]
    lines += ["", f"Parameter importances (Optuna, {report['method'] or 'none'}):", "",
              "| parameter | importance |", "| --- | --- |"]
    lines += [f"| {name} | {value:.3f} |" for name, value in report["importances"].items()]
    return "\n".join(lines + ([f"\n{report['note']}"] if report["note"] else [])) + "\n"


def hparams_experiment(rows: list[dict[str, Any]], sweep_dir: Path, knobs: list[str]) -> Path | None:
    """The sweep's TensorBoard HParams experiment (its varied knobs first), from the sessions its jobs wrote."""
    from lungseg.training.tensorboard_hparams import METRICS as TB_METRICS
    from lungseg.training.tensorboard_hparams import write_sweep_experiment

    sessions = [r["hparams"] for r in rows if r["hparams"]]
    if not sessions:
        return None
    seen = {m for r in rows for m in (*METRICS, "best/val_dice_per_image") if r.get(m) is not None}
    metrics = [tag for tag, _ in TB_METRICS if tag in seen or tag.startswith("run/")]
    varying = [k for k in knobs if any(k in s for s in sessions)]
    return write_sweep_experiment(sweep_dir, sessions, varying, metrics)


def summarize(sweep_dir: str | Path, metric: str = "best/val_dice") -> dict[str, Any]:
    """Write ``summary.csv``, ``summary.md``, ``summary.png`` (and ``optuna.png`` for an Optuna sweep) and the
    TensorBoard HParams experiment into ``sweep_dir``; return the rows, knobs, best job and the printed report."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    knobs = swept_knobs(rows, _recorded_varying(sweep_dir))
    lines = table(rows, knobs)
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*lines[0][:-1], "error", "overrides"])
        for row, line in zip(rows, lines[1:], strict=True):
            overrides = " ".join(f"{k}={v}" for k, v in row["overrides"].items())
            writer.writerow([*line[:-1], row["error"], overrides])
    best = best_row(rows, metric)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "killed", "running")}
    verdict = (f"best job: {best['job']} ({metric} {_cell(best[metric])}) {best['run']}" if best
               else "best job: none finished")
    widths = [max(len(str(c)) for c in col) for col in zip(*lines, strict=True)]
    text = "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)
    status = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    report = f"sweep {sweep_dir}: {len(rows)} jobs ({status})\n{text}\n{verdict}"
    md = ["| " + " | ".join(lines[0]) + " |", "|" + " --- |" * len(lines[0])]
    md += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in lines[1:]]
    markdown = f"# Sweep {sweep_dir.name}\n\n" + "\n".join(md) + f"\n\n{verdict}\n\n![{metric} per knob](summary.png)\n"
    plot(rows, knobs, metric, sweep_dir / "summary.png")
    optuna = optuna_summary(rows, sweep_dir)
    if optuna is not None:
        optuna_figure(optuna, metric, sweep_dir / "optuna.png")
        markdown += "\n" + _optuna_markdown(optuna, metric)
        ranked = ", ".join(f"{k} {v:.2f}" for k, v in optuna["importances"].items()) or optuna["note"]
        report += f"\noptuna: {len(optuna['history'])} finished trials; importances: {ranked}"
    (sweep_dir / "summary.md").write_text(markdown)
    try:
        hparams_experiment(rows, sweep_dir, knobs)
    except Exception as err:  # the table and plots stand without TensorBoard's view
        log.warning("no TensorBoard HParams experiment for %s: %s", sweep_dir, err)
    return {"rows": rows, "knobs": knobs, "best": best, "report": report, "optuna": optuna}


class SweepSummary(Callback):
    """Hydra callback: record the swept keys when a ``--multirun`` starts; print and write its summary at the end."""

    def __init__(self, metric: str | None = "best/val_dice") -> None:
        self.metric = metric or "best/val_dice"

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """``<sweep>/sweep.yaml``: the keys the sweep varies, which name every job (``lungseg.training.run_names``)."""
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            write_sweep_file(sweep_dir, config.hydra.overrides.task, config.hydra.sweeper.get("params"))
        except Exception as err:  # the jobs then name themselves by their own overrides
            log.warning("could not record the swept keys in %s: %s", sweep_dir, err)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            summary = summarize(sweep_dir, self.metric)
        except Exception as err:  # a summary must never turn a finished sweep into a failure
            log.warning("no sweep summary for %s: %s", sweep_dir, err)
            return
        print(summary["report"] + f"\nwritten: {sweep_dir}/summary.csv, summary.md, summary.png\n"
              f"see it: tensorboard --logdir {sweep_dir}  (HParams tab)", flush=True)


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
    print(f"see it: tensorboard --logdir {args.sweep_dir}  (HParams tab)")


if __name__ == "__main__":
    main(sys.argv[1:])
