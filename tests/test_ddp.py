"""DDP on CPU processes (gloo) trains and measures exactly like one process: the same global batch,
and every val/test image counted exactly once whatever the split and world sizes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lungseg.evaluate import evaluate
from tests.helpers import ROOT, write_split

# Both runs see the same data in every optimizer step: the 2 training images form one global batch
# (DDP: one image per rank; one process: two micro-batches of one, accumulated), so shuffling order
# cannot matter. Randomness that differs per process is off (input noise, dropout, augmentation).
# BatchNorm uses per-image batch statistics in both; its running statistics are frozen (momentum 0)
# because without SyncBatchNorm (CUDA only) DDP keeps rank 0's. SGD keeps tiny float differences
# tiny (Adam's first step is about lr * sign(gradient)).
COMMON = (
    "data.image_size=32",
    "model.base_filters=4",
    "model.depth=2",
    "data.batch_size=1",
    "model.dropout=0",
    "model.noise_std=0",
    "model.bn_momentum=0",
    "data.train_transform=null",
    "optimizer._target_=torch.optim.SGD",
    "~optimizer.eps",
    "optimizer.lr=0.1",
    "trainer.max_epochs=3",
    "trainer.accelerator=cpu",
    "seed=11",
    "trainer.deterministic=true",
    "threads=1",
    "~callbacks.progress_bar",
    "trainer.enable_model_summary=false",
    "trainer.precision=32-true",
)


def test_ddp_two_cpu_processes_match_one_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_split(data, "train", [0, 1], size=32)
    write_split(data, "val", [10, 11, 12, 13], size=32, seed=1)
    write_split(data, "test", [20, 21, 22, 23], size=32, seed=2)
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    cmd = [sys.executable, "-m", "lungseg.train", f"data.root={data}", *COMMON]
    ddp_args = [
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.strategy.process_group_backend=gloo",
        f"hydra.run.dir={ddp}",
    ]
    ddp_proc = subprocess.Popen(
        [*cmd, *ddp_args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    one = subprocess.run(
        [
            *cmd,
            "trainer.devices=1",
            "+trainer.accumulate_grad_batches=2",
            f"hydra.run.dir={single}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    _, err = ddp_proc.communicate(timeout=600)
    assert ddp_proc.returncode == 0, err[-3000:]
    assert one.returncode == 0, one.stderr[-3000:]

    assert (ddp / "train_ddp_process_1.log").is_file()  # rank 1 ran, in the same folder
    result, reference = (json.loads((d / "result.json").read_text()) for d in (ddp, single))
    assert result["pid"] == ddp_proc.pid  # written by rank 0 only
    assert result["metrics"]["test/dice"] > 0
    for key in (
        "val/loss",
        "val/dice",
        "val/auroc",
        "best/val_dice",
        "test/loss",
        "test/dice",
        "test/iou",
    ):
        assert result["metrics"][key] == pytest.approx(reference["metrics"][key], abs=1e-5), key
    a = torch.load(ddp / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(single / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 3
    for name, tensor in b["state_dict"].items():
        # forward passes per process: 2 micro-batches vs 1 per step
        if name.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(a["state_dict"][name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_val_and_test_metrics_count_every_image_once(compose_cfg, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_split(data, "train", list(range(9)), size=32)
    write_split(data, "val", list(range(10, 17)), size=32, seed=1)
    write_split(data, "test", list(range(20, 25)), size=32, seed=2)
    run = tmp_path / "ddp"
    common = [o for o in COMMON if not o.startswith("trainer.max_epochs=")]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungseg.train",
            f"data.root={data}",
            *common,
            "trainer.max_epochs=1",
            "trainer=ddp",
            "trainer.devices=3",
            "trainer.strategy.process_group_backend=gloo",
            f"hydra.run.dir={run}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank decoded (and cached) its own share of every split, no more
    shares: dict[str, list[int]] = {}
    for log in sorted(run.glob("*.log")):
        for split, share in re.findall(
            r"(train|val|test): \d+ pairs .*holds all this rank's (\d+)", log.read_text()
        ):
            shares.setdefault(split, []).append(int(share))
    assert {split: sorted(s) for split, s in shares.items()} == {
        "train": [3, 3, 3],
        "val": [2, 2, 3],
        "test": [1, 2, 2],
    }
    logged = json.loads((run / "result.json").read_text())["metrics"]
    # 7 and 5 images on 3 ranks: padding would count 2 and 1 of them twice
    for split in ("val", "test"):
        cfg = compose_cfg(
            f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
            f"data.root={data}",
            f"split={split}",
            f"output_dir={tmp_path / split}",
            "precision=32",
            "calibration=false",
            config_name="evaluate",
        )
        pooled = evaluate(cfg)["pooled"]
        for name in ("dice", "iou", "accuracy", "precision", "recall", "loss"):
            assert logged[f"{split}/{name}"] == pytest.approx(pooled[name], abs=1e-6), (split, name)
