"""``lungseg.evaluate`` end to end on a tiny trained model: exactness, report files, figures,
errors, real data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from scipy import ndimage
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lungseg.data.images import load_pair
from lungseg.data.layout import DATASET_DIR, find_pairs
from lungseg.errors import CheckpointError, DataError, LungsegError
from lungseg.evaluate import evaluate
from lungseg.inference.segmenter import LungSegmenter
from lungseg.train import train
from lungseg.training.module import load_module
from tests.helpers import CONF, CXR, ROOT, TINY, cpu_precision, requires_cxr, write_split

TEST_NUMBERS = [50, 52, 54, 56, 58, 61]
FIGURES = (
    "roc",
    "precision_recall",
    "confusion_matrix",
    "training_curves",
    "dice_histogram",
    "predictions",
    "reliability",
)


def _compose(out: Path, name: str, *overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny model trained for 2 epochs at 32 px on disc phantoms; its run folder looks like a real
    run's."""
    tmp = tmp_path_factory.mktemp("evaluate")
    root = tmp / "data"
    write_split(root, "train", [0, 1, 2, 3, 5, 8, 13, 21])
    write_split(root, "val", [30, 31, 32, 40], seed=1)
    write_split(root, "test", TEST_NUMBERS, seed=2)
    run = tmp / "run"
    cfg = _compose(
        run, "train", f"data.root={root}", *TINY, "trainer.max_epochs=2", "optimizer.lr=1e-2"
    )
    metrics = train(cfg)
    yield {"root": root, "run": run, "ckpt": run / "checkpoints" / "best.ckpt", "metrics": metrics}
    GlobalHydra.instance().clear()


@pytest.fixture
def run_eval(trained: dict) -> Callable[..., dict]:
    """Evaluate the tiny model with overrides (data.root defaults to its own data)."""

    def _run(*overrides: str) -> dict:
        base = [f"ckpt_path={trained['ckpt']}"]
        if not any(o.startswith("data.root=") for o in overrides):
            base.append(f"data.root={trained['root']}")
        return evaluate(_compose(trained["run"], "evaluate", *base, *overrides))

    return _run


