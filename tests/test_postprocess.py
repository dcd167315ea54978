"""Post-processing of predicted masks: spurious blobs removed, both lungs kept, holes filled,
measures and flags."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lungseg.inference.postprocess import (
    PlausibilityLimits,
    clean_mask,
    components,
    fill_holes,
    finish_mask,
    keep_largest,
    large_components,
)


def two_lungs(h: int = 200, w: int = 160) -> np.ndarray:
    """Two lung-shaped ellipses of unequal size, left (image) bigger."""
    yy, xx = np.mgrid[:h, :w]
    left = ((yy - 100) / 70) ** 2 + ((xx - 45) / 30) ** 2 < 1
    right = ((yy - 100) / 60) ** 2 + ((xx - 115) / 25) ** 2 < 1
    return (left | right).astype(np.uint8)


def test_clean_mask_removes_a_spurious_blob_keeps_both_lungs_and_fills_holes() -> None:
    lungs = two_lungs()
    noisy = lungs.copy()
    noisy[5:15, 70:90] = 1  # a spurious blob between/above the lungs
    noisy[180:184, 150:154] = 1  # a speck in the corner
    noisy[90:100, 40:50] = 0  # a hole inside the left lung
    noisy[95:99, 112:116] = 0  # and one in the right lung
    cleaned = clean_mask(noisy)
    np.testing.assert_array_equal(cleaned, lungs)
    assert cleaned.dtype == np.uint8 and set(np.unique(cleaned)) == {0, 1}


def test_keep_largest_keeps_the_largest_components_and_leaves_small_masks_alone() -> None:
    mask = np.zeros((50, 50), np.uint8)
    mask[2:12, 2:12] = 1  # 100 px
    mask[20:26, 20:26] = 1  # 36 px
    mask[40:48, 40:48] = 1  # 64 px
    kept = keep_largest(mask, 2)
    assert kept[5, 5] and kept[44, 44] and not kept[22, 22]
    np.testing.assert_array_equal(keep_largest(kept, 2), kept)
    assert not keep_largest(np.zeros((8, 8), np.uint8)).any()


def test_fill_holes_matches_scipy_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = (ndimage.uniform_filter(rng.random((64, 80)), 5) > 0.5).astype(np.uint8)
        np.testing.assert_array_equal(
            fill_holes(mask), ndimage.binary_fill_holes(mask).astype(np.uint8)
        )


def test_components_are_scipys_8_connected_labels_areas_and_centres() -> None:
    """OpenCV's Grana labelling (chosen for speed) against scipy's: the same partition of the
    mask, with each component's pixel count and centre."""
    rng = np.random.default_rng(1)
    for i in range(8):
        mask = (ndimage.uniform_filter(rng.random((90, 70 + i)), 3 + i % 3) > 0.52).astype(np.uint8)
        labels, areas, centres = components(mask)
        expected, n = ndimage.label(mask, structure=np.ones((3, 3)))
        assert n > 3 and labels.max() == n == len(areas) - 1  # several components
        assert areas[0] == np.count_nonzero(mask == 0)
        # each scipy component is exactly one of ours (labels may be numbered differently)
        ours = [int(labels[expected == k][0]) for k in range(1, n + 1)]
        assert sorted(ours) == list(range(1, n + 1))
        np.testing.assert_array_equal(np.array([0, *ours])[expected], labels)
        np.testing.assert_array_equal(areas[ours], np.bincount(expected.ravel())[1:])
        ys_xs = ndimage.center_of_mass(mask, expected, range(1, n + 1))
        np.testing.assert_allclose(centres[ours], np.array(ys_xs)[:, ::-1], atol=1e-9)


def test_stats_name_image_sides_and_flag_implausible_masks() -> None:
    lungs = two_lungs()
    final, stats = finish_mask(lungs)
    np.testing.assert_array_equal(final, lungs)
    assert (
        stats["area_image_left_px"] == int(lungs[:, :80].sum()) > stats["area_image_right_px"] > 0
    )
    assert stats["area_image_left_px"] + stats["area_image_right_px"] == int(lungs.sum())
    assert stats["lung_fraction"] == round(float(lungs.mean()), 5)
    assert (stats["height"], stats["width"], stats["large_components"], stats["plausibility"]) == (
        200,
        160,
        2,
        "ok",
    )

    assert finish_mask(np.zeros_like(lungs))[1]["plausibility"] == "no_lung"
    three = lungs.copy()
    # a third large component (> 1 % of the image), counted before post-processing
    three[2:30, 2:30] = 1
    final, stats = finish_mask(three)
    assert large_components(three) == 3 and stats["plausibility"] == "too_many_components"
    assert large_components(final) == 2
    assert finish_mask(three, clean=False)[0] is three
    assert finish_mask(np.ones_like(lungs))[1]["plausibility"] == "lung_fraction_high"
    small = np.zeros_like(lungs)
    small[90:110, 40:60] = 1
    assert (
        finish_mask(small, limits=PlausibilityLimits(min_lung_fraction=0.05))[1]["plausibility"]
        == "lung_fraction_low"
    )
    assert (
        finish_mask(small, limits=PlausibilityLimits(min_lung_fraction=0.01))[1]["plausibility"]
        == "ok"
    )
