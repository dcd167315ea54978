"""Segmentation metrics: Dice and IoU of two masks here (numpy, no torch: the ONNX predict path uses
them too); the pooled pixel metrics of training and evaluation (torchmetrics) in
``lungseg.metrics.pixels``."""

from __future__ import annotations

import numpy as np


def mask_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """TP, FP, FN pixels of two boolean masks of the same shape."""
    return int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())


def dice_iou(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """Dice and IoU from pixel counts; nothing predicted and nothing true is a perfect match (1,
    1)."""
    union = tp + fp + fn
    return (2 * tp / (union + tp), tp / union) if union else (1.0, 1.0)


def mask_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two masks (anything above 0 is lung; both empty: 1): the one definition of the Dice
    of two masks."""
    return dice_iou(*mask_counts(np.asarray(pred) > 0, np.asarray(truth) > 0))[0]