def _numpy_reference(ckpt: Path, root: Path, size: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Files, fp32 logits and masks of the test split, read and predicted one image at a time."""
    module = load_module(ckpt)
    pairs, problems = find_pairs(root, "test")
    assert not problems
    logits, masks = [], []
    for pair in pairs:
        image, mask = load_pair(pair.image, pair.mask, size)
        with torch.no_grad():
            x = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]
            logits.append(module(x).float().numpy()[0, 0].astype(np.float64))
        masks.append(mask.astype(bool))
    return [str(p.image) for p in pairs], np.stack(logits), np.stack(masks)


def test_every_image_once_and_exact_against_numpy(trained: dict, run_eval, tmp_path: Path) -> None:
    files, logits, truth = _numpy_reference(trained["ckpt"], trained["root"], 32)
    probs = 1 / (1 + np.exp(-logits))
    # splits the tiny model's lung and background
    threshold = float(np.round(np.quantile(probs[truth], 0.3), 4))
    summary = run_eval(f"output_dir={tmp_path / 'out'}", "precision=32", f"threshold={threshold}")
    # recorded in the checkpoint (the run folder has no .hydra/ here)
    assert summary["image_size"] == 32
    assert (
        summary["n_images"] == len(TEST_NUMBERS)
        and summary["n_pixels"] == len(TEST_NUMBERS) * 32 * 32
    )
    with (tmp_path / "out" / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == files  # every image once, in file order
    assert [Path(f).name for f in files] == [f"cxrimage_{n}.png" for n in TEST_NUMBERS]

    pred = probs >= threshold
    tp, fp = int((pred & truth).sum()), int((pred & ~truth).sum())
    fn, tn = int((~pred & truth).sum()), int((~pred & ~truth).sum())
    assert min(tp, fp, fn, tn) > 0  # a real mix, so every ratio is tested
    assert summary["confusion"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    pooled = summary["pooled"]
    expected = {
        "accuracy": (tp + tn) / truth.size,
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "iou": tp / (tp + fp + fn),
        "dice": 2 * tp / (2 * tp + fp + fn),
        "f1": 2 * tp / (2 * tp + fp + fn),
    }
    for name, value in expected.items():
        assert pooled[name] == pytest.approx(value, abs=1e-6), name
    bce = np.maximum(logits, 0) - logits * truth + np.log1p(np.exp(-np.abs(logits)))
    assert pooled["loss"] == pytest.approx(bce.mean(), abs=1e-5)
    # AUROC over the 200 fixed thresholds: trapezoid under (FPR, TPR) at p >= t.
    t = np.linspace(0, 1, 200)
    tpr = (probs[truth][None, :] >= t[:, None]).mean(1)
    fpr = (probs[~truth][None, :] >= t[:, None]).mean(1)
    assert pooled["auroc"] == pytest.approx(np.trapezoid(tpr[::-1], fpr[::-1]), abs=1e-5)
    for row, p, m in zip(rows, pred, truth, strict=True):
        inter, total = (p & m).sum(), p.sum() + m.sum()
        assert float(row["dice"]) == pytest.approx(2 * inter / total if total else 1.0, abs=1e-6)
        assert float(row["iou"]) == pytest.approx(
            inter / (total - inter) if total else 1.0, abs=1e-6
        )
        assert float(row["lung_fraction_true"]) == pytest.approx(m.mean())
        assert float(row["lung_fraction_pred"]) == pytest.approx(p.mean())
    dice = np.array([float(r["dice"]) for r in rows])
    assert summary["per_image"]["dice_mean"] == pytest.approx(dice.mean())
    assert summary["per_image"]["dice_sd"] == pytest.approx(dice.std(ddof=1))

    # Post-processed (as lungseg.predict): scipy's two largest 8-connected components, holes filled.
    counts, clean_dice = np.zeros(3), []
    for row, p, m in zip(rows, pred, truth, strict=True):
        labels, n = ndimage.label(p, structure=np.ones((3, 3)))
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        kept = ndimage.binary_fill_holes(np.isin(labels, np.argsort(areas)[::-1][:2] + 1))
        tp_, fp_, fn_ = (kept & m).sum(), (kept & ~m).sum(), (~kept & m).sum()
        counts += (tp_, fp_, fn_)
        clean_dice.append(2 * tp_ / (2 * tp_ + fp_ + fn_) if tp_ + fp_ + fn_ else 1.0)
        assert float(row["dice_clean"]) == pytest.approx(clean_dice[-1], abs=1e-6)
    clean = summary["postprocessed"]
    assert clean["pooled_dice"] == pytest.approx(
        2 * counts[0] / (2 * counts[0] + counts[1] + counts[2])
    )
    assert clean["dice_mean"] == pytest.approx(np.mean(clean_dice))
    assert clean["hd95_mean"] == pytest.approx(np.mean([float(r["hd95_clean_px"]) for r in rows]))


def test_report_figures_and_tensorboard(trained: dict, run_eval) -> None:
    summary = run_eval("tune_threshold=true", "pixel_spacing_mm=0.5")
    out = trained["run"] / "eval" / "test"  # default: beside the checkpoint's run
    assert Path(summary["output_dir"]) == out
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "accuracy",
        "precision",
        "recall",
        "f1",
        "specificity",
        "iou",
        "dice",
        "auroc",
        "loss",
    ):
        assert 0.0 <= metrics["pooled"][key] <= (1.0 if key != "loss" else 10.0), key
    for key in (
        "dice_mean",
        "dice_sd",
        "iou_mean",
        "hd95_mean",
        "assd_mean",
        "hd95_mm_mean",
        "assd_mm_mean",
    ):
        assert np.isfinite(metrics["per_image"][key]), key
    assert 0 < metrics["tuned"]["threshold"] < 1 and 0 <= metrics["tuned"]["pooled"]["dice"] <= 1
    header = (out / "per_image.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["file", "dice", "iou", "hd95_px", "assd_px", "hd95_mm", "assd_mm"]
    assert {"lung_fraction_true", "lung_fraction_pred"} <= set(header)
    report = (out / "report.md").read_text()
    assert "0.978501" in report and "102,883,876" in report and "Worst 5 images by Dice" in report
    assert "Threshold tuned on the val split" in report and "Expected calibration error" in report
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 10_000, name
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {f"eval/{name}" for name in FIGURES} <= set(events.Tags()["images"])
    # no temp folders left, the lock file
    assert [p.name for p in out.parent.glob(".test.*")] == [".test.lock"]


@pytest.mark.precision
def test_training_test_stage_is_the_same_computation(
    trained: dict, run_eval, tmp_path: Path
) -> None:
    """Training's test stage and evaluate run the same kernels in the same precision (evaluate's
    auto runs the trained one where the device has it), so their numbers agree far inside that
    precision's rounding."""
    summary = run_eval(f"output_dir={tmp_path / 'out'}", "data.batch_size=4", "calibration=false")
    assert summary["precision"] == cpu_precision()
    for name in ("dice", "iou", "accuracy", "auroc", "loss", "precision", "recall"):
        assert summary["pooled"][name] == pytest.approx(
            trained["metrics"][f"test/{name}"], abs=1e-4
        ), name
    # the mean of per-image Dice, as training logs it, equals the report's mean over per_image.csv
    assert summary["per_image"]["dice_mean"] == pytest.approx(
        trained["metrics"]["test/dice_per_image"], abs=1e-5
    )
    # in the checkpoint
    recorded = LungSegmenter.from_checkpoint(trained["ckpt"], "cpu").metadata["test_metrics"]
    assert recorded["test/dice"] == pytest.approx(trained["metrics"]["test/dice"], abs=1e-7)


