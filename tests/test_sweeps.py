"""Sweeps: the summary of a multirun folder, a parallel joblib sweep that outlives a failing job,
Optuna."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lungseg.sweep_summary import main as summary_main
from lungseg.training.run_names import (
    job_run_name,
    run_name,
    single_run_name,
    sweep_keys,
    varying_keys,
    write_sweep_file,
)
from lungseg.training.sweeps import summarize
from lungseg.training.sweeps.plots import figure
from tests.helpers import ROOT, TINY


def _job(sweep: Path, name: str, overrides: list[str], result: dict | None) -> None:
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if result is not None:
        (sweep / name / "result.json").write_text(json.dumps(result))


def _finished(dice: float, loss: float) -> dict:
    return {
        "status": "finished",
        "epochs": 3,
        "wall_s": 12.5,
        "metrics": {"best/val_dice": dice, "best/val_loss": loss, "test/dice": dice - 0.01},
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_names_the_best_job_and_every_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep"
    common = ["+experiment=baseline", "data.root=/x"]
    _job(sweep, "0", [*common, "optimizer.lr=0.0001", "model.dropout=0.3"], _finished(0.90, 0.20))
    _job(sweep, "1", [*common, "optimizer.lr=0.001", "model.dropout=0.3"], _finished(0.95, 0.15))
    _job(
        sweep,
        "2",
        [*common, "optimizer.lr=0.0001", "model.dropout=0.5"],
        {"status": "failed", "error": "DataError: no dataset at /x\nmore", "wall_s": 1.0},
    )
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    _job(
        sweep,
        "10",
        [*common, "optimizer.lr=0.001", "model.dropout=0.5"],
        {"status": "running", "host": socket.gethostname(), "pid": int(dead.stdout)},
    )
    _job(sweep, "3", [*common, "optimizer.lr=0.01", "model.dropout=0.5"], None)

    summary = summarize(sweep)
    # data.root and the experiment do not vary
    assert summary["knobs"] == ["model.dropout", "optimizer.lr"]
    assert summary["best"]["job"] == "1"
    assert [r["job"] for r in summary["rows"]] == ["0", "1", "2", "3", "10"]  # numeric job order
    rows = _rows(sweep / "summary.csv")
    assert [r["status"] for r in rows] == ["finished", "finished", "failed", "killed", "killed"]
    assert rows[2]["error"].startswith("DataError: no dataset at /x")
    assert (
        rows[1]["best/val_dice"] == "0.9500"
        and rows[1]["optimizer.lr"] == "0.001"
        and rows[1]["epochs"] == "3"
    )
    assert "optimizer.lr=0.001" in rows[1]["overrides"]
    assert (sweep / "summary.png").stat().st_size > 1000 and "| job |" in (
        sweep / "summary.md"
    ).read_text()

    summary_main([str(sweep), "--metric", "best/val_loss"])
    out = capsys.readouterr().out
    assert "best job: 1 (best/val_loss 0.1500)" in out and "2 finished, 1 failed, 2 killed" in out
    with pytest.raises(SystemExit) as exit_info:
        summary_main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "no such folder" in capsys.readouterr().err


def _multirun(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lungseg.train", "--multirun", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_joblib_sweep_goes_on_past_a_failing_job_and_summarises(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    missing = tmp_path / "missing"
    proc = _multirun(
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"data.root={tiny_dataset},{missing}",
        *TINY,
        "trainer.max_epochs=1",
        "test=false",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(sweep / "summary.csv")
    assert [r["status"] for r in rows] == ["finished", "failed"]
    assert "no dataset at" in rows[1]["error"]
    assert "best job: 0" in proc.stdout
    assert json.loads((sweep / "1" / "result.json").read_text())["status"] == "failed"
    job0 = json.loads((sweep / "0" / "result.json").read_text())
    assert job0["status"] == "finished" and job0["epochs"] == 1
    assert float(rows[0]["best/val_dice"]) == pytest.approx(
        job0["metrics"]["best/val_dice"], abs=5e-5
    )  # 4 decimals
    # its one epoch
    assert job0["metrics"]["best/val_dice"] == pytest.approx(job0["metrics"]["val/dice"])
    cores = os.cpu_count() or 1
    assert (
        f"torch threads: {max(1, cores // min(2, cores))}"
        in (sweep / "0" / "train.log").read_text()
    )


def test_optuna_search_over_the_demo_experiment_survives_failed_trials(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    sweep, missing = tmp_path / "sweep", tmp_path / "missing"
    # data.root is searched too, so some trials fail (seed 1 draws both roots in 4 trials).
    proc = _multirun(
        "+experiment=demo",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=4",
        "seed=1",
        f"data.root=choice({tiny_dataset},{missing})",
        "data.synthesize=false",
        *TINY,
        "trainer.max_epochs=1",
        "test=false",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert {"optimizer.lr", "model.dropout", "model.noise_std"} <= set(results["best_params"])
    rows = _rows(sweep / "summary.csv")
    assert len(rows) == 4
    assert {r["status"] for r in rows} == {"finished", "failed"}
    for row in rows:
        assert (row["status"] == "failed") == (row["data.root"] == str(missing))
        assert (
            1e-5 <= float(row["optimizer.lr"]) <= 1e-2 and 0 <= float(row["model.dropout"]) <= 0.6
        )
    best = max(float(r["best/val_dice"]) for r in rows if r["status"] == "finished")
    # Optuna got what each job returned
    assert results["best_value"] == pytest.approx(best, abs=1e-4)
    for job, row in enumerate(rows):  # named by what the search varies, failed trials too
        assert re.fullmatch(
            r"root=(data|missing),lr=[0-9.e-]+,dropout=[0-9.e-]+,noise=[0-9.e-]+", row["run"]
        )
        assert (row["status"] == "finished") == (
            sweep / str(job) / "tensorboard" / row["run"]
        ).is_dir()
    md = (sweep / "summary.md").read_text()
    finished = sum(r["status"] == "finished" for r in rows)
    assert "## Optuna" in md and f"{finished} finished trials, {4 - finished} failed" in md
    # the history reaches the best value
    assert f"| {best:.4f} |" in md and (sweep / "optuna.png").is_file()


def test_run_names_are_short_stable_and_filesystem_safe(tmp_path: Path) -> None:
    pairs = [("optimizer.lr", "0.001"), ("model.dropout", "0.1"), ("model.noise_std", "0.0")]
    assert run_name(pairs) == "lr=0.001,dropout=0.1,noise=0" == run_name(list(pairs))
    assert (
        run_name([("optimizer.lr", "1e-05"), ("data.root", "/x/my data/"), ("loss", "bce_dice")])
        == "lr=1e-5,root=my_data,loss=bce_dice"
    )
    assert (
        run_name([("optimizer.lr", "0.000123456789"), ("model.depth", 3), ("other.depth", 4)])
        == "lr=0.000123,model.depth=3,other.depth=4"
    )  # 3 significant digits; clashing short keys stay whole
    long = run_name([(f"k{i}", "v" * 40) for i in range(10)])
    assert len(long) <= 120 and long == run_name([(f"k{i}", "v" * 40) for i in range(10)])
    assert re.fullmatch(r"[A-Za-z0-9._+=,-]+", run_name([("a", "x/y:z*?|<>\"'"), ("b", "é")]))
    # the sweep's own definition decides what varies: comma lists, choice/range/interval, sweeper
    # params
    assert sweep_keys(
        [
            "+experiment=demo",
            "optimizer.lr=1e-4,1e-3",
            "data.root='a,b'",
            "seed=choice(1,2)",
            "model.depth=range(2,4)",
        ],
        {"model.dropout": "interval(0.0, 0.6)"},
    ) == ["optimizer.lr", "seed", "model.depth", "model.dropout"]
    write_sweep_file(
        tmp_path, ["+experiment=demo", "optimizer.lr=1e-4,1e-3", "model.dropout=0.1,0.5"], None
    )
    keys = varying_keys(tmp_path, [], None)
    assert (
        job_run_name(keys, ["+experiment=demo", "optimizer.lr=0.0001", "model.dropout=0.5"])
        == "lr=0.0001,dropout=0.5"
    )
    assert (
        single_run_name("demo", tmp_path / "outputs" / "2026-11-30" / "17-10-00")
        == "demo_2026-11-30_17-10-00"
    )
    run = tmp_path / "elsewhere"
    assert single_run_name("demo", run) == single_run_name("demo", run)  # one stamp per run folder
    (run / "tensorboard" / "demo_2026-01-01_00-00-00").mkdir(parents=True)
    # a resume keeps its name
    assert single_run_name("demo", run, resuming=True) == "demo_2026-01-01_00-00-00"


def _overlaps(fig) -> list[tuple[str, str]]:
    renderer = fig.canvas.get_renderer()
    clashes = []
    for ax in fig.axes:
        shown = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in shown]
        clashes += [
            (shown[i].get_text(), shown[j].get_text())
            for i in range(len(boxes))
            for j in range(i + 1, len(boxes))
            if boxes[i].overlaps(boxes[j])
        ]
    return clashes


@pytest.mark.parametrize("n", [1, 2, 20])
def test_summary_plot_axes_suit_the_values_and_ticks_never_overlap(n: int) -> None:
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(n)
    values = {
        "optimizer.lr": [f"{10 ** -rng.uniform(1, 5):.6g}" for _ in range(n)]
        if n > 2
        else ["1e-4", "1e-2"][:n],
        "model.dropout": [f"{rng.uniform(0, 0.6):.6g}" for _ in range(n)],
        "loss": [f"a_rather_long_loss_name_{i}" for i in range(n)],
        "model.depth": [str(3 + i % 2) for i in range(n)],
    }
    rows = [
        {
            "job": str(i),
            "run": f"run{i}",
            "status": "finished",
            "best/val_dice": float(rng.uniform(0.5, 0.9)),
            "overrides": {k: v[i] for k, v in values.items()},
        }
        for i in range(n)
    ]
    fig = figure(rows, list(values), "best/val_dice")
    try:
        assert _overlaps(fig) == []
        lr, dropout, loss, depth = fig.axes[:4]
        assert lr.get_xscale() == ("log" if n > 1 else "linear")  # a decade or more apart -> log
        assert loss.get_xscale() == "linear" and [t.get_text() for t in loss.get_xticklabels()][
            0
        ].startswith("a_")
        # categories
        assert [t.get_text() for t in depth.get_xticklabels()] == (["3", "4"] if n > 1 else ["3"])
        if n == 20:
            # 20 spread-out numbers: a linear axis with a few ticks
            assert len(dropout.get_xticklabels()) <= 7
            # crowded labels thinned out
            assert sum(t.get_visible() for t in loss.get_xticklabels()) < 20
    finally:
        plt.close(fig)


def test_optuna_sweep_summary_has_history_and_importances(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    rng = np.random.default_rng(0)
    hydra = {
        "hydra": {
            "sweeper": {
                "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                "direction": "maximize",
                "storage": None,
                "study_name": "lungseg",
                "params": {
                    "optimizer.lr": "tag(log, interval(1.0e-5, 1.0e-2))",
                    "model.dropout": "interval(0.0, 0.6)",
                },
            }
        }
    }
    for i in range(8):
        lr, dropout = 10 ** rng.uniform(-5, -2), rng.uniform(0, 0.6)
        dice = 0.9 - 0.1 * abs(math.log10(lr) + 3) - 0.01 * dropout  # lr matters, dropout barely
        result = (
            {**_finished(dice, 0.2), "value": dice}
            if i != 5
            else {"status": "failed", "error": "boom"}
        )
        _job(
            sweep,
            str(i),
            ["+experiment=demo", f"optimizer.lr={lr}", f"model.dropout={dropout}"],
            result,
        )
        (sweep / str(i) / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    summary = summarize(sweep)
    optuna = summary["optuna"]
    assert [h["trial"] for h in optuna["history"]] == [0, 1, 2, 3, 4, 6, 7] and optuna[
        "failed"
    ] == 1
    values = [h["value"] for h in optuna["history"]]
    assert [h["best"] for h in optuna["history"]] == [
        max(values[: i + 1]) for i in range(len(values))
    ]
    assert set(optuna["importances"]) == {"optimizer.lr", "model.dropout"}
    assert optuna["importances"]["optimizer.lr"] > optuna["importances"]["model.dropout"]
    md = (sweep / "summary.md").read_text()
    assert "## Optuna" in md and "| optimizer.lr |" in md and "![optimisation history" in md
    assert (sweep / "optuna.png").stat().st_size > 5000
    summary_main([str(sweep)])
    assert "optuna: 7 finished trials; importances: optimizer.lr" in capsys.readouterr().out


def _tensorboard_view(logdir: Path) -> tuple[list, list[str], dict[str, tuple[str, dict]]]:
    """What TensorBoard's HParams backend serves for ``logdir``: (hparam infos in column order,
    metric tags, run -> (trial id, hparams))."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, metadata

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    backend = backend_context.Context(
        base_plugin.TBContext(data_provider=provider, logdir=str(logdir), multiplexer=mux)
    )
    ctx = context.RequestContext()
    experiment = get_experiment.Handler(
        ctx, backend, "", api_pb2.GetExperimentRequest(hparams_limit=1000)
    ).run()
    sessions = {}
    for run, tags in backend.hparams_metadata(ctx, "").items():
        if metadata.SESSION_START_INFO_TAG in tags:
            start = metadata.parse_session_start_info_plugin_data(
                tags[metadata.SESSION_START_INFO_TAG]
            )
            sessions[run] = (
                start.group_name,
                {k: v.WhichOneof("kind") for k, v in start.hparams.items()},
            )
    return list(experiment.hparam_infos), [m.name.tag for m in experiment.metric_infos], sessions


