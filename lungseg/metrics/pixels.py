"""The pixel metrics, defined once and used by training, evaluation and prediction.

All are pooled over every pixel seen in an epoch (as the original reported them), computed from
probabilities: thresholded at ``threshold`` where a hard mask is needed, while AUROC uses the
probabilities themselves over ``auroc_bins`` fixed thresholds (bounded memory on 137M pixels). For
binary masks Dice equals F1, so ``dice`` is torchmetrics' pooled F1 under the name people look for.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryPrecisionRecallCurve,
    BinaryRecall,
    BinaryROC,
    BinarySpecificity,
)


class BinnedAUROC(BinaryAUROC):
    """torchmetrics' binned BinaryAUROC with an O(pixels) update (bucketize + bincount).

    torchmetrics compares every pixel with every threshold, which dominates evaluation at 200 bins;
    this fills the same ``confmat`` state, [threshold, target, prediction], from two histograms, and
    leaves ``compute`` to torchmetrics.
    """

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        thresholds = self.thresholds.to(preds.device, preds.dtype)
        n_t = thresholds.numel()
        # bucket b = number of thresholds <= p, so p >= thresholds[j] exactly for j < b.
        bucket = torch.bucketize(preds, thresholds, right=True)
        target = target.long()
        hist = torch.bincount(bucket + (n_t + 1) * target, minlength=2 * (n_t + 1)).reshape(
            2, n_t + 1
        )
        # (target, threshold): count with p >= t
        at_or_above = hist.flip(1).cumsum(1).flip(1)[:, 1:]
        totals = hist.sum(1, keepdim=True)
        # (target, threshold, pred)
        confmat = torch.stack([totals - at_or_above, at_or_above], dim=-1)
        self.confmat += confmat.permute(1, 0, 2).to(self.confmat.dtype)


def pixel_metrics(
    prefix: str = "", threshold: float = 0.5, auroc_bins: int = 200
) -> MetricCollection:
    """A MetricCollection of the pooled pixel metrics, keys ``<prefix><name>``."""
    kw = {"threshold": threshold, "validate_args": False}
    return MetricCollection(
        {
            "accuracy": BinaryAccuracy(**kw),
            "precision": BinaryPrecision(**kw),
            "recall": BinaryRecall(**kw),
            "f1": BinaryF1Score(**kw),
            "specificity": BinarySpecificity(**kw),
            "iou": BinaryJaccardIndex(**kw),
            "dice": BinaryF1Score(**kw),
            "auroc": BinnedAUROC(thresholds=auroc_bins, validate_args=False),
        },
        prefix=prefix,
        compute_groups=[
            ["accuracy", "precision", "recall", "f1", "specificity", "dice"],
            ["iou"],
            ["auroc"],
        ],
    )


def confusion_matrix(threshold: float = 0.5) -> BinaryConfusionMatrix:
    """Pooled pixel confusion matrix [[TN, FP], [FN, TP]] (rows: truth, columns: prediction)."""
    return BinaryConfusionMatrix(threshold=threshold, validate_args=False)


def flatten(probs: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and {0,1} masks of any shape -> flat float probabilities and int targets."""
    return probs.detach().float().reshape(-1), masks.detach().reshape(-1).long()


class BinnedROC(BinaryROC):
    """torchmetrics' binned BinaryROC curve with BinnedAUROC's O(pixels) update (same state, same
    thresholds)."""

    update = BinnedAUROC.update


class BinnedPRCurve(BinaryPrecisionRecallCurve):
    """torchmetrics' binned BinaryPrecisionRecallCurve with BinnedAUROC's O(pixels) update."""

    update = BinnedAUROC.update


def per_image_overlap(
    probs: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5
) -> dict[str, torch.Tensor]:
    """Per-image Dice and IoU of (N, ...) probabilities vs {0,1} masks; 1.0 when truth and
    prediction are both empty. (Counted directly: torchmetrics' samplewise stat scores squeeze a
    batch of one image away.)"""
    preds = probs.detach().float().flatten(1) >= threshold
    target = masks.detach().flatten(1) > 0.5
    tp, fp, fn = ((preds & target).sum(1), (preds & ~target).sum(1), (~preds & target).sum(1))
    union = (tp + fp + fn).float()
    ones = torch.ones_like(union)
    dice = torch.where(union > 0, 2 * tp / (union + tp).clamp(min=1), ones)
    iou = torch.where(union > 0, tp / union.clamp(min=1), ones)
    return {"dice": dice.float(), "iou": iou.float()}


class ReliabilityBins(Metric):
    """Pixel calibration in bounded memory: count, summed probability and summed truth per
    probability bin.

    torchmetrics' BinaryCalibrationError keeps every pixel (gigabytes on a full test set); these
    per-bin sums give the same ECE (same bins, ``bucketize(right=True) - 1``) and the reliability
    diagram.
    """

    full_state_update = False

    def __init__(self, n_bins: int = 15) -> None:
        super().__init__()
        self.n_bins = n_bins
        self.register_buffer(
            "boundaries", torch.linspace(0, 1, n_bins + 1, dtype=torch.float64), persistent=False
        )
        for name in ("count", "prob_sum", "true_sum"):
            self.add_state(name, torch.zeros(n_bins + 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds = preds.detach().reshape(-1).double()
        index = torch.bucketize(preds, self.boundaries, right=True) - 1
        self.count += torch.bincount(index, minlength=self.n_bins + 1).double()
        self.prob_sum += torch.bincount(index, weights=preds, minlength=self.n_bins + 1)
        self.true_sum += torch.bincount(
            index, weights=target.reshape(-1).double(), minlength=self.n_bins + 1
        )

    def compute(self) -> dict[str, torch.Tensor]:
        """``ece`` (L1, weighted by bin size) and per bin ``confidence``, ``frequency``,
        ``fraction`` (NaN if empty)."""
        confidence, frequency = self.prob_sum / self.count, self.true_sum / self.count
        fraction = self.count / self.count.sum()
        ece = torch.nansum((confidence - frequency).abs() * fraction)
        return {"ece": ece, "confidence": confidence, "frequency": frequency, "fraction": fraction}
