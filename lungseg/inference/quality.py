"""How far to trust one mask: a quality score that estimates its Dice, from what the model and the
mask show.

Everything is measured at the model's input size (the same numbers whatever the film's size, and in
predict, evaluate and the API alike) on the probability map and the mask the segmenter delivers
(thresholded, and cleaned when it post-processes):

- ``expected_dice``: the mask's Dice against the model's own probabilities (the soft Dice 2 sum(p m)
  / (sum p + sum m)): what Dice the model expects if its probabilities were the truth. Low where
  many pixels sit near 0.5.
- ``border_entropy``: the mean binary entropy of the probabilities in a band around the mask's
  border.
- ``flip_dice``, ``zoom_dice``, ``tta_dice`` (with TTA only): the Dice between the mask and the mask
  of the same film mirrored left-right, or zoomed out by ``ZOOM`` (each mapped back), and the lower
  of the two: a model that changes its mind under a harmless change is guessing.
- shape: ``lung_fraction``, ``components`` (large ones, before cleaning), ``balance`` (the smaller
  image half's mask area over the larger's), ``height`` and ``height_balance`` (the taller lung's
  height, the shorter's over it), ``solidity``, ``holes`` (the share of the filled mask that was
  holes before cleaning).

:func:`score` combines them (the formula and how it was chosen are documented there); a mask
``needs_review`` below the operating point, ``REVIEW_BELOW`` unless set. ``python -m
lungseg.evaluate split=val`` reports the score against the true Dice and suggests the operating
point (:func:`operating_point`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from lungseg.inference.postprocess import clean_mask, fill_holes, image_half_areas, large_components
from lungseg.metrics import mask_dice

ZOOM = 0.9  # the zoomed-out TTA view: the film shrunk about its centre (training saw 0.9-1.1)
BAD_DICE = 0.90  # a film below this Dice is one the score must flag
REVIEW_BUDGET = 0.25  # the operating point flags at most this share of the val films
REVIEW_BELOW = 0.929  # chosen on val by operating_point (docs/quality.md)
TTA_FEATURES = ("flip_dice", "zoom_dice", "tta_dice")  # present only with TTA
# score(): weights chosen on val (docs/quality.md)
ENTROPY_WEIGHT, TYPICAL_ENTROPY, SHAPE_WEIGHT = 0.4, 0.64, 0.25
# plausibility(): what every training mask of the real set shows (lowest values, at 128 px;
# docs/quality.md)
SHAPE_LIMITS = {
    "lung_fraction": 0.21,
    "max_lung_fraction": 0.61,
    "balance": 0.54,
    "solidity": 0.79,
    "height": 0.47,
    "height_balance": 0.74,
}


@dataclass(frozen=True)
class QualitySettings:
    """How masks are scored: ``tta`` adds the flip and zoom views (two more forward passes per
    film); ``review_below``: the operating point, a mask scoring below it ``needs_review``."""

    tta: bool = False
    review_below: float = REVIEW_BELOW


def soft_dice(mask: np.ndarray, prob: np.ndarray) -> float:
    """Dice of a {0,1} mask against probabilities; an empty mask where the model sees no lung is
    1."""
    m = mask.astype(np.float32, copy=False)
    denominator = float(m.sum() + prob.sum())
    return 2 * float((m * prob).sum()) / denominator if denominator else 1.0


def shape_features(raw: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Shape of the thresholded mask ``raw`` (components, holes: what cleaning hides) and the
    delivered ``mask``: lung fraction, left/right balance of the image halves, the taller lung's
    height (a share of the image's) and the shorter's over the taller's (a lung cut short by
    consolidation or effusion)."""
    components = large_components(raw)
    filled = int(fill_holes(raw).sum())
    left, right = image_half_areas(mask)
    n, _, boxes, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    lungs = boxes[1:][np.argsort(boxes[1:, cv2.CC_STAT_AREA])[::-1][:2]]
    heights = lungs[:, cv2.CC_STAT_HEIGHT] / mask.shape[0]
    return {
        "lung_fraction": float(mask.mean()),
        "components": float(components),
        "balance": min(left, right) / max(left, right) if max(left, right) else 0.0,
        "height": float(heights.max()) if n > 1 else 0.0,
        "height_balance": float(heights.min() / heights.max()) if n > 1 else 0.0,
        "holes": (filled - int(raw.sum())) / filled if filled else 0.0,
    }


