"""Loading checkpoints: the good one rebuilds the model; every bad one is refused with a clear
message; a checkpoint from before self-description needs image_size=."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch

from lungseg.artifacts.checkpoint import load_checkpoint
from lungseg.artifacts.description import DESCRIPTION_KEY
from lungseg.errors import CheckpointError
from lungseg.training.module import load_module
from tests.helpers import make_module


@pytest.fixture
def good_ckpt(tmp_path: Path) -> Path:
    module = make_module()
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    path = tmp_path / "good.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_good_checkpoint_loads_in_eval_mode(good_ckpt: Path) -> None:
    module = load_module(good_ckpt)
    assert not module.training
    assert module(torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)


def test_missing_truncated_and_foreign_checkpoints_are_refused(
    good_ckpt: Path, tmp_path: Path
) -> None:
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

    torch.save(
        {"state_dict": {}, "hyper_parameters": {"net": {}}, "x": Evil()}, tmp_path / "evil.ckpt"
    )
    with pytest.raises(CheckpointError, match="refused: it holds pickled Python objects"):
        load_module(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_checkpoint_naming_a_foreign_class_is_refused(good_ckpt: Path, tmp_path: Path) -> None:
    ckpt = torch.load(good_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["net"]["_target_"] = "os.system"
    torch.save(ckpt, tmp_path / "target.ckpt")
    with pytest.raises(CheckpointError, match="os.system"):
        load_module(tmp_path / "target.ckpt")


def test_checkpoint_without_description_needs_image_size(good_ckpt: Path) -> None:
    # good_ckpt is saved by a bare Trainer, as lungseg 0.1 wrote them: no description inside
    assert DESCRIPTION_KEY not in torch.load(good_ckpt, weights_only=True)
    with pytest.raises(CheckpointError, match=r"does not record its input size; pass image_size="):
        load_checkpoint(good_ckpt)
    model = load_checkpoint(good_ckpt, image_size=48)
    assert model.description.image_size == 48 and model.description.threshold == 0.5
    assert model.description.config == {} and model.description.data == {}


def test_zero_random_and_non_finite_checkpoints_are_told_apart(
    good_ckpt: Path, tmp_path: Path
) -> None:
    (tmp_path / "zero.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a checkpoint \\(an empty file") as err:
        load_module(tmp_path / "zero.ckpt")
    (tmp_path / "random.ckpt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a checkpoint \\(4,096 bytes") as err2:
        load_module(tmp_path / "random.ckpt")
    for e in (err, err2):
        assert "pickled" not in str(e.value) and "weights_only" not in str(e.value)
    ckpt = torch.load(good_ckpt, weights_only=True)
    name = next(k for k in ckpt["state_dict"] if k.endswith("running_var"))
    ckpt["state_dict"][name][0] = float("inf")
    torch.save(ckpt, tmp_path / "diverged.ckpt")
    with pytest.raises(CheckpointError, match=f"1 tensor\\(s\\) hold NaN or inf \\({name}\\)"):
        load_module(tmp_path / "diverged.ckpt")
