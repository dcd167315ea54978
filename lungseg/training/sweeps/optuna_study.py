"""An Optuna sweep's history and parameter importances, from its storage or rebuilt from the
jobs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from lungseg.markdown import table
from lungseg.training.run_names import read_sweep_file
from lungseg.training.sweeps.plots import thin_tick_labels
from lungseg.training.sweeps.results import cell, finite_number

log = logging.getLogger(__name__)


def _hydra_cfg(rows: list[dict[str, Any]], sweep_dir: Path) -> dict[str, Any]:
    """The ``hydra`` node a job of the sweep recorded (``<job>/.hydra/hydra.yaml``), unresolved; {}
    if none."""
    for row in rows:
        try:
            return (
                yaml.safe_load((sweep_dir / row["job"] / ".hydra" / "hydra.yaml").read_text()) or {}
            )["hydra"]
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
        log.info(
            "optuna storage %s not readable (%s); rebuilding the study from the jobs", storage, err
        )
        return None


def rebuild_study(rows: list[dict[str, Any]], space: dict[str, Any], direction: str) -> Any:
    """An in-memory Optuna study with one trial per job: its searched params (from its overrides)
    and the value it returned (result.json ``value``); failed and killed jobs as failed trials."""
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
                number = finite_number(raw)
                value = (
                    None
                    if number is None
                    else (int(number) if "Int" in type(dist).__name__ else number)
                )
            if value is not None:
                params[key], dists[key] = value, dist
        value = finite_number(row.get("value"))
        finished = row["status"] == "finished" and value is not None
        state = optuna.trial.TrialState.COMPLETE if finished else optuna.trial.TrialState.FAIL
        try:
            study.add_trial(
                optuna.trial.create_trial(
                    params=params,
                    distributions=dists,
                    state=state,
                    value=value if finished else None,
                )
            )
        # a value outside its distribution (the search space changed): leave it out
        except ValueError as err:
            log.warning("job %s left out of the optuna study: %s", row["job"], err)
    return study


def optuna_summary(rows: list[dict[str, Any]], sweep_dir: Path) -> dict[str, Any] | None:
    """For an Optuna sweep: its history (trial, value, best so far) and parameter importances
    (fANOVA, else mean decrease in impurity; optuna 2.x computes both with scikit-learn), from
    ``hydra.sweeper.storage`` or rebuilt from the jobs; None for any other sweep."""
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
    evaluators = {
        "fANOVA": optuna.importance.FanovaImportanceEvaluator,
        "mean decrease in impurity": optuna.importance.MeanDecreaseImpurityImportanceEvaluator,
    }
    # optuna 2.x's fANOVA fails on scikit-learn >= 1.3's trees
    for method, evaluator in evaluators.items():
        try:
            importances = dict(
                optuna.importance.get_param_importances(study, evaluator=evaluator(seed=0))
            )
            note, used = "", method
            break
        except ImportError:
            note = "parameter importances need scikit-learn (pip install scikit-learn)"
            break
        # fewer than two finished trials, nothing searched, fANOVA
        except (RuntimeError, ValueError) as err:
            note = f"no parameter importances: {err}"
    return {
        "direction": direction,
        "history": history,
        "importances": importances,
        "note": note,
        "method": used,
        "failed": len(study.trials) - len(complete),
    }


def optuna_figure(report: dict[str, Any], metric: str, path: Path) -> None:
    """Optimisation history (each trial's value, the best so far) and parameter importances, side by
    side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    history = report["history"]
    left.scatter(
        [h["trial"] for h in history], [h["value"] for h in history], label="trial", zorder=3
    )
    left.step(
        [h["trial"] for h in history],
        [h["best"] for h in history],
        where="post",
        color="red",
        label="best so far",
    )
    left.set(xlabel="trial", ylabel=metric, title="Optimisation history")
    left.xaxis.get_major_locator().set_params(integer=True)
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    names = list(report["importances"])[::-1]
    right.barh(names, [report["importances"][n] for n in names])
    right.set(xlabel=f"importance ({report['method'] or 'none'})", title="Parameter importances")
    if not names:
        right.text(
            0.5, 0.5, report["note"] or "none", ha="center", va="center", wrap=True, fontsize=8
        )
    fig.tight_layout()
    thin_tick_labels(fig)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def optuna_markdown(report: dict[str, Any], metric: str) -> str:
    """summary.md's Optuna section: the history table and the parameter importances."""
    history = table(
        [
            ("trial", metric, "best so far"),
            *((h["trial"], cell(h["value"]), cell(h["best"])) for h in report["history"]),
        ]
    )
    importances = table(
        [
            ("parameter", "importance"),
            *((name, f"{value:.3f}") for name, value in report["importances"].items()),
        ]
    )
    lines = [
        "## Optuna",
        "",
        f"Objective: {metric} ({report['direction']}); {len(report['history'])} finished "
        f"trials, {report['failed']} failed.",
        "",
        "![optimisation history and importances](optuna.png)",
        "",
        history,
        "",
        f"Parameter importances (Optuna, {report['method'] or 'none'}):",
        "",
        importances,
    ]
    return "\n".join(lines + ([f"\n{report['note']}"] if report["note"] else [])) + "\n"