def solidity(mask: np.ndarray) -> float:
    """The least convex of the two largest components: its area over its convex hull's (1: convex; a
    lung with a bite taken out of it is lower). An empty mask: 0."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    largest = sorted(contours, key=cv2.contourArea, reverse=True)[:2]
    ratios = [cv2.contourArea(c) / max(cv2.contourArea(cv2.convexHull(c)), 1e-9) for c in largest]
    return float(min(ratios)) if ratios else 0.0


def border_entropy(mask: np.ndarray, prob: np.ndarray) -> float:
    """Mean binary entropy (bits) of the probabilities in a band around the mask's border (width
    1/32 of the image): how unsure the model is where the lung ends."""
    k = max(3, 2 * (mask.shape[0] // 64) + 1)
    kernel = np.ones((k, k), np.uint8)
    band = cv2.dilate(mask, kernel) > cv2.erode(mask, kernel)
    if not band.any():
        return 0.0
    p = np.clip(prob[band], 1e-6, 1 - 1e-6)
    return float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(1 - p))))


def zoom_matrix(size: int, zoom: float = ZOOM) -> np.ndarray:
    """The affine map of a (size, size) image shrunk by ``zoom`` about its centre."""
    c = (size - 1) / 2
    return cv2.getRotationMatrix2D((c, c), 0, zoom)


def tta_inputs(images: np.ndarray) -> np.ndarray:
    """The TTA views of preprocessed images (N, 1, s, s): mirrored, then zoomed out (edges
    replicated, as the training augmentation fills); (2N, 1, s, s)."""
    size = images.shape[-1]
    matrix = zoom_matrix(size)
    zoomed = np.stack(
        [
            cv2.warpAffine(
                x[0], matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )[None]
            for x in images
        ]
    )
    return np.concatenate([images[..., ::-1], zoomed]).astype(np.float32, copy=False)


def tta_outputs(probs: np.ndarray) -> np.ndarray:
    """The probabilities (2N, 1, s, s) of :func:`tta_inputs`' views mapped back onto the films: (N,
    2, s, s)."""
    n, size = len(probs) // 2, probs.shape[-1]
    matrix = zoom_matrix(size)
    mirrored = probs[:n, 0, :, ::-1]
    unzoomed = np.stack(
        [
            cv2.warpAffine(
                p[0],
                matrix,
                (size, size),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
            for p in probs[n:]
        ]
    )
    return np.ascontiguousarray(np.stack([mirrored, unzoomed], axis=1), dtype=np.float32)


def features(
    prob: np.ndarray, threshold: float, postprocess: bool = True, views: np.ndarray | None = None
) -> dict[str, float]:
    """Every quality feature of one film from its probabilities (s, s) at the model's size and, with
    TTA, its views' probabilities (V, s, s) mapped back."""
    raw = (prob >= threshold).astype(np.uint8)
    mask = clean_mask(raw) if postprocess else raw
    out = {
        "expected_dice": soft_dice(mask, prob),
        "border_entropy": border_entropy(mask, prob),
        "solidity": solidity(mask),
        **shape_features(raw, mask),
    }
    if views is not None:
        for name, view in zip(("flip_dice", "zoom_dice"), views, strict=True):
            other = (view >= threshold).astype(np.uint8)
            out[name] = mask_dice(mask, clean_mask(other) if postprocess else other)
        out["tta_dice"] = min(out["flip_dice"], out["zoom_dice"])
    return out


def _within(value: float, limit: float) -> float:
    """1 at or above ``limit``, falling linearly to 0 at half of it."""
    return float(np.clip(2 * value / limit - 1, 0, 1))


def plausibility(f: dict[str, float]) -> float:
    """How much the mask looks like a pair of lungs, in [0, 1]: 1 within what every training mask
    shows (``SHAPE_LIMITS``: lung fraction, image-half balance, solidity, the taller lung's height,
    the shorter's over the taller's; two large components and no holes), falling to 0 at half of
    each limit; a raw mask with other than two large components counts 0.6 at most (most such masks
    are poor: docs/quality.md), holes 5 x their share."""
    lim = SHAPE_LIMITS
    return min(
        _within(f["lung_fraction"], lim["lung_fraction"]),
        _within(1 - f["lung_fraction"], 1 - lim["max_lung_fraction"]),
        *(_within(f[k], lim[k]) for k in ("balance", "solidity", "height", "height_balance")),
        1.0 if f["components"] == 2 else 0.6,
        float(np.clip(1 - 5 * f["holes"], 0, 1)),
    )


def score(f: dict[str, float]) -> float:
    """The quality score, an estimate of the mask's Dice in [0, 1]:

        clip(agreement + 0.4 (0.64 - border_entropy) + 0.25 (plausibility - 1), 0, 1)

    ``agreement`` is the expected Dice, or with TTA the lowest of it and the flip and zoom
    agreements. The border entropy adds what the expected Dice misses, plausibility catches
    confident but misshapen masks, and the entropy's typical value centres the score on the clean
    films' mean Dice so that it reads as a Dice. The weights were chosen on the val split only (how,
    and how well they rank films: docs/quality.md)."""
    agreement = min(f["expected_dice"], f.get("tta_dice", 1.0))
    uncertainty = ENTROPY_WEIGHT * (TYPICAL_ENTROPY - f["border_entropy"])
    return float(np.clip(agreement + uncertainty + SHAPE_WEIGHT * (plausibility(f) - 1), 0.0, 1.0))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (scipy's; NaN when either side is constant or has fewer than 3
    values)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def review_figures(
    scores: Sequence[float], dice: Sequence[float], review_below: float, bad_dice: float = BAD_DICE
) -> dict[str, Any]:
    """How well the score sorts films: Spearman with the true Dice, the share of films flagged at
    ``review_below`` and the share of films under ``bad_dice`` that are flagged (None where
    undefined: no film under ``bad_dice``, or a constant score or Dice)."""
    s, d = np.asarray(scores, np.float64), np.asarray(dice, np.float64)
    flagged, bad = s < review_below, d < bad_dice
    rho = spearman(s, d)
    return {
        "spearman": rho if np.isfinite(rho) else None,
        "review_below": float(review_below),
        "bad_dice": bad_dice,
        "n_images": int(len(s)),
        "n_flagged": int(flagged.sum()),
        "flagged_share": float(flagged.mean()),
        "n_bad": int(bad.sum()),
        "bad_flagged_share": float(flagged[bad].mean()) if bad.any() else None,
    }


def operating_point(scores: Sequence[float], budget: float = REVIEW_BUDGET) -> float:
    """The highest threshold that flags at most ``budget`` of the films (scores below it): the
    review budget the issue allows spent on the least trusted films, so that as many bad films as
    possible are caught. Choose it on val; it is the k+1-th lowest score, k = floor(budget n)."""
    s = np.sort(np.asarray(scores, np.float64))
    k = int(np.floor(budget * len(s) + 1e-9))
    return float(s[k]) if k < len(s) else float(np.nextafter(s[-1], np.inf))