def test_sweep_runs_read_in_tensorboard_by_name_with_swept_knobs_first(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    proc = _multirun(
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"data.root={tiny_dataset}",
        *TINY,
        "trainer.max_epochs=1",
        "optimizer.lr=1e-3,1e-2",
        "model.dropout=0.1",
        "loss=bce_dice",
        "~callbacks.prediction_grid",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert yaml.safe_load((sweep / "sweep.yaml").read_text())["varying"] == ["optimizer.lr"]
    names = {"0": "lr=0.001", "1": "lr=0.01"}
    for job, name in names.items():
        assert (sweep / job / "tensorboard" / name).is_dir()
    assert [r["run"] for r in _rows(sweep / "summary.csv")] == list(names.values())
    infos, metrics, sessions = _tensorboard_view(sweep)
    columns = [h.name for h in infos]
    assert (
        columns[0] == "optimizer.lr" and infos[0].differs and not any(h.differs for h in infos[1:])
    )
    assert set(columns) == {
        "optimizer.lr",
        "model.dropout",
        "model.noise_std",
        "model.base_filters",
        "model.depth",
        "data.image_size",
        "data.batch_size",
        "loss",
        "scheduler",
        "augment",
        "trainer.max_epochs",
        "seed",
    }  # no _target_, workers, cache or paths
    assert metrics == [
        "best/val_dice",
        "best/val_dice_per_image",
        "best/val_loss",
        "test/dice",
        "run/epochs",
        "run/wall_s",
    ]  # per-image Dice: every run logs it (issue 17)
    assert {run: trial for run, (trial, _) in sessions.items()} == {
        f"{job}/tensorboard/{name}": name for job, name in names.items()
    }
    loss_kind = next(h for h in infos if h.name == "loss")
    # the config file chosen, not a class path
    assert list(loss_kind.domain_discrete) == ["bce_dice"]
