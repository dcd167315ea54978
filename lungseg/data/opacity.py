"""LungOpacity: synthetic airspace opacity inside the lung, for training only (image changed, mask
kept).

The hardest films in small CXR sets are supine AP films with dense consolidation or effusion: the
lung is still lung in the reference mask, but its pixels look like soft tissue, and a model that
learned "lung = dark, textured" cuts it out. This transform paints smooth, patchy haze of
soft-tissue brightness over random parts of the lung field, so the model must use the outline (ribs,
diaphragm, mediastinum) rather than the darkness alone.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from albumentations.core.transforms_interface import DualTransform


class LungOpacity(DualTransform):
    """Blend patchy haze of soft-tissue brightness into the lung field of a uint8 grayscale image.

    The haze is a smooth random field (a ``grid`` x ``grid`` uniform draw, bicubically upsampled),
    thresholded at a random ``coverage`` quantile so only part of the lung is hit (reaching full
    strength ``ramp`` above the threshold), feathered at the lung edge, and scaled by a peak opacity
    drawn from ``alpha``. Its brightness is the image's own soft tissue: a percentile
    (``tissue_percentile``) of the pixels outside the lung. The mask is returned unchanged.
    """

    def __init__(
        self,
        alpha: tuple[float, float] = (0.4, 0.85),
        coverage: tuple[float, float] = (0.2, 0.7),
        grid: tuple[int, int] = (3, 6),
        tissue_percentile: tuple[float, float] = (75.0, 97.0),
        feather: float = 4.0,
        ramp: float = 0.1,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        for name, (lo, hi), bounds in (
            ("alpha", alpha, (0, 1)),
            ("coverage", coverage, (0, 1)),
            ("tissue_percentile", tissue_percentile, (0, 100)),
        ):
            if not bounds[0] <= lo <= hi <= bounds[1]:
                raise ValueError(
                    f"LungOpacity.{name} must be a range within {list(bounds)}, got {[lo, hi]}"
                )
        if not 2 <= grid[0] <= grid[1]:
            raise ValueError(
                f"LungOpacity.grid must be a range of at least 2 cells, got {list(grid)}"
            )
        self.alpha, self.coverage, self.grid = tuple(alpha), tuple(coverage), tuple(grid)
        self.tissue_percentile, self.feather, self.ramp = tuple(tissue_percentile), feather, ramp

    @property
    def targets_as_params(self) -> list[str]:
        """The mask says where the lung is."""
        return ["mask"]

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        """The per-pixel opacity map (float32, 0 outside the lung) and the haze brightness."""
        image, mask = data["image"], np.asarray(data["mask"]) > 0
        rng = self.random_generator
        if not mask.any() or mask.all():
            return {"opacity": None, "tissue": 0.0}
        cells = int(rng.integers(self.grid[0], self.grid[1] + 1))
        h, w = mask.shape[:2]
        field = cv2.resize(
            rng.random((cells, cells), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC
        )
        cut = np.quantile(field[mask], 1.0 - rng.uniform(*self.coverage))
        # full opacity a little inside the patch edge
        patch = np.clip((field - cut) / self.ramp, 0.0, 1.0)
        lung = (
            cv2.GaussianBlur(mask.astype(np.float32), (0, 0), self.feather)
            if self.feather > 0
            else mask
        )
        opacity = (rng.uniform(*self.alpha) * patch * lung).astype(np.float32)
        tissue = float(
            np.percentile(np.asarray(image)[~mask], rng.uniform(*self.tissue_percentile))
        )
        return {"opacity": opacity, "tissue": tissue}

    def apply(
        self, img: np.ndarray, opacity: np.ndarray | None = None, tissue: float = 0.0, **params: Any
    ) -> np.ndarray:
        """Blend the image towards ``tissue`` by ``opacity``."""
        if opacity is None:
            return img
        a = opacity if img.ndim == 2 else opacity[..., None]
        out = img.astype(np.float32) * (1.0 - a) + tissue * a
        return np.clip(np.rint(out), 0, 255).astype(img.dtype)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        """The lung is still lung under the haze."""
        return mask

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """For albumentations' serialisation and repr."""
        return ("alpha", "coverage", "grid", "tissue_percentile", "feather", "ramp")
