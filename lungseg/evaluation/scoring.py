"""Scoring a model on one split: every image predicted once, in file order, on its un-augmented
pixels; pooled pixel metrics (``lungseg.metrics.pixels``, the objects training's test stage logs),
per-image overlap and boundary distances, the masks as ``lungseg.predict`` finishes them with their
quality score, curves and calibration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from lungseg.data.dataset import LungDataset
from lungseg.evaluation.summary import sample_indices
from lungseg.evaluation.surface import surface_distances
from lungseg.inference.segmenter import LungSegmenter
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


def batches(dataset: LungDataset, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Every item of ``dataset`` exactly once, in order (no shuffling, no augmentation)."""
    if dataset.transform is not None:
        raise ValueError("evaluation needs an un-augmented dataset (transform=None)")
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def choose_threshold(
    seg: LungSegmenter, dataset: LungDataset, batch_size: int, bins: int = 200
) -> tuple[float, float]:
    """The threshold (of ``bins`` fixed ones) with the highest pooled Dice (= F1) on ``dataset``,
    and that Dice."""
    curve = BinnedPRCurve(thresholds=bins, validate_args=False)
    for batch in batches(dataset, batch_size):
        curve.update(*flatten(torch.sigmoid(seg.logits(batch["image"])), batch["mask"]))
    prec, rec, thresholds = curve.compute()
    f1 = torch.nan_to_num(2 * prec[:-1] * rec[:-1] / (prec[:-1] + rec[:-1]))
    best = int(torch.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def _spacing(path: Path, size: int, mm: Any) -> tuple[float, float] | None:
    """mm per evaluated pixel (row, col): the original file's spacing scaled by its size /
    ``size``."""
    if mm is None:
        return None
    from PIL import Image

    row_mm, col_mm = (
        (float(mm), float(mm)) if isinstance(mm, (int, float)) else (float(mm[0]), float(mm[1]))
    )
    with Image.open(path) as im:  # reads the header only
        width, height = im.size
    return row_mm * height / size, col_mm * width / size


def oriented_logits(
    seg: LungSegmenter, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list[dict[str, float] | None]]:
    """A batch as the segmenter reads it (``LungSegmenter.orient``: with ``polarity="auto"`` a film
    that reads clearly better inverted is inverted): (images, their logits, which were inverted,
    quality features)."""
    logits = seg.logits(images)
    oriented, _, inverted, found = seg.orient(images.numpy(), torch.sigmoid(logits).numpy())
    if inverted.any():
        images = torch.from_numpy(oriented)
        logits = seg.logits(images)
    return images, logits, inverted, found


def _cleaned_row(
    seg: LungSegmenter,
    gray: np.ndarray,
    prob: np.ndarray,
    truth: np.ndarray,
    counts: np.ndarray,
    views: np.ndarray | None = None,
    inverted: bool = False,
    found: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Per-image metrics of the mask as lungseg.predict finishes it (thresholded, two largest
    components kept, holes filled: ``LungSegmenter.finish``) and its quality score; adds its TP, FP,
    FN to ``counts``."""
    result = seg.finish(gray, prob, views, inverted, found)
    tp_fp_fn = mask_counts(result.mask, truth)
    counts += tp_fp_fn
    dice, iou = dice_iou(*tp_fp_fn)
    dist = surface_distances(result.mask, truth)
    return {
        "dice_clean": dice,
        "iou_clean": iou,
        "hd95_clean_px": dist.hd95,
        "assd_clean_px": dist.assd,
        "quality_score": result.quality_score,
        "needs_review": result.needs_review,
        "inverted": result.inverted,
    }


def score_split(
    seg: LungSegmenter,
    dataset: LungDataset,
    batch_size: int = 8,
    extra_thresholds: tuple[float, ...] = (),
    auroc_bins: int = 200,
    calibration_bins: int = 15,
    pixel_spacing_mm: Any = None,
) -> dict[str, Any]:
    """Predict every image once (at ``seg``'s threshold) and return pooled metrics, curves,
    calibration and one row per image (with the quality score of the post-processed mask); the loss
    is BCE on the logits, whatever the model was trained with."""
    threshold = seg.threshold
    thresholds = (threshold, *extra_thresholds)
    pooled = [pixel_metrics(threshold=t, auroc_bins=auroc_bins) for t in thresholds]
    confusion, loss = confusion_matrix(threshold), MeanMetric()
    roc, pr = (
        BinnedROC(thresholds=auroc_bins, validate_args=False),
        BinnedPRCurve(thresholds=auroc_bins, validate_args=False),
    )
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
            row = {
                "file": str(path),
                "dice": float(overlaps[0]["dice"][k]),
                "iou": float(overlaps[0]["iou"][k]),
            }
            dist = surface_distances(pred, truth)
            row.update(hd95_px=dist.hd95, assd_px=dist.assd)
            spacing = _spacing(path, dataset.image_size, pixel_spacing_mm)
            if spacing is not None:
                dist_mm = surface_distances(pred, truth, spacing)
                row.update(hd95_mm=dist_mm.hd95, assd_mm=dist_mm.assd)
            row.update(
                lung_fraction_true=float(truth.mean()),
                lung_fraction_pred=float(pred.mean()),
                empty=dist.empty,
            )
            gray = dataset.raw(index)[0]
            row.update(
                _cleaned_row(
                    seg,
                    gray,
                    probs[k, 0].numpy(),
                    truth,
                    cleaned_counts,
                    None if views is None else views[k],
                    bool(inverted[k]),
                    found[k],
                )
            )
            for t, extra in zip(extra_thresholds, overlaps[1:], strict=True):
                row.update(
                    {
                        f"dice@{t:.4g}": float(extra["dice"][k]),
                        f"iou@{t:.4g}": float(extra["iou"][k]),
                    }
                )
            rows.append(row)
            seen.append(index)
    if seen != list(range(len(dataset))):
        raise RuntimeError(
            f"evaluated items {seen[:10]}... are not each of the {len(dataset)} items once in order"
        )
    results = [{k: float(v) for k, v in c.compute().items()} for c in pooled]
    for r in results:
        r["loss"] = float(loss.compute())
        # what the original called "AUC"
        r["balanced_accuracy"] = (r["recall"] + r["specificity"]) / 2
    cleaned = dict(zip(("dice", "iou"), dice_iou(*(int(v) for v in cleaned_counts)), strict=True))
    return {
        "thresholds": thresholds,
        "pooled": results,
        "pooled_clean": cleaned,
        "confusion": confusion.compute().numpy(),
        "roc": [x.numpy() for x in roc.compute()],
        "pr": [x.numpy() for x in pr.compute()],
        "calibration": {k: v.numpy() for k, v in reliability.compute().items()},
        "rows": rows,
    }


def sample_predictions(
    seg: LungSegmenter,
    dataset: LungDataset,
    rows: list[dict[str, Any]],
    n_samples: int,
    n_worst: int,
) -> dict[str, Any]:
    """The report's sample sheet as arrays: the worst images by Dice and evenly spaced others, with
    their probabilities and titles."""
    picks = sample_indices(rows, n_samples, n_worst)
    items = [dataset[i] for i in picks]
    images, masks = (
        torch.stack([it["image"] for it in items]),
        torch.stack([it["mask"] for it in items]),
    )
    titles = [
        f"{'worst: ' if k < n_worst else ''}{Path(rows[i]['file']).name}  Dice "
        f"{rows[i]['dice']:.3f}, "
        f"quality {rows[i]['quality_score']:.3f}"
        for k, i in enumerate(picks)
    ]
    images, logits, _, _ = oriented_logits(seg, images)
    return {"images": images, "masks": masks, "probs": torch.sigmoid(logits), "titles": titles}
