"""The patient's left and right lungs (lungseg.inference.sides): areas in mm^2 from the film's pixel
spacing to 1 %, sides from PatientOrientation or the display convention, a mask split into two
lungs that together are the mask."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungseg.dicom.read import read_film
from lungseg.errors import DataError
from lungseg.inference.sides import CSV_COLUMNS, left_on_image, split_film, split_sides
from tests.dicom_films import write_dx

# Two lungs of known physical size on a 2000 x 1600 film: ellipses with semi-axes in mm.
ROWS, COLS = 2000, 1600
IMAGE_LEFT_LUNG = {"centre_mm": (105.0, 60.0), "axes_mm": (45.0, 85.0)}  # (down, across) both
IMAGE_RIGHT_LUNG = {"centre_mm": (105.0, 175.0), "axes_mm": (40.0, 80.0)}


def drawn_mask(spacing: tuple[float, float]) -> np.ndarray:
    """The two ellipses drawn at a (row, column) spacing in mm: x in columns, y in rows."""
    mask = np.zeros((ROWS, COLS), np.uint8)
    row_mm, col_mm = spacing
    for lung in (IMAGE_LEFT_LUNG, IMAGE_RIGHT_LUNG):
        (cy, cx), (ay, ax) = lung["centre_mm"], lung["axes_mm"][::-1]
        centre = (round(cx / col_mm), round(cy / row_mm))
        cv2.ellipse(mask, centre, (round(ax / col_mm), round(ay / row_mm)), 0, 0, 360, 1, -1)
    return mask > 0


def area_mm2(lung: dict) -> float:
    return math.pi * lung["axes_mm"][0] * lung["axes_mm"][1]


@pytest.mark.parametrize(
    "keyword, spacing", [("PixelSpacing", (0.1, 0.14)), ("ImagerPixelSpacing", (0.148, 0.148))]
)
def test_areas_and_heights_in_mm_from_the_films_spacing_to_one_percent(
    tmp_path: Path, keyword: str, spacing: tuple[float, float]
) -> None:
    mask = drawn_mask(spacing)
    path = write_dx(
        tmp_path / "film.dcm",
        np.full((ROWS, COLS), 2000, np.uint16),
        **{keyword: list(spacing)},
        PatientOrientation=["L", "F"],
    )
    sides = split_film(mask, read_film(path))
    assert (sides.spacing_source, sides.area_unit, sides.length_unit) == (keyword, "mm2", "mm")
    assert sides.side_source == "PatientOrientation"
    # "L": the patient's left lies to the image's right
    assert sides.left.area == pytest.approx(area_mm2(IMAGE_RIGHT_LUNG), rel=0.01)
    assert sides.right.area == pytest.approx(area_mm2(IMAGE_LEFT_LUNG), rel=0.01)
    assert sides.left.height == pytest.approx(2 * IMAGE_RIGHT_LUNG["axes_mm"][1], rel=0.01)
    assert sides.right.height == pytest.approx(2 * IMAGE_LEFT_LUNG["axes_mm"][1], rel=0.01)
    assert not sides.left.touches_border and not sides.right.touches_border
    assert np.array_equal(sides.left.mask | sides.right.mask, mask)
    assert not (sides.left.mask & sides.right.mask).any()
    stats = sides.stats()
    assert tuple(stats) == CSV_COLUMNS and stats["left_lung_area"] == round(sides.left.area, 1)


def test_orientation_flips_swap_the_sides_and_the_convention_is_said(tmp_path: Path) -> None:
    mask = drawn_mask((0.2, 0.2))
    film = np.full((ROWS, COLS), 2000, np.uint16)

    def split(name: str, **attributes: object):
        return split_film(mask, read_film(write_dx(tmp_path / name, film, **attributes)))

    as_displayed = split("a.dcm", PatientOrientation=["L", "F"])
    mirrored = split("b.dcm", PatientOrientation=["R", "F"])
    assert np.array_equal(as_displayed.left.mask, mirrored.right.mask)
    assert np.array_equal(as_displayed.right.mask, mirrored.left.mask)
    # no PatientOrientation: the display convention (patient's right on the image's left), AP too
    for view in ("PA", "AP"):
        plain = split("c.dcm", PatientOrientation=None, ViewPosition=view)
        assert plain.side_source == "convention"
        assert np.array_equal(plain.left.mask, as_displayed.left.mask)
    # no spacing: pixels
    assert (plain.area_unit, plain.spacing_source) == ("px", None)
    assert plain.left.area == plain.left.pixels == int(as_displayed.left.mask.sum())
    # a film turned a quarter: L/R in the second value, the lungs above each other
    turned = np.ascontiguousarray(np.rot90(mask))  # the image's right column becomes the top row
    quarter = split_sides(turned, ("F", "R"))  # so down a column runs to the patient's right
    assert quarter.side_source == "PatientOrientation"
    assert np.array_equal(quarter.left.mask, np.rot90(as_displayed.left.mask))
    assert np.array_equal(quarter.right.mask, np.rot90(as_displayed.right.mask))
    assert left_on_image(("P", "R")) == ("top", "PatientOrientation")
    assert left_on_image(("LF", "FR")) == ("right", "PatientOrientation")
    assert left_on_image(()) == ("right", "convention")


def test_joined_lungs_split_at_the_centre_and_specks_follow_their_side() -> None:
    mask = np.zeros((200, 200), bool)
    mask[40:160, 30:170] = True  # both lungs joined across the midline
    joined = split_sides(mask)
    assert joined.left.pixels == joined.right.pixels == 120 * 70
    one = np.zeros((200, 200), bool)
    one[40:160, 20:80] = True  # one lung only, on the image's left: the patient's right
    single = split_sides(one)
    assert single.right.pixels == int(one.sum())
    assert (single.left.pixels, single.left.height) == (0, 0)
    specks = one.copy()
    specks[100:104, 180:184] = True  # a speck far on the other side: not the other lung
    assert split_sides(specks).left.pixels == 16
    two = drawn_mask((0.5, 0.5))[:600, :500]
    two[0, 100] = two[300, 499] = True  # touching the top and right borders
    sides = split_sides(two)
    assert sides.left.touches_border and sides.right.touches_border


def test_a_mask_of_another_size_than_the_film_is_refused(tmp_path: Path) -> None:
    film = read_film(write_dx(tmp_path / "a.dcm", np.zeros((100, 80), np.uint16)))
    with pytest.raises(DataError, match=r"a.dcm: mask of 90x100 px for a film of 80x100 px"):
        split_film(np.zeros((100, 90), bool), film)
