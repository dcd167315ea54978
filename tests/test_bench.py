"""The benchmark keeps working (tiny sizes; no timing assertions)."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from lungseg.bench.scale import synthetic_set
from tests.helpers import ROOT, run_bench


def test_bench_tiny_mode_writes_the_documented_json(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc, result = run_bench(
        out,
        "device=cpu",
        "data.image_size=32",
        "model.base_filters=4",
        "model.depth=2",
        "batch_size=2",
        "warmup=0",
        "repeats=1",
        "matmul_size=64",
        "fit_epochs=1",
        f"data_root={tiny_dataset}",
        "onnx_calibration_images=3",
        f"onnx_dir={tmp_path / 'onnx'}",
        timeout=300,
    )
    for key in (
        "train_img_s",
        "infer_img_s",
        "data_img_s",
        "end_to_end_img_s",
        "infer_ort_fp32_img_s",
        "infer_int8_img_s",
    ):
        assert result[key] > 0, key
    ort = result["onnxruntime"]
    assert (ort["fp32_img_s"], ort["int8_img_s"]) == (
        result["infer_ort_fp32_img_s"],
        result["infer_int8_img_s"],
    )
    assert ort["calibration_images"] == 3 and ort["int8_qdq_nodes"]["QuantizeLinear"] > 0
    # the very files it timed
    models = {name: onnx.load(ort["files"][name]) for name in ("fp32", "int8")}
    ops = {name: [n.op_type for n in m.graph.node] for name, m in models.items()}
    assert (
        "QuantizeLinear" not in ops["fp32"]
        and ops["int8"].count("QuantizeLinear") == ort["int8_qdq_nodes"]["QuantizeLinear"]
    )
    # the bench's own U-Net (depth 2: two conv pairs down, one at the bottom, two up, the 1x1 head)
    # in both files
    assert ops["fp32"].count("Conv") == ops["int8"].count("Conv") == 2 * 2 + 2 + 2 * 2 + 1
    assert {(r["section"], r["dtype"], r["channels_last"]) for r in result["model"]} >= {
        ("train", "fp32", False),
        ("train", "fp32", True),
        ("infer", "fp32", False),
        ("infer", "fp32", True),
    }
    assert result["gflop_per_image"]["train"] > result["gflop_per_image"]["infer"] > 0
    assert "defaults (" in proc.stdout and "of matmul peak" in proc.stdout and "INT8" in proc.stdout


def test_bench_scale_mode_grows_the_sets_and_measures_each(tmp_path: Path) -> None:
    out, folder = tmp_path / "scale.json", tmp_path / "sets"
    item = 2 * 32 * 32  # bytes a 32-px image and mask take in the cache
    proc, result = run_bench(
        out,
        "mode=scale",
        "scale.sizes=[32,16]",
        "device=cpu",
        "trainer.accelerator=cpu",
        "data.image_size=32",
        "model.base_filters=4",
        "model.depth=2",
        "batch_size=4",
        "warmup=0",
        "repeats=1",
        "scale.source_px=64",
        "scale.val_pairs=4",
        "scale.epochs=2",
        "scale.train_steps=2",
        "scale.generate_workers=2",
        f"scale.folder={folder}",
        f"data.cache_mb={15.5 * item / 2**20}",
        "data.num_workers=2",
    )
    rows = result["scale"]
    # smallest first
    assert [r["n_images"] for r in rows] == [16, 32] == [r["images_per_epoch"] for r in rows]
    for r in rows:
        for key in (
            "data_epoch_s",
            "data_first_epoch_s",
            "setup_s",
            "peak_rss_mb",
            "data_peak_rss_mb",
            "base_rss_mb",
            "train_img_s",
            "data_ms_per_image",
            "decode_img_s",
            "data_epoch_cpu_s",
            "data_cpu_ms_per_image",
            "workers_mb",
        ):
            assert r[key] > 0, key
        # the configured workers, whose CPU time, memory and page faults are counted
        assert r["workers"] == 2
        assert r["data_faults_per_image"] >= 0 and len(r["data_epochs_faults"]) == 2
        assert len(r["data_epochs_s"]) == 2 and r["peak_rss_mb"] >= r["data_peak_rss_mb"]
        # the budget, not the set, decides
        assert r["cached_images"] == 15 and r["cache_mb"] == 15 * item / 2**20
    assert rows[0]["data_cost_vs_smallest"] == rows[0]["data_cpu_vs_smallest"] == 1.0
    assert rows[1]["data_cost_vs_smallest"] > 0 and rows[1]["data_cpu_vs_smallest"] > 0
    # the phantoms are drawn once: 16 train + 4 val + 4 test, then only the 16 more train pairs of
    # the larger set
    assert [r["phantoms_drawn"] for r in rows] == [24, 16]
    sets = sorted(p for p in folder.iterdir() if p.name.startswith("set-"))
    assert [len(list((s / "ChestXray" / "train" / "image").glob("*.png"))) for s in sets] == [
        16,
        32,
    ]
    assert synthetic_set(folder, 32, 4, 64)[1] == 0 and synthetic_set(folder, 36, 4, 64)[1] == 4
    projection = result["projection"]
    assert projection["train_pairs"] == 16932 and projection["this_machine_epoch_s"] > 0
    assert projection["gpu_epoch_s"] == max(projection["gpu_model_s"], projection["gpu_data_s"]) > 0
    assert "one Kaggle epoch" in proc.stdout


def test_bench_cohort_mode_times_predict_end_to_end_against_the_model(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    pytest.importorskip(
        "highdicom", reason="mode=cohort writes DICOM SEG: pip install 'lungseg[dicom]'"
    )
    import pydicom

    out, folder = tmp_path / "cohort.json", tmp_path / "films"
    args = [
        sys.executable,
        "-m",
        "lungseg.bench",
        "mode=cohort",
        "device=cpu",
        "batch_size=2",
        "warmup=0",
        "repeats=1",
        "cohort.films=3",
        "cohort.film_px=256",
        "cohort.rounds=2",
        f"cohort.folder={folder}",
    ]
    missing = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "mode=cohort needs a model: cohort.model=" in missing.stderr
    assert "Traceback" not in missing.stderr
    proc, result = run_bench(out, *args[3:], f"cohort.model={tiny_ckpt}")
    rounds = result["rounds"]
    assert len(rounds) == 2
    for key in ("end_to_end_img_s", "model_only_img_s", "predict_model_img_s", "command_img_s"):
        assert (
            result[key] == pytest.approx(statistics.median(r[key] for r in rounds))
            and result[key] > 0
        )
    assert result["share_of_model_only"] == pytest.approx(
        result["end_to_end_img_s"] / result["model_only_img_s"]
    )
    assert result["target_met"] == (result["share_of_model_only"] >= 0.8)
    assert sum(result["counts"].values()) == 3  # every film accounted for: ok, flagged or refused
    segmented = result["counts"].get("ok", 0) + result["counts"].get("flagged", 0)
    assert result["files_written"]["seg"] == segmented == result["files_written"]["masks"]
    films = sorted(folder.rglob("*.dcm"))
    assert len(films) == 3 and result["settings"]["film_sizes"] == ["256x256"]
    film = pydicom.dcmread(films[0])
    assert (film.Modality, film.Rows, [float(v) for v in film.ImagerPixelSpacing]) == (
        "DX",
        256,
        [0.143, 0.143],
    )
    assert f"end to end / model only: {result['share_of_model_only']:.0%}" in proc.stdout
