"""Faults and reproducibility: SIGKILL then resume equals an uninterrupted run, atomic checkpoints,
NaN stop, identical seeded runs, and fresh augmentation every epoch."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lungseg.errors import CheckpointError
from lungseg.train import train
from lungseg.training.callbacks import AtomicCheckpointIO, TrainingDivergedError
from lungseg.training.module import LungSegModule
from tests.helpers import ROOT, TINY

# 4 steps an epoch
SMALL = tuple(a for a in TINY if not a.startswith("data.batch_size")) + ("data.batch_size=2",)


def _train_cmd(data: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lungseg.train",
        f"data.root={data}",
        *SMALL,
        "trainer.max_epochs=6",
        "seed=7",
        "trainer.deterministic=true",
        "threads=1",
        "data.num_workers=0",
        *args,
    ]


def _ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.precision
def test_sigkill_then_resume_matches_an_uninterrupted_run(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    last = killed / "checkpoints" / "last.ckpt"
    uninterrupted = subprocess.Popen(
        _train_cmd(tiny_dataset, f"hydra.run.dir={whole}"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = subprocess.Popen(
        _train_cmd(tiny_dataset, f"hydra.run.dir={killed}"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not last.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    killed_at = _ckpt(last)["epoch"]
    assert killed_at < 5, "the run finished before it could be killed"
    # what the summary calls killed
    assert json.loads((killed / "result.json").read_text())["status"] == "running"

    # No hydra.run.dir: a resume from <run>/checkpoints/ continues in <run>.
    resumed = subprocess.run(
        _train_cmd(tiny_dataset, f"ckpt_path={last}"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err[-3000:]

    a, b = _ckpt(whole / "checkpoints" / "last.ckpt"), _ckpt(last)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (5, 6 * 4)
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)
    for sa, sb in zip(
        a["optimizer_states"][0]["state"].values(),
        b["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        torch.testing.assert_close(sb["exp_avg"], sa["exp_avg"], rtol=0, atol=1e-6)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (whole, killed))
    assert rb["status"] == "finished" and rb["resumed_from"] == str(last) and rb["epochs"] == 6
    for key in ("best/val_dice", "best/val_loss", "test/dice", "test/loss"):
        assert rb["metrics"][key] == pytest.approx(ra["metrics"][key], abs=1e-6), key
    # the original .hydra/ config is kept
    assert list((killed / ".hydra").glob("resume-*/overrides.yaml"))


def test_atomic_checkpoint_keeps_the_old_file_when_a_write_dies(
    tmp_path: Path, monkeypatch
) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    # left by a process killed while saving
    (path.parent / ".last.ckpt.tmp-999999").write_bytes(b"torn")

    def dies_halfway(obj: Any, f: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("killed while writing")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    # nothing new
    assert sorted(p.name for p in path.parent.iterdir()) == [".last.ckpt.tmp-999999", "last.ckpt"]
    # the next save clears what the killed one left
    io.save_checkpoint({"epoch": 3, "w": torch.zeros(3)}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_torn_checkpoint_is_refused_before_resuming(
    compose_cfg, tiny_dataset: Path, tmp_path: Path
) -> None:
    torn = tmp_path / "old" / "checkpoints" / "last.ckpt"
    torn.parent.mkdir(parents=True)
    torn.write_bytes(b"PK\x03\x04 half a checkpoint")
    cfg = compose_cfg(f"data.root={tiny_dataset}", *TINY, f"ckpt_path={torn}")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(cfg)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    compose_cfg, tiny_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    step = LungSegModule.training_step

    def poisoned(self: LungSegModule, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = step(self, batch, batch_idx)
        return loss * float("nan") if self.current_epoch >= 1 else loss

    monkeypatch.setattr(LungSegModule, "training_step", poisoned)
    cfg = compose_cfg(f"data.root={tiny_dataset}", *TINY, "trainer.max_epochs=3")
    expected = (
        r"epoch 1, step \d+: the training loss was nan for 1 step\(s\) in a row"
        r".*last.ckpt.*optimizer\.lr"
    )
    with pytest.raises(TrainingDivergedError, match=expected):
        train(cfg)
    good = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert good["epoch"] == 0 and all(torch.isfinite(t).all() for t in good["state_dict"].values())


def test_non_finite_batchnorm_statistics_never_reach_a_checkpoint(
    compose_cfg, tiny_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    step = LungSegModule.training_step

    def poisoned(self: LungSegModule, batch: dict, batch_idx: int) -> torch.Tensor:
        # the loss stays finite; only a BatchNorm statistic blows up (lr=1e9 does this)
        if self.current_epoch >= 1:
            self.net.encoders[0][2].running_var.fill_(float("inf"))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(LungSegModule, "training_step", poisoned)
    # keep the poison
    monkeypatch.setattr("lungseg.training.callbacks.PreciseBatchNorm.recompute", lambda *a: None)
    cfg = compose_cfg(f"data.root={tiny_dataset}", *TINY, "trainer.max_epochs=3")
    with pytest.raises(TrainingDivergedError, match=r"epoch 1.*encoders\.0\.2\.running_var"):
        train(cfg)
    for name in ("last.ckpt", "best.ckpt"):
        saved = torch.load(tmp_path / "run" / "checkpoints" / name, weights_only=True)
        assert saved["epoch"] == 0 and all(
            torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point()
        )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.precision
def test_seed_and_deterministic_give_identical_runs(
    compose_cfg, tiny_dataset: Path, tmp_path: Path
) -> None:
    runs = []
    for name in ("a", "b"):
        cfg = compose_cfg(
            f"data.root={tiny_dataset}",
            *TINY,
            "trainer.max_epochs=2",
            "seed=3",
            "trainer.deterministic=true",
            f"paths.output_dir={tmp_path / name}",
        )
        runs.append(train(cfg))
    assert runs[0] == runs[1]
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


class AugmentationRecorder(L.Callback):
    """Records a fingerprint of every training image as the model receives it, by dataset index and
    epoch."""

    seen: dict[tuple[int, int], float] = {}

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        for index, image in zip(batch["index"].tolist(), batch["image"], strict=True):
            AugmentationRecorder.seen[(trainer.current_epoch, index)] = float(
                (image * torch.arange(image.numel()).view_as(image)).sum()
            )


@pytest.mark.parametrize("workers", [0, 2])
def test_epochs_get_fresh_augmentations_and_seeds_repeat_them(
    compose_cfg, tiny_dataset: Path, tmp_path: Path, workers: int
) -> None:
    # the class _target_ builds
    recorder = importlib.import_module("tests.test_faults").AugmentationRecorder
    records = []
    for name in ("a", "b"):
        recorder.seen = {}
        cfg = compose_cfg(
            f"data.root={tiny_dataset}",
            *TINY,
            "trainer.max_epochs=2",
            "seed=5",
            "test=false",
            "trainer.deterministic=true",
            f"data.num_workers={workers}",
            f"paths.output_dir={tmp_path / name}",
            "+callbacks.recorder._target_=tests.test_faults.AugmentationRecorder",
        )
        train(cfg)
        records.append(dict(recorder.seen))
    first = records[0]
    assert len(first) == 2 * 8
    changed = sum(first[(0, i)] != first[(1, i)] for i in {i for _, i in first})
    assert changed == 8, "an image got the same augmentation in two epochs"
    assert records[0] == records[1], "the same seed did not repeat the augmentations"
    assert os.environ.get("PL_SEED_WORKERS") == "1"
