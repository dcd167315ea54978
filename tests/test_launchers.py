"""Launchers that run: a real 2-job multirun through submitit's local executor, two processes adding
trials to one Optuna study in SQLite, and the SLURM launcher's composed parameters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from tests.helpers import CONF, ROOT, TINY

QUICK = [
    *TINY,
    "trainer.max_epochs=1",
    "test=false",
    "~logger",
    "~callbacks.lr_monitor",
    "~callbacks.prediction_grid",
    "threads=1",
    "data.num_workers=0",
]


def test_submitit_local_runs_both_jobs_of_a_multirun(tiny_dataset: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungseg.train",
            "--multirun",
            "hydra/launcher=submitit_local",
            f"data.root={tiny_dataset}",
            *QUICK,
            "seed=1,2",
            f"hydra.sweep.dir={sweep}",
            "hydra.launcher.timeout_min=10",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(sweep.glob("*/result.json"))
    assert len(results) == 2
    records = [json.loads(p.read_text()) for p in results]
    assert [r["status"] for r in records] == ["finished", "finished"]
    assert sorted(o for r in records for o in r["overrides"] if o.startswith("seed=")) == [
        "seed=1",
        "seed=2",
    ]
    # each job in its own process, as submitit launches them
    assert len({r["pid"] for r in records}) == 2
    # submitit's own bookkeeping: it really ran them
    assert list(sweep.glob(".submitit/*/*_result.pkl"))


def test_two_processes_add_trials_to_one_optuna_study(tiny_dataset: Path, tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    # Create the study (and SQLite's tables) once before the workers start, as the README says:
    # optuna 2.x's schema creation races when two processes create it at the same moment.
    optuna.create_study(study_name="shared", storage=storage, direction="maximize")
    cmd = [
        sys.executable,
        "-m",
        "lungseg.train",
        "--multirun",
        "hparams_search=optuna",
        f"data.root={tiny_dataset}",
        *QUICK,
        "hydra.sweeper.n_trials=1",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=shared",
    ]
    procs = [
        subprocess.Popen(
            [*cmd, f"hydra.sweep.dir={tmp_path / name}", f"seed={seed}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, seed in (("a", 1), ("b", 2))
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.trials) == 2 and all(
        t.state == optuna.trial.TrialState.COMPLETE for t in study.trials
    )
    # each trial returned its run's best val Dice
    assert all(0 <= t.value <= 1 for t in study.trials)


def test_slurm_launcher_composes_one_task_per_gpu() -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=slurm",
                "trainer=ddp",
                "trainer.devices=4",
                "trainer.num_nodes=2",
                "hydra.launcher.partition=gpu",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert (
        launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert (
        launcher.partition == "gpu" and launcher.timeout_min == 720 and launcher.cpus_per_task == 8
    )
