"""Synthetic DICOM radiographs for the DICOM tests: a DX film with the attributes a hospital's
export carries."""

from __future__ import annotations

import numpy as np

from lungseg.dicom.film import DX_FOR_PRESENTATION, dx_dataset, write_dx

__all__ = ["DX_FOR_PRESENTATION", "chest_phantom", "dx_dataset", "write_dx"]


def chest_phantom(h: int = 240, w: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A 12-bit chest-like film (bright body, two dark lung ellipses) and its two-lung mask
    (bool)."""
    import cv2

    yy, xx = np.mgrid[:h, :w]
    film = (2600 + 300 * np.sin(yy / 17.0) * np.cos(xx / 23.0)).astype(np.float64)
    mask = np.zeros((h, w), np.uint8)
    for cx in (int(w * 0.3), int(w * 0.7)):
        cv2.ellipse(mask, (cx, int(h * 0.45)), (int(w * 0.13), int(h * 0.3)), 0, 0, 360, 1, -1)
    film[mask > 0] = 900 + 80 * np.sin(xx[mask > 0] / 5.0)
    return np.clip(film, 0, 4095).astype(np.uint16), mask > 0
