"""Cleaning a predicted lung mask (two largest components, holes filled) and measuring it for
predictions.csv.

Sides are named by the **image**, not the patient: ``area_image_left_px`` counts mask pixels in the
left ``W // 2`` columns of the image (an odd width's middle column goes right); on a PA radiograph
in the usual orientation that is the patient's *right* lung.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# A component counts as "large" (a lung, not a speck) above this fraction of the image.
LARGE_COMPONENT_FRACTION = 0.01


@dataclass(frozen=True)
class PlausibilityLimits:
    """When a mask looks implausible: lung fraction outside [min, max] or more than
    ``max_components`` large parts."""

    min_lung_fraction: float = 0.10
    max_lung_fraction: float = 0.70
    max_components: int = 2


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected labels of a {0,1} mask, the pixel area of each label (index 0 is the background)
    and each label's centroid (x, y)."""
    # WithStats counts areas and centroids in its labelling pass: 3x cheaper at 2048 px than
    # np.bincount on the labels. Grana's block-based labelling gives the same labels, areas and
    # centroids as OpenCV's default (Spaghetti) and is 1.7x faster with the statistics.
    _, labels, stats, centroids = cv2.connectedComponentsWithStatsWithAlgorithm(
        mask.astype(np.uint8, copy=False), 8, cv2.CV_32S, cv2.CCL_GRANA
    )
    return labels, stats[:, cv2.CC_STAT_AREA].astype(np.int64), centroids


def component_areas(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels of a {0,1} mask and the pixel area of each label (index 0 is the
    background)."""
    labels, areas, _ = components(mask)
    return labels, areas


def lookup(labels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[labels]`` as uint8 for a label image: through OpenCV's lookup table when there are at
    most 256 labels (3x faster at 2048 px than numpy's fancy indexing)."""
    table = np.asarray(table).astype(np.uint8)
    if len(table) > 256:
        return table[labels]
    return cv2.LUT(labels.astype(np.uint8), np.pad(table, (0, 256 - len(table))))


def _keep(labels: np.ndarray, areas: np.ndarray, n: int) -> np.ndarray:
    keep = np.zeros(len(areas), np.uint8)
    keep[np.argsort(areas[1:])[::-1][:n] + 1] = 1
    return lookup(labels, keep)


def keep_largest(mask: np.ndarray, n: int = 2) -> np.ndarray:
    """Keep the ``n`` largest connected components (the two lungs) of a {0,1} mask."""
    return _keep(*component_areas(mask), n)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not reach the image border (holes inside a lung)."""
    # Same result as scipy's binary_fill_holes (4-connected background): a flood fill of the
    # background from a one-pixel frame, 10x faster at 2048 px than labelling the background.
    framed = cv2.copyMakeBorder(
        (np.asarray(mask) > 0).view(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0
    )
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)
    return (framed[1:-1, 1:-1] != 2).view(np.uint8)


def clean_mask(mask: np.ndarray, n_components: int = 2) -> np.ndarray:
    """The default post-processing: keep the ``n_components`` largest components, then fill their
    holes."""
    return fill_holes(keep_largest(mask, n_components))


def _large(areas: np.ndarray, size: int) -> int:
    return int((areas[1:] > LARGE_COMPONENT_FRACTION * size).sum())


def large_components(mask: np.ndarray) -> int:
    """How many components cover more than ``LARGE_COMPONENT_FRACTION`` of the image."""
    return _large(component_areas(mask)[1], mask.size)


def image_half_areas(mask: np.ndarray) -> tuple[int, int]:
    """Mask pixels in the image's left and right halves (the image's sides, not the patient's:
    ``sides``)."""
    half = mask.shape[1] // 2
    return int(np.count_nonzero(mask[:, :half])), int(np.count_nonzero(mask[:, half:]))


def plausibility_flags(
    final: np.ndarray, n_large: int, limits: PlausibilityLimits = PlausibilityLimits()
) -> list[str]:
    """Reasons a mask looks implausible (empty: plausible); ``n_large`` is counted before
    post-processing."""
    flags = []
    fraction = float(np.count_nonzero(final) / final.size)
    if not final.any():
        flags.append("no_lung")
    elif not limits.min_lung_fraction <= fraction <= limits.max_lung_fraction:
        flags.append(f"lung_fraction_{'low' if fraction < limits.min_lung_fraction else 'high'}")
    if n_large > limits.max_components:
        flags.append("too_many_components")
    return flags


def mask_stats(
    final: np.ndarray, n_large: int, limits: PlausibilityLimits = PlausibilityLimits()
) -> dict[str, object]:
    """The predictions.csv measures of one mask: lung fraction, image-left/right areas, large
    components, plausibility."""
    flags = plausibility_flags(final, n_large, limits)
    left, right = image_half_areas(final)
    return {
        "height": final.shape[0],
        "width": final.shape[1],
        "lung_fraction": round(float(np.count_nonzero(final) / final.size), 5),
        "area_image_left_px": left,
        "area_image_right_px": right,
        "large_components": n_large,
        "plausibility": ";".join(flags) if flags else "ok",
    }


def finish_mask(
    raw: np.ndarray, clean: bool = True, limits: PlausibilityLimits = PlausibilityLimits()
) -> tuple[np.ndarray, dict[str, object]]:
    """Thresholded mask -> final mask (cleaned when ``clean``) and its measures; components are
    labelled once."""
    labels, areas = component_areas(raw)
    final = fill_holes(_keep(labels, areas, 2)) if clean else raw
    return final, mask_stats(final, _large(areas, raw.size), limits)
