"""Per-image boundary distances between a predicted and a true mask: HD95 and ASSD.

torchmetrics has only the maximum Hausdorff distance (and a distance transform that is quadratic in
memory), so these are written here on scipy's exact Euclidean distance transform, in the MONAI /
DeepMind convention:

- the surface of a mask is its pixels with a 4-neighbour outside it (the image frame counts as
  outside);
- ``d(A->B)`` is, for every surface pixel of A, the distance to the nearest surface pixel of B;
- HD95 = max(95th percentile of d(P->T), 95th percentile of d(T->P)) (``np.percentile``, linear);
- ASSD = mean of all d(P->T) and d(T->P) together.

Distances are in pixels, or in mm when ``spacing`` (row, column mm per pixel) is given.
Empty masks have defined values: both empty -> 0 (perfect agreement); exactly one empty -> the
image diagonal (the largest distance the image allows), never NaN or infinity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class SurfaceDistances:
    """HD95 and ASSD of one image, and which mask (if any) was empty: '', 'truth', 'prediction' or
    'both'."""

    hd95: float
    assd: float
    empty: str = ""


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean surface (boundary) pixels of a 2-D mask: in the mask with a 4-neighbour outside
    it."""
    mask = np.asarray(mask, bool)
    return mask & ~ndimage.binary_erosion(mask, CROSS, border_value=0)


def directed_distances(
    source: np.ndarray, target: np.ndarray, spacing: tuple[float, float]
) -> np.ndarray:
    """For each surface pixel of ``source``, the distance to the nearest surface pixel of
    ``target``."""
    to_target = ndimage.distance_transform_edt(~surface(target), sampling=spacing)
    return to_target[surface(source)]


def diagonal(shape: tuple[int, ...], spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Length of the image diagonal: the value HD95 and ASSD take when exactly one mask is empty."""
    return math.hypot(shape[0] * spacing[0], shape[1] * spacing[1])


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)
) -> SurfaceDistances:
    """HD95 and ASSD between two 2-D masks of the same shape (see the module docstring for
    conventions)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"expected two 2-D masks of one shape, got {pred.shape} and {truth.shape}")
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not (has_pred and has_truth):
        if not (has_pred or has_truth):
            return SurfaceDistances(0.0, 0.0, "both")
        worst = diagonal(pred.shape, spacing)
        return SurfaceDistances(worst, worst, "truth" if has_pred else "prediction")
    d_pt = directed_distances(pred, truth, spacing)
    d_tp = directed_distances(truth, pred, spacing)
    hd95 = max(float(np.percentile(d_pt, 95)), float(np.percentile(d_tp, 95)))
    assd = float((d_pt.sum() + d_tp.sum()) / (d_pt.size + d_tp.size))
    return SurfaceDistances(hd95, assd)
