"""The patient's left and right lungs of a lung mask, measured: area (mm^2 where the film records
its pixel spacing, else pixels), height, and whether the lung touches the film's border.

Which side of the image is the patient's left comes from ``PatientOrientation`` where the film
records it (its first value is the direction of a row: "L" means the patient's left lies to the
image's right), else from the radiographic display convention (patient's right on the image's left,
for PA and AP films alike: ``ViewPosition`` says where the beam entered, not how the image is
displayed). Works for any film: a PNG has no orientation and no spacing, and is split by the
convention in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lungseg.inference.postprocess import components, lookup

if TYPE_CHECKING:
    from lungseg.dicom.read import DicomFilm

SIDE_SOURCES = ("PatientOrientation", "convention")
# A second component smaller than this share of the largest is a speck, not the other lung.
MIN_SECOND_LUNG = 0.1
# One component with at least this share of its pixels on each side of the image centre is both
# lungs joined (across the midline, at the hila or the diaphragm): it is split at the centre.
JOINED_SHARE = 0.2
CSV_COLUMNS = (
    "side_source",
    "spacing_source",
    "area_unit",
    "length_unit",
    "left_lung_area",
    "right_lung_area",
    "left_lung_height",
    "right_lung_height",
    "left_lung_touches_border",
    "right_lung_touches_border",
)


@dataclass(frozen=True)
class Lung:
    """One of the patient's lungs: its mask and measures (units: the owning :class:`Sides`')."""

    mask: np.ndarray  # bool (H, W)
    pixels: int
    area: float  # mm^2 or px
    height: float  # mm or px: top to bottom, along the patient's long axis
    touches_border: bool  # any pixel on the film's outermost rows or columns


@dataclass(frozen=True)
class Sides:
    """A mask split into the patient's left and right lungs, and how the sides and sizes were
    decided."""

    left: Lung
    right: Lung
    side_source: str  # "PatientOrientation" | "convention"
    spacing_source: str | None  # "PixelSpacing" | "ImagerPixelSpacing" | None
    area_unit: str  # "mm2" | "px"
    length_unit: str  # "mm" | "px"

    def stats(self) -> dict[str, Any]:
        """The measures as predictions.csv columns (``CSV_COLUMNS``); areas and heights rounded."""
        return {
            "side_source": self.side_source,
            "spacing_source": self.spacing_source or "",
            "area_unit": self.area_unit,
            "length_unit": self.length_unit,
            "left_lung_area": round(self.left.area, 1),
            "right_lung_area": round(self.right.area, 1),
            "left_lung_height": round(self.left.height, 1),
            "right_lung_height": round(self.right.height, 1),
            "left_lung_touches_border": self.left.touches_border,
            "right_lung_touches_border": self.right.touches_border,
        }


def left_on_image(patient_orientation: tuple[str, ...] | list[str] = ()) -> tuple[str, str]:
    """Where the patient's left lies: ("right" | "left" | "bottom" | "top" of the image, the
    source).

    ``PatientOrientation`` names the patient directions of increasing column ("L": the image's right
    is the patient's left) and of increasing row; a film turned a quarter has L or R in its second
    value."""
    values = [str(v).upper() for v in patient_orientation][:2]
    for axis, value in enumerate(values):
        for letter in value:  # compound values ("LF", "FL": a tilted film): the first L or R
            if letter in "LR":
                towards = ("right", "bottom")[axis] if letter == "L" else ("left", "top")[axis]
                return towards, "PatientOrientation"
    return "right", "convention"


def _lung(mask: np.ndarray, axis: int, spacing: tuple[float, float]) -> Lung:
    """Measure one lung; ``axis`` is the image axis across the patient (1: columns), the height runs
    along the other one."""
    pixels = int(np.count_nonzero(mask))
    along = 1 - axis  # the patient's long axis: rows for an upright film
    extent = np.flatnonzero(mask.any(axis=axis))  # the rows (upright) the lung reaches
    height = float(extent[-1] - extent[0] + 1) * spacing[along] if pixels else 0.0
    border = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    return Lung(mask, pixels, pixels * spacing[0] * spacing[1], height, border)


def split_sides(
    mask: np.ndarray,
    patient_orientation: tuple[str, ...] | list[str] = (),
    pixel_spacing: tuple[float, float] | None = None,
    spacing_source: str | None = None,
) -> Sides:
    """Split a lung mask (H, W) into the patient's left and right lungs and measure them.

    Every component goes to one side, so the two lungs together are the mask: the two largest
    components are the lungs and each component goes to the side of its centre relative to the line
    midway between theirs. Without a second lung (one missing, or both joined across the midline)
    the line is the image centre, and a largest component with ``JOINED_SHARE`` of its pixels on
    each side of it is split there.

    ``pixel_spacing``: (between rows, between columns) in mm, as DICOM records it; None measures in
    pixels."""
    mask = np.asarray(mask)
    mask = mask if mask.dtype == np.bool_ else mask > 0
    towards, side_source = left_on_image(patient_orientation)
    axis = 1 if towards in ("left", "right") else 0  # the image axis across the patient
    labels, areas, centroids = components(mask)
    order = np.argsort(areas[1:])[::-1] + 1
    centre = (mask.shape[axis] - 1) / 2
    centres = centroids[:, 1 - axis]  # centroids are (x, y): the column for an upright film
    two = len(order) >= 2 and areas[order[1]] >= MIN_SECOND_LUNG * areas[order[0]]
    line = (centres[order[0]] + centres[order[1]]) / 2 if two else centre
    high_side = centres > line
    high_side[0] = False  # the background
    high = lookup(labels, high_side).view(bool)
    if not two and len(order):
        main = labels == order[0]
        beyond = np.zeros(mask.shape, bool)  # the pixels past the image centre across the patient
        first = int(np.floor(centre)) + 1
        beyond[
            (slice(None), slice(first, None)) if axis == 1 else (slice(first, None), slice(None))
        ] = True
        share = np.count_nonzero(main & beyond) / areas[order[0]]
        if JOINED_SHARE <= share <= 1 - JOINED_SHARE:  # both lungs joined: split at the centre
            high = (high & ~main) | (main & beyond)
    low = mask & ~high
    left, right = (high, low) if towards in ("right", "bottom") else (low, high)
    spacing = pixel_spacing if pixel_spacing is not None else (1.0, 1.0)
    measured = pixel_spacing is not None
    units = ("mm2", "mm") if measured else ("px", "px")
    return Sides(
        _lung(left, axis, spacing),
        _lung(right, axis, spacing),
        side_source,
        spacing_source if measured else None,
        *units,
    )


def split_film(mask: np.ndarray, film: DicomFilm | None = None) -> Sides:
    """:func:`split_sides` with a DICOM film's orientation and pixel spacing (``film`` None: any
    other film)."""
    if film is None:
        return split_sides(mask)
    if mask.shape != (film.rows, film.columns):
        from lungseg.errors import DataError

        raise DataError(
            f"{film.path}: mask of {mask.shape[1]}x{mask.shape[0]} px for a film of "
            f"{film.columns}x{film.rows} px; split the mask at the film's own size"
        )
    return split_sides(mask, film.patient_orientation, film.pixel_spacing, film.spacing_source)
