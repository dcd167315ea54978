"""Loading checkpoints: the good one rebuilds the model; every bad one is refused with a clear message."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch

from lungseg.checkpoint import load_module
from lungseg.errors import CheckpointError
from tests.helpers import make_module


@pytest.fixture
def good_ckpt(tmp_path: Path) -> Path:
    module = make_module()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    path = tmp_path / "good.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_good_checkpoint_loads_in_eval_mode(good_ckpt: Path) -> None:
    module = load_module(good_ckpt)
    assert not module.training
    assert module(torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)


def test_missing_truncated_and_foreign_checkpoints_are_refused(good_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_module(tmp_path / "absent.ckpt")
    data = good_ckpt.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_module(tmp_path / "cut.ckpt")
    torch.save({"state_dict": {}, "weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a lungseg checkpoint"):
        load_module(tmp_path / "other.ckpt")


def test_pickle_bearing_checkpoint_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {}, "hyper_parameters": {"net": {}}, "x": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refused: it holds pickled Python objects"):
        load_module(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_checkpoint_naming_a_foreign_class_is_refused(good_ckpt: Path, tmp_path: Path) -> None:
    ckpt = torch.load(good_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["net"]["_target_"] = "os.system"
    torch.save(ckpt, tmp_path / "target.ckpt")
    with pytest.raises(CheckpointError, match="os.system"):
        load_module(tmp_path / "target.ckpt")
