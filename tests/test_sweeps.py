"""Sweeps: the summary of a multirun folder, a parallel joblib sweep that outlives a failing job, Optuna."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lungseg.sweep_summary import main as summary_main
from lungseg.sweep_summary import summarize
from tests.helpers import ROOT, TINY


def _job(sweep: Path, name: str, overrides: list[str], result: dict | None) -> None:
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if result is not None:
        (sweep / name / "result.json").write_text(json.dumps(result))


def _finished(dice: float, loss: float) -> dict:
    return {"status": "finished", "epochs": 3, "wall_s": 12.5,
            "metrics": {"best/val_dice": dice, "best/val_loss": loss, "test/dice": dice - 0.01}}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_names_the_best_job_and_every_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep"
    common = ["+experiment=baseline", "data.root=/x"]
    _job(sweep, "0", [*common, "optimizer.lr=0.0001", "model.dropout=0.3"], _finished(0.90, 0.20))
    _job(sweep, "1", [*common, "optimizer.lr=0.001", "model.dropout=0.3"], _finished(0.95, 0.15))
    _job(sweep, "2", [*common, "optimizer.lr=0.0001", "model.dropout=0.5"],
         {"status": "failed", "error": "DataError: no dataset at /x\nmore", "wall_s": 1.0})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _job(sweep, "10", [*common, "optimizer.lr=0.001", "model.dropout=0.5"],
         {"status": "running", "host": socket.gethostname(), "pid": int(dead.stdout)})
    _job(sweep, "3", [*common, "optimizer.lr=0.01", "model.dropout=0.5"], None)

    summary = summarize(sweep)
    assert summary["knobs"] == ["model.dropout", "optimizer.lr"]  # data.root and the experiment do not vary
    assert summary["best"]["job"] == "1"
    assert [r["job"] for r in summary["rows"]] == ["0", "1", "2", "3", "10"]  # numeric job order
    rows = _rows(sweep / "summary.csv")
    assert [r["status"] for r in rows] == ["finished", "finished", "failed", "killed", "killed"]
    assert rows[2]["error"].startswith("DataError: no dataset at /x")
    assert rows[1]["best/val_dice"] == "0.9500" and rows[1]["optimizer.lr"] == "0.001" and rows[1]["epochs"] == "3"
    assert "optimizer.lr=0.001" in rows[1]["overrides"]
    assert (sweep / "summary.png").stat().st_size > 1000 and "| job |" in (sweep / "summary.md").read_text()

    summary_main([str(sweep), "--metric", "best/val_loss"])
    out = capsys.readouterr().out
    assert "best job: 1 (best/val_loss 0.1500)" in out and "2 finished, 1 failed, 2 killed" in out
    with pytest.raises(SystemExit) as exit_info:
        summary_main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "no such folder" in capsys.readouterr().err


def _multirun(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "lungseg.train", "--multirun", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_joblib_sweep_goes_on_past_a_failing_job_and_summarises(tiny_dataset: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    missing = tmp_path / "missing"
    proc = _multirun("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"data.root={tiny_dataset},{missing}",
                     *TINY, "trainer.max_epochs=1", "test=false", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(sweep / "summary.csv")
    assert [r["status"] for r in rows] == ["finished", "failed"]
    assert "no dataset at" in rows[1]["error"]
    assert "best job: 0" in proc.stdout
    assert json.loads((sweep / "1" / "result.json").read_text())["status"] == "failed"
    job0 = json.loads((sweep / "0" / "result.json").read_text())
    assert job0["status"] == "finished" and job0["epochs"] == 1
    assert float(rows[0]["best/val_dice"]) == pytest.approx(job0["metrics"]["best/val_dice"], abs=5e-5)  # 4 decimals
    assert job0["metrics"]["best/val_dice"] == pytest.approx(job0["metrics"]["val/dice"])  # its one epoch
    cores = os.cpu_count() or 1
    assert f"torch threads: {max(1, cores // min(2, cores))}" in (sweep / "0" / "train.log").read_text()


def test_optuna_search_over_the_demo_experiment_survives_failed_trials(tiny_dataset: Path, tmp_path: Path) -> None:
    sweep, missing = tmp_path / "sweep", tmp_path / "missing"
    # data.root is searched too, so some trials fail (seed 1 draws both roots in 4 trials).
    proc = _multirun("+experiment=demo", "hparams_search=optuna", "hydra.sweeper.n_trials=4", "seed=1",
                     f"data.root=choice({tiny_dataset},{missing})", "data.synthesize=false",
                     *TINY, "trainer.max_epochs=1", "test=false", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert {"optimizer.lr", "model.dropout", "model.noise_std"} <= set(results["best_params"])
    rows = _rows(sweep / "summary.csv")
    assert len(rows) == 4
    assert {r["status"] for r in rows} == {"finished", "failed"}
    for row in rows:
        assert (row["status"] == "failed") == (row["data.root"] == str(missing))
        assert 1e-5 <= float(row["optimizer.lr"]) <= 1e-2 and 0 <= float(row["model.dropout"]) <= 0.6
    best = max(float(r["best/val_dice"]) for r in rows if r["status"] == "finished")
    assert results["best_value"] == pytest.approx(best, abs=1e-4)  # Optuna got what each job returned
