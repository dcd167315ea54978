"""The benchmark keeps working (tiny mode; no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_bench_tiny_mode_writes_the_documented_json(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lungseg.bench", "device=cpu", "data.image_size=32", "model.base_filters=4",
         "model.depth=2", "batch_size=2", "warmup=0", "repeats=1", "matmul_size=64", "fit_epochs=1",
         f"data_root={tiny_dataset}", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("train_img_s", "infer_img_s", "data_img_s", "end_to_end_img_s"):
        assert result[key] > 0, key
    assert {(r["section"], r["dtype"], r["channels_last"]) for r in result["model"]} >= {
        ("train", "fp32", False), ("train", "fp32", True), ("infer", "fp32", False), ("infer", "fp32", True)}
    assert result["gflop_per_image"]["train"] > result["gflop_per_image"]["infer"] > 0
    assert "defaults (" in proc.stdout and "of matmul peak" in proc.stdout
