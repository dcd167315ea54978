"""The one overlay: a radiograph with its predicted lungs tinted and outlined, and with a reference
mask the errors coloured (used by predict's previews, the evaluation sheet and TensorBoard's
prediction grid)."""

from __future__ import annotations

import cv2
import numpy as np

GREEN, RED, BLUE, YELLOW = (0, 255, 0), (255, 0, 0), (0, 0, 255), (255, 255, 0)  # RGB
TINT = 0.35  # weight of the colour over the dimmed radiograph


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as uint8 grayscale."""
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def tint_table(colour: tuple[int, int, int]) -> np.ndarray:
    """The tinted RGB of each grey level, as a (256, 1, 3) lookup table for ``cv2.LUT``: what
    ``(1 - TINT) * grey + TINT * colour`` rounds to in float32, 10x faster than computing it per
    pixel."""
    levels = np.arange(256, dtype=np.float32)[:, None]
    tinted = (1 - TINT) * levels + TINT * np.array(colour, np.float32)
    return np.clip(np.round(tinted), 0, 255).astype(np.uint8)[:, None, :]


def overlay(
    gray: np.ndarray, mask: np.ndarray, truth: np.ndarray | None = None, max_size: int | None = None
) -> np.ndarray:
    """RGB uint8 image of ``gray`` (uint8, H x W) with ``mask`` tinted green and outlined in yellow;
    given ``truth``, predicted-but-not-true pixels are red and missed lung blue. The longest side is
    at most ``max_size`` (None: the input's size)."""
    mask = (np.asarray(mask) > 0).astype(np.uint8)
    truth = None if truth is None else (np.asarray(truth) > 0).astype(np.uint8)
    scale = max_size / max(gray.shape) if max_size else 1.0
    if scale < 1:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        if truth is not None:
            truth = cv2.resize(truth, size, interpolation=cv2.INTER_NEAREST)
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    out = rgb.copy()
    regions = (
        [(mask, GREEN)]
        if truth is None
        else [
            (mask & truth, GREEN),
            (mask & (truth == 0), RED),
            ((mask == 0) & truth, BLUE),
        ]
    )
    for region, colour in regions:
        cv2.copyTo(cv2.LUT(rgb, tint_table(colour)), region, out)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, YELLOW, max(1, round(max(mask.shape) / 400)))
    return out
