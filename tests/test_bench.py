"""The benchmark keeps working (tiny mode; no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx

from tests.helpers import ROOT


def test_bench_tiny_mode_writes_the_documented_json(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lungseg.bench", "device=cpu", "data.image_size=32", "model.base_filters=4",
         "model.depth=2", "batch_size=2", "warmup=0", "repeats=1", "matmul_size=64", "fit_epochs=1",
         f"data_root={tiny_dataset}", "onnx_calibration_images=3", f"onnx_dir={tmp_path / 'onnx'}",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("train_img_s", "infer_img_s", "data_img_s", "end_to_end_img_s", "infer_ort_fp32_img_s",
                "infer_int8_img_s"):
        assert result[key] > 0, key
    ort = result["onnxruntime"]
    assert (ort["fp32_img_s"], ort["int8_img_s"]) == (result["infer_ort_fp32_img_s"], result["infer_int8_img_s"])
    assert ort["calibration_images"] == 3 and ort["int8_qdq_nodes"]["QuantizeLinear"] > 0
    models = {name: onnx.load(ort["files"][name]) for name in ("fp32", "int8")}  # the very files it timed
    ops = {name: [n.op_type for n in m.graph.node] for name, m in models.items()}
    assert "QuantizeLinear" not in ops["fp32"] and ops["int8"].count("QuantizeLinear") == ort["int8_qdq_nodes"][
        "QuantizeLinear"]
    # the bench's own U-Net (depth 2: two conv pairs down, one at the bottom, two up, the 1x1 head) in both files
    assert ops["fp32"].count("Conv") == ops["int8"].count("Conv") == 2 * 2 + 2 + 2 * 2 + 1
    assert {(r["section"], r["dtype"], r["channels_last"]) for r in result["model"]} >= {
        ("train", "fp32", False), ("train", "fp32", True), ("infer", "fp32", False), ("infer", "fp32", True)}
    assert result["gflop_per_image"]["train"] > result["gflop_per_image"]["infer"] > 0
    assert "defaults (" in proc.stdout and "of matmul peak" in proc.stdout and "INT8" in proc.stdout
