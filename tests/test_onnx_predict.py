"""lungseg.predict and the Python API on an exported ONNX model: the same outputs as the checkpoint,
and no torch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungseg import LungSegmenter
from lungseg.export import export
from tests.helpers import ROOT, train_tiny, write_split

RUN_WITHOUT_TORCH = """
import json, runpy, sys
sys.argv = ["lungseg.predict", *sys.argv[1:]]
try:
    runpy.run_module("lungseg.predict", run_name="__main__")
finally:
    heavy = ("torch", "lightning", "torchmetrics")
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
    print("HEAVY_MODULES=" + json.dumps(heavy))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("onnx")
    ckpt = train_tiny(tmp)
    return {"ckpt": ckpt, "onnx": tmp / "model.onnx"}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_onnx_predict_matches_the_checkpoint_and_never_imports_torch(
    compose_cfg, models: dict[str, Path], tmp_path: Path
) -> None:
    export(
        compose_cfg(f"ckpt_path={models['ckpt']}", f"output={models['onnx']}", config_name="export")
    )
    data = tmp_path / "data"
    write_split(data, "test", [1, 2, 3, 4, 5], size=72, seed=3)
    images, masks = data / "ChestXray" / "test" / "image", data / "ChestXray" / "test" / "mask"
    outputs = {}
    # the ONNX file is an fp32 export: its oracle is the checkpoint run in fp32, on a bf16 CPU too
    for name, setting in (
        ("ckpt", f"ckpt_path={models['ckpt']}"),
        ("onnx", f"model_path={models['onnx']}"),
    ):
        out = tmp_path / name
        pinned = ["precision=32-true"] if name == "ckpt" else []
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                RUN_WITHOUT_TORCH,
                setting,
                *pinned,
                f"input={images}",
                f"output={out}",
                f"truth={masks}",
                "progress=false",
                "batch_size=2",
                "save_probabilities=true",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        heavy = json.loads(proc.stdout.split("HEAVY_MODULES=")[1].splitlines()[0])
        outputs[name] = (out, heavy)
    # the ONNX path ran without importing torch, lightning or torchmetrics
    assert outputs["onnx"][1] == []
    assert "torch" in outputs["ckpt"][1]  # (and the check can see torch when it is there)
    ckpt_rows, onnx_rows = (
        _rows(outputs["ckpt"][0] / "predictions.csv"),
        _rows(outputs["onnx"][0] / "predictions.csv"),
    )
    assert [r["mask"] for r in ckpt_rows] == [r["mask"] for r in onnx_rows] and len(onnx_rows) == 5
    for a, b in zip(ckpt_rows, onnx_rows, strict=True):
        assert float(a["dice"]) == pytest.approx(float(b["dice"]), abs=2e-3)
        assert (
            a["plausibility"] == b["plausibility"]
            and abs(int(a["large_components"]) - int(b["large_components"])) <= 0
        )
        # scored without torch
        assert float(a["quality_score"]) == pytest.approx(float(b["quality_score"]), abs=2e-3)
        pa = cv2.imread(
            str(outputs["ckpt"][0] / "probabilities" / Path(a["mask"]).name), cv2.IMREAD_UNCHANGED
        )
        pb = cv2.imread(
            str(outputs["onnx"][0] / "probabilities" / Path(b["mask"]).name), cv2.IMREAD_UNCHANGED
        )
        # 8-bit probabilities agree to rounding
        assert np.abs(pa.astype(int) - pb.astype(int)).max() <= 1


def test_the_api_loads_onnx_and_agrees_with_the_checkpoint(
    compose_cfg, models: dict[str, Path]
) -> None:
    if not models["onnx"].exists():
        export(
            compose_cfg(
                f"ckpt_path={models['ckpt']}", f"output={models['onnx']}", config_name="export"
            )
        )
    onnx_seg = LungSegmenter.load(models["onnx"])
    torch_seg = LungSegmenter.load(models["ckpt"], precision="32")
    assert onnx_seg.image_size == torch_seg.image_size == 32 and onnx_seg.precision == "32-true"
    assert onnx_seg.metadata == torch_seg.metadata  # the description travelled inside the ONNX file
    image = np.random.default_rng(1).integers(0, 255, (90, 70), dtype=np.uint8)
    np.testing.assert_allclose(
        onnx_seg.predict_proba(image), torch_seg.predict_proba(image), atol=1e-5
    )
    with pytest.raises(Exception, match="probabilities only"):
        onnx_seg.logits(np.zeros((1, 1, 32, 32), np.float32))
