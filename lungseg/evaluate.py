"""Evaluate a checkpoint on one split: ``python -m lungseg.evaluate ckpt_path=... data.root=... [split=test]``.

Every image of the split is predicted once, in file order, on its un-augmented pixels. Pooled pixel
metrics come from ``lungseg.metrics.pixels`` (the same objects the training's test stage logs), per-image
boundary distances from ``lungseg.evaluation.surface``, figures from ``lungseg.evaluation.figures``; the report is written
to a temp folder and renamed into place only when complete.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from lungseg.atomic import atomic_dir, output_lock
from lungseg.config import CONFIG_DIR, command_line
from lungseg.data.dataset import LungDataset
from lungseg.errors import CheckpointError, exit_on_user_error
from lungseg.evaluation import report
from lungseg.evaluation.review import describe, review_counts
from lungseg.evaluation.surface import surface_distances
from lungseg.inference.segmenter import LungSegmenter, model_sources
from lungseg.metrics import dice_iou, mask_counts
from lungseg.metrics.pixels import (
    BinnedPRCurve,
    BinnedROC,
    ReliabilityBins,
    confusion_matrix,
    flatten,
    per_image_overlap,
    pixel_metrics,
)
from lungseg.resolvers import checkpoint_run
from lungseg.settings import check_evaluate, refuse_existing, writable_dir

log = logging.getLogger(__name__)


def batches(dataset: LungDataset, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Every item of ``dataset`` exactly once, in order (no shuffling, no augmentation)."""
    if dataset.transform is not None:
        raise ValueError("evaluation needs an un-augmented dataset (transform=None)")
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def choose_threshold(seg: LungSegmenter, dataset: LungDataset, batch_size: int, bins: int = 200) -> tuple[float, float]:
    """The threshold (of ``bins`` fixed ones) with the highest pooled Dice (= F1) on ``dataset``, and that Dice."""
    curve = BinnedPRCurve(thresholds=bins, validate_args=False)
    for batch in batches(dataset, batch_size):
        curve.update(*flatten(torch.sigmoid(seg.logits(batch["image"])), batch["mask"]))
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


def oriented_logits(seg: LungSegmenter, images: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list[dict[str, float] | None]]:
    """A batch as the segmenter reads it (``LungSegmenter.orient``: with ``polarity="auto"`` a film that reads
    clearly better inverted is inverted): (images, their logits, which were inverted, quality features)."""
    logits = seg.logits(images)
    oriented, _, inverted, found = seg.orient(images.numpy(), torch.sigmoid(logits).numpy())
    if inverted.any():
        images = torch.from_numpy(oriented)
        logits = seg.logits(images)
    return images, logits, inverted, found


def _cleaned_row(seg: LungSegmenter, gray: np.ndarray, prob: np.ndarray, truth: np.ndarray,
                 counts: np.ndarray, views: np.ndarray | None = None, inverted: bool = False,
                 found: dict[str, float] | None = None) -> dict[str, Any]:
    """Per-image metrics of the mask as lungseg.predict finishes it (thresholded, two largest components kept,
    holes filled: ``LungSegmenter.finish``) and its quality score; adds its TP, FP, FN to ``counts``."""
    result = seg.finish(gray, prob, views, inverted, found)
    tp_fp_fn = mask_counts(result.mask, truth)
    counts += tp_fp_fn
    dice, iou = dice_iou(*tp_fp_fn)
    dist = surface_distances(result.mask, truth)
    return {"dice_clean": dice, "iou_clean": iou, "hd95_clean_px": dist.hd95, "assd_clean_px": dist.assd,
            "quality_score": result.quality_score, "needs_review": result.needs_review, "inverted": result.inverted}


def evaluate_dataset(seg: LungSegmenter, dataset: LungDataset, batch_size: int = 8,
                     extra_thresholds: tuple[float, ...] = (), auroc_bins: int = 200, calibration_bins: int = 15,
                     pixel_spacing_mm: Any = None) -> dict[str, Any]:
    """Predict every image once (at ``seg``'s threshold) and return pooled metrics, curves, calibration and one
    row per image (with the quality score of the post-processed mask); the loss is BCE on the logits, whatever
    the model was trained with."""
    threshold = seg.threshold
    thresholds = (threshold, *extra_thresholds)
    pooled = [pixel_metrics(threshold=t, auroc_bins=auroc_bins) for t in thresholds]
    confusion, loss = confusion_matrix(threshold), MeanMetric()
    roc, pr = BinnedROC(thresholds=auroc_bins, validate_args=False), BinnedPRCurve(thresholds=auroc_bins,
                                                                                   validate_args=False)
    reliability, rows, seen = ReliabilityBins(calibration_bins), [], []
    cleaned_counts = np.zeros(3, np.int64)  # TP, FP, FN of the post-processed masks, pooled
    for batch in batches(dataset, batch_size):
        images, logits, inverted, found = oriented_logits(seg, batch["image"])
        masks = batch["mask"]
        views = seg.quality_views(images.numpy())
        probs = torch.sigmoid(logits)
        preds, target = flatten(probs, masks)
        for collection in pooled:
            collection.update(preds, target)
        for metric in (confusion, roc, pr, reliability):
            metric.update(preds, target)
        loss.update(F.binary_cross_entropy_with_logits(logits, masks), weight=masks.numel())
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
            gray = dataset.raw(index)[0]
            row.update(_cleaned_row(seg, gray, probs[k, 0].numpy(), truth, cleaned_counts,
                                    None if views is None else views[k], bool(inverted[k]), found[k]))
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


