"""Evaluate a checkpoint on one split: ``python -m lungseg.evaluate ckpt_path=... data.root=... [split=test]``.

Every image of the split is predicted once, in file order, on its un-augmented pixels. Pooled pixel
metrics come from ``lungseg.metrics`` (the same objects the training's test stage logs), per-image
boundary distances from ``lungseg.surface``, figures from ``lungseg.figures``; the report is written
to a temp folder and renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from lungseg.checkpoint import load_module
from lungseg.config import CONFIG_DIR
from lungseg.data.dataset import LungDataset
from lungseg.errors import CheckpointError, exit_on_user_error
from lungseg.inference import autocast, model_image_size, pick_device, resolve_precision, run_dir
from lungseg.metrics import (
    BinnedPRCurve,
    BinnedROC,
    ReliabilityBins,
    confusion_matrix,
    dice_iou,
    flatten,
    mask_counts,
    per_image_overlap,
    pixel_metrics,
)
from lungseg.module import LungSegModule
from lungseg.postprocess import clean_mask
from lungseg.surface import surface_distances

log = logging.getLogger(__name__)


def batches(dataset: LungDataset, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Every item of ``dataset`` exactly once, in order (no shuffling, no augmentation)."""
    if dataset.transform is not None:
        raise ValueError("evaluation needs an un-augmented dataset (transform=None)")
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


@torch.no_grad()
def predict(module: LungSegModule, images: torch.Tensor, precision: str = "auto") -> torch.Tensor:
    """Logits (fp32) of a batch of images, under training's autocast; the module handles channels_last."""
    device = module.device
    with autocast(device, precision):
        return module(images.to(device)).float().cpu()


