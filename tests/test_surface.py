"""HD95/ASSD on hand-made shapes with known distances; the evaluation's metric helpers against
torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import (
    BinaryCalibrationError,
    BinaryPrecisionRecallCurve,
    BinaryROC,
)
from torchmetrics.functional.segmentation import hausdorff_distance

from lungseg.evaluation.surface import (
    SurfaceDistances,
    diagonal,
    directed_distances,
    surface,
    surface_distances,
)
from lungseg.metrics.pixels import BinnedPRCurve, BinnedROC, ReliabilityBins, per_image_overlap


def square(half: int, size: int = 40, centre: int = 20) -> np.ndarray:
    """A filled (2*half+1)-pixel square centred in a size x size image."""
    mask = np.zeros((size, size), bool)
    mask[centre - half : centre + half + 1, centre - half : centre + half + 1] = True
    return mask


def test_surface_is_the_outer_ring() -> None:
    assert surface(square(5)).sum() == 8 * 5  # ring of an 11x11 square
    assert surface(square(0)).sum() == 1


def test_concentric_squares_hand_worked() -> None:
    # Inner 11x11 (half 5) and outer 17x17 (half 8) squares, 3 px apart.
    # Inner ring (40 px): every pixel is exactly 3 from the outer ring.
    # Outer ring (64 px): per side 11 at 3, 2 at sqrt(10), 2 at sqrt(13); 4 corners at sqrt(18).
    inner, outer = square(5), square(8)
    assert np.allclose(directed_distances(inner, outer, (1, 1)), 3.0)
    d_outer = np.sort(directed_distances(outer, inner, (1, 1)))
    expected = np.sort([3.0] * 44 + [math.sqrt(10)] * 8 + [math.sqrt(13)] * 8 + [math.sqrt(18)] * 4)
    assert np.allclose(d_outer, expected)
    # ASSD = (40*3 + 4*sqrt18 + 4*(33 + 2*sqrt10 + 2*sqrt13)) / 104 = 3.106858
    # HD95: linear 95th percentile of the 64 outer values, index 59.85: sqrt13 + 0.85*(sqrt18 -
    # sqrt13) = 4.147077
    result = surface_distances(inner, outer)
    assert result.assd == pytest.approx(3.106858, abs=1e-6)
    assert result.hd95 == pytest.approx(4.147077, abs=1e-6)
    assert surface_distances(outer, inner) == result  # symmetric
    # Maximum distance agrees with torchmetrics' (full) Hausdorff distance.
    hd = hausdorff_distance(
        torch.tensor(inner)[None, None].long(),
        torch.tensor(outer)[None, None].long(),
        num_classes=1,
        include_background=True,
    )
    assert float(hd) == pytest.approx(max(d_outer.max(), 3.0))


def test_shifted_square_and_spacing() -> None:
    # a: 13x13 square, rows and columns 14..26; b: a moved 2 columns (columns 16..28). Each ring has
    # 48 pixels.
    # d(a->b): top and bottom rows 11 x 0 (on b's top/bottom row), column 15 at 1, column 14 at 2;
    # left side
    # (11 px) all 2 (b's left side); right side rows 15 and 25 at 1 (b's top/bottom row), rows
    # 16..24 at 2.
    # -> 22 zeros, 4 ones, 22 twos: sum 48; d(b->a) is the mirror image. ASSD = 96 / 96 = 1; HD95 =
    # 2.
    a = square(6)
    b = np.roll(a, 2, axis=1)
    d_ab = np.sort(directed_distances(a, b, (1, 1)))
    np.testing.assert_array_equal(d_ab, [0.0] * 22 + [1.0] * 4 + [2.0] * 22)
    result = surface_distances(a, b)
    assert (result.hd95, result.assd, result.empty) == (pytest.approx(2.0), pytest.approx(1.0), "")
    scaled = surface_distances(a, b, spacing=(0.5, 0.5))
    assert scaled.hd95 == pytest.approx(1.0) and scaled.assd == pytest.approx(0.5)
    # Anisotropic (7 mm rows, 0.25 mm columns): a row step (7) is never the nearest, so each side's
    # distances are its column offsets x 0.25: per ring 2 x 0.25 + 24 x 0.5 = 12.5 -> ASSD 25 / 96,
    # HD95 0.5.
    aniso = surface_distances(a, b, spacing=(7.0, 0.25))
    assert aniso.hd95 == pytest.approx(0.5) and aniso.assd == pytest.approx(25 / 96)


def test_identical_masks_are_zero() -> None:
    for half in (0, 3, 5):
        assert surface_distances(square(half), square(half)) == SurfaceDistances(0.0, 0.0, "")


def test_empty_masks_have_defined_values() -> None:
    # The conventions of lungseg/evaluation/surface.py (and the evaluation report): both empty -> 0;
    # exactly one empty
    # ->
    # the image diagonal, in the units of the spacing, with the empty one named.
    empty = np.zeros((40, 30), bool)
    full = empty.copy()
    full[10:20, 10:20] = True
    assert surface_distances(empty, empty) == SurfaceDistances(0.0, 0.0, "both")
    assert surface_distances(empty, empty, spacing=(3.0, 0.5)) == SurfaceDistances(0.0, 0.0, "both")
    # hypot(40, 30)
    assert surface_distances(empty, full) == SurfaceDistances(50.0, 50.0, "prediction")
    assert surface_distances(full, empty, spacing=(2.0, 2.0)) == SurfaceDistances(
        100.0, 100.0, "truth"
    )
    worst = math.hypot(40 * 0.5, 30 * 2.0)  # 63.25: rows and columns scaled by their own spacing
    no_truth = surface_distances(full, empty, spacing=(0.5, 2.0))
    assert (no_truth.hd95, no_truth.assd, no_truth.empty) == (
        pytest.approx(worst),
        pytest.approx(worst),
        "truth",
    )
    assert diagonal((3, 4)) == 5.0 and diagonal((3, 4), (2.0, 0.5)) == pytest.approx(
        math.hypot(6, 2)
    )
    with pytest.raises(ValueError, match=r"\(40, 30\) and \(10, 30\)"):
        surface_distances(empty, full[:10])


def test_per_image_overlap_hand_case_and_empty() -> None:
    probs = torch.zeros(3, 1, 4, 4)
    masks = torch.zeros(3, 1, 4, 4)
    probs[0, 0, :2] = 0.9  # 8 predicted
    masks[0, 0, :1] = 1  # 4 true, all inside the prediction: Dice 2*4/12, IoU 4/8
    probs[1, 0, 0, 0] = 0.7  # prediction where there is no truth: 0 and 0
    out = per_image_overlap(probs, masks, 0.5)  # image 2: both empty -> 1 and 1
    assert torch.allclose(out["dice"], torch.tensor([2 / 3, 0.0, 1.0]))
    assert torch.allclose(out["iou"], torch.tensor([0.5, 0.0, 1.0]))
    assert torch.allclose(
        per_image_overlap(probs, masks, 0.8)["dice"], torch.tensor([2 / 3, 1.0, 1.0])
    )


def test_binned_curves_and_calibration_match_torchmetrics() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(20_000, generator=g)
    target = (torch.rand(20_000, generator=g) < probs**2).long()
    for ours, theirs in (
        (BinnedROC(thresholds=50), BinaryROC(thresholds=50)),
        (BinnedPRCurve(thresholds=50), BinaryPrecisionRecallCurve(thresholds=50)),
    ):
        ours.update(probs[:7000], target[:7000])
        ours.update(probs[7000:], target[7000:])
        for a, b in zip(ours.compute(), theirs(probs, target), strict=True):
            assert torch.allclose(a, b, atol=1e-6, equal_nan=True)  # precision is NaN at 1.0
    bins = ReliabilityBins(15)
    bins.update(probs[:5000], target[:5000])
    bins.update(probs[5000:], target[5000:])
    result = bins.compute()
    assert float(result["ece"]) == pytest.approx(
        float(BinaryCalibrationError(n_bins=15)(probs, target)), abs=1e-6
    )
    assert float(result["fraction"].sum()) == pytest.approx(1.0)


def test_per_image_overlap_of_one_image_and_of_empty_masks() -> None:
    probs = torch.tensor([[[[0.9, 0.8], [0.2, 0.1]]]])  # one image: predicted top row
    masks = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # truth left column: TP 1, FP 1, FN 1
    out = per_image_overlap(probs, masks)
    assert out["dice"].shape == (1,) and out["dice"].item() == pytest.approx(0.5)
    assert out["iou"].item() == pytest.approx(1 / 3)
    both_empty = per_image_overlap(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))
    assert both_empty["dice"].tolist() == [1.0, 1.0] and both_empty["iou"].tolist() == [1.0, 1.0]
    one_empty = per_image_overlap(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert one_empty["dice"].tolist() == [0.0] and one_empty["iou"].tolist() == [0.0]
