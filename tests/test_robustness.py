"""lungseg.robustness: every shift moves the truth with the anatomy, the summary and files are
right, and a model that reads intensities the wrong way round is caught."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungseg.evaluation.robustness import APART, SHIFTS, load_split, score_shifts, summarise_shifts
from lungseg.robustness import robustness
from tests.helpers import train_tiny, write_split


class Threshold:
    """A 'model' that knows the phantoms: the lung is the dark disc (60) on a bright body (180);
    black is outside."""

    def predict(self, gray: np.ndarray) -> np.ndarray:
        return (gray > 20) & (gray < 120)


@pytest.fixture
def phantoms(tmp_path: Path) -> Path:
    write_split(tmp_path / "data", "test", [1, 2, 3], size=256, seed=8)
    return tmp_path / "data"


def test_shifts_move_the_truth_with_the_anatomy(phantoms: Path) -> None:
    pairs = load_split(phantoms, "test", "minmax")  # the oracle reads the phantoms' raw grey levels
    rows = score_shifts(Threshold(), pairs)  # type: ignore[arg-type]
    assert len(rows) == 3 * (1 + sum(len(levels) for _, levels in {**SHIFTS, **APART}.values()))
    by = summarise_shifts(rows)
    assert by["clean_dice"] > 0.97 and by["n_images"] == 3
    for shift in ("rotation_deg", "zoom_out", "offcentre_crop", "collimation", "mirror"):
        for severity, value in by["per_shift"][shift].items():
            # the truth moved along, so the oracle stays right
            assert value > 0.85, (shift, severity, value)
    # bone dark, lungs bright: the intensity oracle fails, as it must
    assert by["per_shift"]["inverted"][1] < 0.1
    shifted = [r["dice"] for r in rows if r["shift"] not in ("clean", "mirror")]
    assert by["robustness"] == pytest.approx(np.mean(shifted) / by["clean_dice"])


def test_each_shift_changes_the_image_and_strong_is_stronger(phantoms: Path) -> None:
    gray, mask, _ = load_split(phantoms, "test")[0]
    for name, (shift, levels) in SHIFTS.items():
        outs = [shift(gray, mask, level, np.random.default_rng(0))[0] for level in levels]
        for out in outs:
            assert out.dtype == np.uint8 and out.ndim == 2
            assert out.shape != gray.shape or np.abs(out.astype(int) - gray).mean() > 0.1, name
        if len(outs) == 3 and all(o.shape == gray.shape for o in outs):
            diffs = [np.abs(o.astype(int) - gray).mean() for o in outs]
            assert diffs[0] < diffs[2], (name, diffs)


def test_cli_writes_table_heatmap_and_summary(compose_cfg, phantoms: Path, tmp_path: Path) -> None:
    ckpt = train_tiny(tmp_path / "model")
    out = tmp_path / "robust"
    summary = robustness(
        compose_cfg(
            f"ckpt_path={ckpt}",
            f"data.root={phantoms}",
            f"output_dir={out}",
            "device=cpu",
            config_name="robustness",
        )
    )
    assert json.loads((out / "robustness.json").read_text())["robustness"] == pytest.approx(
        summary["robustness"]
    )
    table = (out / "robustness.md").read_text()
    assert all(f"| {shift} |" in table for shift in SHIFTS)
    assert cv2.imread(str(out / "robustness.png")).shape[0] > 300
    # clean + every shift level
    per_image = 1 + sum(len(levels) for _, levels in {**SHIFTS, **APART}.values())
    assert len((out / "per_image.csv").read_text().splitlines()) == 1 + 3 * per_image
