"""Film artefacts of real acquisitions, as training transforms: collimator shutters and burnt-in
annotation text.

Radiographs from other sites arrive with black shutter borders where the collimator blocked the
beam, and with annotation burnt into the pixels (side markers, patient id, date). albumentations has
no transform for either; these draw their own random geometry and text (not the robustness
benchmark's, which stays a held-out test).
"""

from __future__ import annotations

import string
from typing import Any

import cv2
import numpy as np
from albumentations.core.transforms_interface import DualTransform, ImageOnlyTransform

SIDES = ("top", "bottom", "left", "right")


def _check_range(
    owner: str, name: str, value: tuple[float, float], low: float, high: float
) -> tuple[float, float]:
    lo, hi = value
    if not low <= lo <= hi <= high:
        raise ValueError(f"{owner}.{name} must be a range within [{low}, {high}], got {[lo, hi]}")
    return float(lo), float(hi)


class CollimatorShutters(DualTransform):
    """Dark shutters over 1-4 edges of the film, each ``width`` (a fraction of the side) wide, of a
    dark grey from ``value``; the lung under a shutter is gone from the image, so it is removed from
    the mask too."""

    def __init__(
        self,
        width: tuple[float, float] = (0.02, 0.2),
        value: tuple[float, float] = (0, 40),
        p: float = 0.3,
    ) -> None:
        super().__init__(p=p)
        self.width = _check_range("CollimatorShutters", "width", width, 0, 0.45)
        self.value = _check_range("CollimatorShutters", "value", value, 0, 255)

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        """Which sides are shuttered, how far in (pixels), and the shutter's grey."""
        h, w = params["shape"][:2]
        rng = self.random_generator
        sides = [s for s in SIDES if rng.random() < 0.5] or [SIDES[int(rng.integers(4))]]
        cuts = {
            s: int(rng.uniform(*self.width) * (h if s in ("top", "bottom") else w)) for s in sides
        }
        return {"cuts": cuts, "fill": int(rng.uniform(*self.value))}

    @staticmethod
    def _shutter(array: np.ndarray, cuts: dict[str, int], fill: int) -> np.ndarray:
        out = array.copy()
        h, w = out.shape[:2]
        regions = {
            "top": np.s_[: cuts.get("top", 0)],
            "bottom": np.s_[h - cuts.get("bottom", 0) :],
            "left": np.s_[:, : cuts.get("left", 0)],
            "right": np.s_[:, w - cuts.get("right", 0) :],
        }
        for side, n in cuts.items():
            if n:
                out[regions[side]] = fill
        return out

    def apply(
        self, img: np.ndarray, cuts: dict[str, int] | None = None, fill: int = 0, **params: Any
    ) -> np.ndarray:
        return self._shutter(img, cuts or {}, fill)

    def apply_to_mask(
        self, mask: np.ndarray, cuts: dict[str, int] | None = None, **params: Any
    ) -> np.ndarray:
        return self._shutter(mask, cuts or {}, 0)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("width", "value")


class BurntInText(ImageOnlyTransform):
    """``lines`` short random strings (letters, digits, dates) burnt into the image in white or
    light grey, at random places and sizes (``height``: a fraction of the image height); the mask is
    unchanged."""

    def __init__(
        self,
        lines: tuple[int, int] = (1, 5),
        height: tuple[float, float] = (0.02, 0.06),
        p: float = 0.3,
    ) -> None:
        super().__init__(p=p)
        self.lines = (int(lines[0]), int(lines[1]))
        if not 1 <= self.lines[0] <= self.lines[1]:
            raise ValueError(
                f"BurntInText.lines must be a range of at least 1 line, got {list(lines)}"
            )
        self.height = _check_range("BurntInText", "height", height, 0.005, 0.25)

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        """Each line's text, origin (fractions of the image), height and grey."""
        rng = self.random_generator
        alphabet = np.array(list(string.ascii_uppercase + string.digits + " -:/."))
        lines = []
        for _ in range(int(rng.integers(self.lines[0], self.lines[1] + 1))):
            text = "".join(rng.choice(alphabet, int(rng.integers(1, 16)))).strip() or "R"
            lines.append(
                (
                    text,
                    (float(rng.uniform(0.0, 0.8)), float(rng.uniform(0.05, 1.0))),
                    float(rng.uniform(*self.height)),
                    int(rng.uniform(200, 256)),
                )
            )
        return {"text_lines": lines}

    def apply(self, img: np.ndarray, text_lines: list | None = None, **params: Any) -> np.ndarray:
        out = np.ascontiguousarray(img).copy()
        h, w = out.shape[:2]
        for text, (x, y), height, grey in text_lines or []:
            scale = height * h / 22  # FONT_HERSHEY_SIMPLEX is about 22 px tall at scale 1
            cv2.putText(
                out,
                text,
                (int(x * w), int(y * h)),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                grey,
                max(1, round(scale * 2)),
                cv2.LINE_AA,
            )
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("lines", "height")