def run_dir(ckpt_path: str | Path) -> Path:
    """The training run of a checkpoint: the parent of ``checkpoints/``, else the checkpoint's folder (where the
    report goes by default, and where training curves are looked for)."""
    ckpt_path = Path(ckpt_path).resolve()
    return checkpoint_run(ckpt_path) or ckpt_path.parent


def sample_predictions(seg: LungSegmenter, dataset: LungDataset, rows: list[dict[str, Any]], n_samples: int,
                       n_worst: int) -> dict[str, Any]:
    """The report's sample sheet as arrays: the worst images by Dice and evenly spaced others, with their
    probabilities and titles."""
    picks = report.sample_indices(rows, n_samples, n_worst)
    items = [dataset[i] for i in picks]
    images, masks = torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items])
    titles = [f"{'worst: ' if k < n_worst else ''}{Path(rows[i]['file']).name}  Dice {rows[i]['dice']:.3f}, "
              f"quality {rows[i]['quality_score']:.3f}" for k, i in enumerate(picks)]
    images, logits, _, _ = oriented_logits(seg, images)
    return {"images": images, "masks": masks, "probs": torch.sigmoid(logits), "titles": titles}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Load, check, evaluate and write the report; return the metrics.json content."""
    if not cfg.get("ckpt_path") and not cfg.get("model_path"):
        raise CheckpointError("no model given; pass ckpt_path=outputs/<run>/checkpoints/best.ckpt (or model_path=DIR, "
                              "a pretrained folder)")
    check_evaluate(cfg)
    reviewed = review_counts(cfg.review, required=True) if cfg.get("review") else None  # checked first
    sources = model_sources(cfg.get("ckpt_path") or cfg.get("model_path"))
    name = cfg.split if len(sources) == 1 else f"{cfg.split}-ensemble-of-{len(sources)}"
    out = Path(cfg.output_dir) if cfg.get("output_dir") else run_dir(sources[0]) / "eval" / name
    refuse_existing(out, "output_dir", bool(cfg.overwrite))
    writable_dir(out.parent, "output_dir")
    seg = LungSegmenter.load(sources, str(cfg.device), cfg.precision, cfg.data.image_size,
                             threshold=cfg.get("threshold"), quality_tta=bool(cfg.quality.tta),
                             review_below=cfg.quality.review_below, polarity=str(cfg.polarity))
    source = Path(sources[0])  # an ensemble's report goes beside its first member's run, named for the ensemble
    size = seg.image_size
    datamodule = instantiate(cfg.data, image_size=int(size), train_transform=None,
                             intensity=seg.description.intensity)  # the model's own input rule
    dataset = datamodule.dataset(cfg.split)
    val = datamodule.dataset("val") if cfg.tune_threshold else None
    log.info("evaluating %s on %s/%s: %d images at %d px", source, cfg.data.root, cfg.split, len(dataset), size)

    tuned = None
    if val is not None:
        tuned = choose_threshold(seg, val, cfg.data.batch_size, cfg.auroc_bins)
        log.info("threshold with the best val Dice: %.4f (Dice %.4f)", *tuned)
    results = evaluate_dataset(seg, dataset, cfg.data.batch_size, (tuned[0],) if tuned else (), cfg.auroc_bins,
                               cfg.calibration_bins, cfg.pixel_spacing_mm)
    meta = {"checkpoint": sources[0] if len(sources) == 1 else sources, "data_root": str(cfg.data.root),
            "split": cfg.split,
            "image_size": int(size), "threshold": seg.threshold, "device": str(seg.device),
            "precision": seg.precision, "quality_tta": seg.scoring.tta, "review_below": seg.scoring.threshold}
    if reviewed:
        meta["review"] = reviewed  # lungseg-review's decisions on a prediction folder (review=)
    samples = sample_predictions(seg, dataset, results["rows"], cfg.n_samples, cfg.n_worst)

    with output_lock(out, "output_dir"), atomic_dir(out) as staged:  # the earlier report stays whole until now
        refuse_existing(out, "output_dir", bool(cfg.overwrite))  # again: another run may have written it meanwhile
        summary = report.write_report(staged, results, meta, tuned, samples, cfg, run_dir(source) / "tensorboard")
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
    q = summary["quality"]
    rho = "undefined" if q["spearman"] is None else f"{q['spearman']:.3f}"
    bad = (f"{q['n_bad']} under Dice {q['bad_dice']:.2f}, {q['bad_flagged_share']:.0%} of them flagged" if q["n_bad"]
           else f"none under Dice {q['bad_dice']:.2f}")
    print(f"quality score vs Dice: Spearman {rho}; at quality.review_below={q['review_below']:.4f} "
          f"{q['n_flagged']}/{q['n_images']} flagged ({q['flagged_share']:.0%}), {bad}; the highest operating point "
          f"flagging at most a quarter of this split: quality.review_below={q['suggested_review_below']:.4f} "
          f"(choose it on val)")
    if summary.get("review"):
        print(describe(summary["review"]))


cli = command_line(main)

if __name__ == "__main__":
    cli()
