"""A checkpoint and a pretrained folder written by lungseg 0.2 (tests/fixtures/release-0.2) still
load, predict the probabilities 0.2 computed, and the checkpoint resumes: class paths moved since
are read under their new names."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lungseg import LungSegmenter
from tests.helpers import TINY, train_run, write_split

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.2"
# fp32 on another CPU rounds differently in the last bits; a mask pixel this close to the threshold
# may flip
ROUNDING = 1e-5


def expected() -> np.ndarray:
    return np.load(FIXTURE / "film_probabilities.npy")


@pytest.mark.parametrize("load", ["checkpoint", "pretrained"])
def test_a_release_0_2_model_predicts_as_it_did(load: str) -> None:
    if load == "checkpoint":
        seg = LungSegmenter.from_checkpoint(FIXTURE / "tiny.ckpt", "cpu", precision="32-true")
    else:
        seg = LungSegmenter.from_pretrained(FIXTURE / "tiny-pretrained", "cpu", precision="32-true")
    assert seg.metadata["lungseg_version"] == "0.2.0" and seg.image_size == 32
    prob = seg.predict_proba(FIXTURE / "film.png")
    np.testing.assert_allclose(prob, expected(), atol=ROUNDING)
    sure = np.abs(expected() - seg.threshold) > ROUNDING
    # post-processed, as 0.2 wrote it
    mask = cv2.imread(str(FIXTURE / "film_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    np.testing.assert_array_equal(seg.predict(FIXTURE / "film.png")[sure], mask[sure])


def test_a_release_0_2_checkpoint_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the checkpoint was trained on data.root=release_data, relative
    data = Path("release_data")
    write_split(data, "train", list(range(8)))
    write_split(data, "val", [10, 11, 12, 13], seed=1)
    write_split(data, "test", [20, 21], seed=2)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE / "tiny.ckpt", run / "checkpoints" / "last.ckpt")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    train_run(
        run,
        "data.root=release_data",
        *TINY,
        "trainer.max_epochs=3",
        "optimizer.lr=1e-2",
        "trainer.precision=32-true",
        "seed=3",
        "data.num_workers=0",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
    )  # refused if a recorded setting seemed changed
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["global_step"] == 3 * 2