def choose_threshold(module: LungSegModule, dataset: LungDataset, batch_size: int, precision: str = "auto",
                     bins: int = 200) -> tuple[float, float]:
    """The threshold (of ``bins`` fixed ones) with the highest pooled Dice (= F1) on ``dataset``, and that Dice."""
    curve = BinnedPRCurve(thresholds=bins, validate_args=False)
    for batch in batches(dataset, batch_size):
        curve.update(*flatten(torch.sigmoid(predict(module, batch["image"], precision)), batch["mask"]))
    prec, rec, thresholds = curve.compute()
    f1 = torch.nan_to_num(2 * prec[:-1] * rec[:-1] / (prec[:-1] + rec[:-1]))
    best = int(torch.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def _spacing(path: Path, size: int, mm: Any) -> tuple[float, float] | None:
    """mm per evaluated pixel (row, col): the original file's spacing scaled by its size / ``size``."""
    if mm is None:
        return None
    from PIL import Image

    row_mm, col_mm = (float(mm), float(mm)) if isinstance(mm, (int, float)) else (float(mm[0]), float(mm[1]))
    with Image.open(path) as im:  # reads the header only
        width, height = im.size
    return row_mm * height / size, col_mm * width / size


def _cleaned_row(pred: np.ndarray, truth: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """Per-image metrics of ``pred`` after lungseg.predict's post-processing (two largest components, holes
    filled); adds its TP, FP, FN to ``counts``."""
    cleaned = clean_mask(pred.astype(np.uint8)) > 0
    tp_fp_fn = mask_counts(cleaned, truth)
    counts += tp_fp_fn
    dice, iou = dice_iou(*tp_fp_fn)
    dist = surface_distances(cleaned, truth)
    return {"dice_clean": dice, "iou_clean": iou, "hd95_clean_px": dist.hd95, "assd_clean_px": dist.assd}


def evaluate_dataset(module: LungSegModule, dataset: LungDataset, batch_size: int = 8, threshold: float = 0.5,
                     extra_thresholds: tuple[float, ...] = (), auroc_bins: int = 200, calibration_bins: int = 15,
                     precision: str = "auto", pixel_spacing_mm: Any = None) -> dict[str, Any]:
    """Predict every image once and return pooled metrics, curves, calibration and one row per image."""
    thresholds = (threshold, *extra_thresholds)
    pooled = [pixel_metrics(threshold=t, auroc_bins=auroc_bins) for t in thresholds]
    confusion, loss = confusion_matrix(threshold), MeanMetric()
    roc, pr = BinnedROC(thresholds=auroc_bins, validate_args=False), BinnedPRCurve(thresholds=auroc_bins,
                                                                                   validate_args=False)
    reliability, rows, seen = ReliabilityBins(calibration_bins), [], []
    cleaned_counts = np.zeros(3, np.int64)  # TP, FP, FN of the post-processed masks, pooled
    for batch in batches(dataset, batch_size):
        logits, masks = predict(module, batch["image"], precision), batch["mask"]
        probs = torch.sigmoid(logits)
        preds, target = flatten(probs, masks)
        for collection in pooled:
            collection.update(preds, target)
        for metric in (confusion, roc, pr, reliability):
            metric.update(preds, target)
        loss.update(module.loss_fn(logits, masks), weight=masks.numel())
        overlaps = [per_image_overlap(probs, masks, t) for t in thresholds]
        for k, index in enumerate(batch["index"].tolist()):
            pred, truth = (probs[k, 0] >= threshold).numpy(), masks[k, 0].numpy() > 0.5
            path = dataset.pairs[index].image
            row = {"file": str(path), "dice": float(overlaps[0]["dice"][k]), "iou": float(overlaps[0]["iou"][k])}
            dist = surface_distances(pred, truth)
            row.update(hd95_px=dist.hd95, assd_px=dist.assd)
            spacing = _spacing(path, dataset.image_size, pixel_spacing_mm)
            if spacing is not None:
                dist_mm = surface_distances(pred, truth, spacing)
                row.update(hd95_mm=dist_mm.hd95, assd_mm=dist_mm.assd)
            row.update(lung_fraction_true=float(truth.mean()), lung_fraction_pred=float(pred.mean()),
                       empty=dist.empty)
            row.update(_cleaned_row(pred, truth, cleaned_counts))
            for t, extra in zip(extra_thresholds, overlaps[1:], strict=True):
                row.update({f"dice@{t:.4g}": float(extra["dice"][k]), f"iou@{t:.4g}": float(extra["iou"][k])})
            rows.append(row)
            seen.append(index)
    if seen != list(range(len(dataset))):
        raise RuntimeError(f"evaluated items {seen[:10]}... are not each of the {len(dataset)} items once in order")
    results = [{k: float(v) for k, v in c.compute().items()} for c in pooled]
    for r in results:
        r["loss"] = float(loss.compute())
        r["balanced_accuracy"] = (r["recall"] + r["specificity"]) / 2  # what the original called "AUC"
    cleaned = dict(zip(("dice", "iou"), dice_iou(*(int(v) for v in cleaned_counts)), strict=True))
    return {"thresholds": thresholds, "pooled": results, "pooled_clean": cleaned,
            "confusion": confusion.compute().numpy(),
            "roc": [x.numpy() for x in roc.compute()], "pr": [x.numpy() for x in pr.compute()],
            "calibration": {k: v.numpy() for k, v in reliability.compute().items()}, "rows": rows}


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished report folder into place, replacing an earlier one only now."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Load, check, evaluate and write the report; return the metrics.json content."""
    from lungseg import report  # matplotlib only when there is something to draw

    if not cfg.get("ckpt_path"):
        raise CheckpointError("no checkpoint given; pass ckpt_path=outputs/<run>/checkpoints/best.ckpt")
    ckpt_path = Path(cfg.ckpt_path)
    device = pick_device(cfg.device)
    module = load_module(ckpt_path, map_location=device)
    size = model_image_size(ckpt_path, cfg.data.image_size, module.net.divisor, cfg.default_image_size)
    datamodule = instantiate(cfg.data, image_size=int(size), train_transform=None, eval_transform=None)
    dataset = datamodule.dataset(cfg.split)
    val = datamodule.dataset("val") if cfg.tune_threshold else None
    log.info("evaluating %s on %s/%s: %d images at %d px", ckpt_path, cfg.data.root, cfg.split, len(dataset), size)

    tuned = None
    if val is not None:
        tuned = choose_threshold(module, val, cfg.data.batch_size, cfg.precision, cfg.auroc_bins)
        log.info("threshold with the best val Dice: %.4f (Dice %.4f)", *tuned)
    results = evaluate_dataset(module, dataset, cfg.data.batch_size, cfg.threshold, (tuned[0],) if tuned else (),
                               cfg.auroc_bins, cfg.calibration_bins, cfg.precision, cfg.pixel_spacing_mm)
    meta = {"checkpoint": str(ckpt_path), "data_root": str(cfg.data.root), "split": cfg.split,
            "image_size": int(size), "threshold": cfg.threshold, "device": str(device),
            "precision": resolve_precision(device, cfg.precision)}

    out = Path(cfg.output_dir) if cfg.get("output_dir") else run_dir(ckpt_path) / "eval" / cfg.split
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        summary = report.write_report(tmp, results, meta, tuned, module, dataset, cfg,
                                      run_dir(ckpt_path) / "tensorboard")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("report written to %s", out)
    summary["output_dir"] = str(out)
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Evaluate and print the headline numbers."""
    summary = evaluate(cfg)
    pooled, per_image = summary["pooled"], summary["per_image"]
    print(f"{summary['n_images']} images: pooled Dice {pooled['dice']:.4f}, IoU {pooled['iou']:.4f}, "
          f"AUROC {pooled['auroc']:.4f}; per-image Dice {per_image['dice_mean']:.4f} ± {per_image['dice_sd']:.4f}, "
          f"HD95 {per_image['hd95_mean']:.2f} px, ASSD {per_image['assd_mean']:.2f} px")
    clean = summary["postprocessed"]
    print(f"post-processed (two largest components, holes filled): pooled Dice {clean['pooled_dice']:.4f}; "
          f"per-image Dice {clean['dice_mean']:.4f} ± {clean['dice_sd']:.4f}, HD95 {clean['hd95_mean']:.2f} px, "
          f"ASSD {clean['assd_mean']:.2f} px -> {summary['output_dir']}")


if __name__ == "__main__":
    main()
