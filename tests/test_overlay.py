"""The one overlay (predict's previews, the evaluation sheet, TensorBoard's grid): lungs tinted by
a lookup table over the grey levels, errors coloured against a reference, the outline drawn."""

from __future__ import annotations

import numpy as np

from lungseg.inference.overlay import BLUE, GREEN, RED, TINT, YELLOW, overlay


def expected_tint(gray: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """(1 - TINT) * grey + TINT * colour per pixel, in float64, rounded."""
    return np.round((1 - TINT) * gray[..., None] + TINT * np.array(colour, float))


def test_overlay_tints_each_region_by_its_colour_and_leaves_the_rest_grey() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (120, 160), dtype=np.uint8)
    mask = np.zeros(gray.shape, bool)
    mask[20:100, 20:70] = True
    truth = np.zeros(gray.shape, bool)
    truth[20:100, 40:120] = True
    inner = np.zeros(gray.shape, bool)  # away from the outline
    inner[25:95, 25:65] = True

    out = overlay(gray, mask)
    assert out.shape == (120, 160, 3) and out.dtype == np.uint8
    assert (out[~mask] == gray[~mask][:, None]).all()  # grey outside
    diff = np.abs(out[inner].astype(int) - expected_tint(gray[inner], GREEN))
    assert diff.max() <= 1  # float32 vs float64 rounding at half levels at most
    assert (out[mask & ~inner] == YELLOW).all(axis=1).any()  # the outline

    errors = overlay(gray, mask, truth)
    regions = {
        GREEN: inner & truth,
        RED: inner & ~truth,
        BLUE: ~mask & truth,
    }
    for colour, region in regions.items():
        assert region.sum() > 500
        diff = np.abs(errors[region].astype(int) - expected_tint(gray[region], colour))
        assert diff.max() <= 1, colour
    neither = ~mask & ~truth
    assert (errors[neither] == gray[neither][:, None]).all()


def test_overlay_shrinks_to_max_size_keeping_the_aspect() -> None:
    gray = np.full((400, 300), 100, np.uint8)
    mask = np.zeros(gray.shape, bool)
    mask[100:300, 50:250] = True
    small = overlay(gray, mask, max_size=200)
    assert small.shape == (200, 150, 3)
    centre = small[100, 75].astype(int)
    np.testing.assert_array_equal(centre, expected_tint(np.array(100), GREEN))
    np.testing.assert_array_equal(small[5, 5], [100, 100, 100])