def test_failed_run_keeps_the_earlier_report(
    trained: dict, run_eval, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "out"
    run_eval(f"output_dir={out}", "calibration=false")
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(LungsegError, match="already exists; pass overwrite=true"):
        run_eval(f"output_dir={out}", "calibration=false")
    with pytest.raises(DataError, match="unknown split 'nope'"):
        run_eval(f"output_dir={out}", "split=nope", "overwrite=true")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("lungseg.evaluation.figures.save_figures", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_eval(f"output_dir={out}", "threshold=0.9", "overwrite=true")
    assert (out / "metrics.json").read_bytes() == before
    # no temp or half-written folders
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def test_bad_inputs_are_one_clear_error_each(trained: dict, run_eval, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained["ckpt"].read_bytes()[:5000])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, foreign)
    cases = [
        (f"ckpt_path={tmp_path / 'none.ckpt'}", CheckpointError, "no such checkpoint"),
        (f"ckpt_path={truncated}", CheckpointError, "truncated or corrupt"),
        (f"ckpt_path={foreign}", CheckpointError, "not a lungseg checkpoint"),
        (f"data.root={tmp_path}", DataError, "no dataset at"),
    ]
    for override, error, message in cases:
        with pytest.raises(error, match=message):
            run_eval(override, f"output_dir={tmp_path / 'out'}")
    wrong = tmp_path / "wrong"
    (wrong / DATASET_DIR / "test" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="folder missing"):
        run_eval(f"data.root={wrong}", f"output_dir={tmp_path / 'out'}")
    assert not (tmp_path / "out").exists()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungseg.evaluate",
            f"ckpt_path={truncated}",
            f"data.root={trained['root']}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        proc.returncode == 2 and proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    )
    assert str(truncated) in proc.stderr


@requires_cxr
def test_tiny_model_on_real_radiographs_end_to_end(run_eval, tmp_path: Path) -> None:
    n_test = len(list((CXR / DATASET_DIR / "test" / "image").iterdir()))
    summary = run_eval(f"data.root={CXR}", f"output_dir={tmp_path / 'cxr'}", "pixel_spacing_mm=0.2")
    assert summary["n_images"] == n_test and summary["split"] == "test"
    assert summary["n_pixels"] == n_test * 32 * 32
    assert (
        np.isfinite(summary["per_image"]["hd95_mm_mean"])
        and summary["per_image"]["hd95_mm_mean"] > 0
    )
    for name in FIGURES:
        assert (tmp_path / "cxr" / f"{name}.png").stat().st_size > 10_000, name
