"""Film artefacts as training transforms (CollimatorShutters, BurntInText) and augment=robust,
measured on pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hydra.utils import instantiate

from lungseg.data.film import BurntInText, CollimatorShutters
from lungseg.data.images import load_pair
from tests.helpers import CXR, requires_cxr

SIZE = 128


def disc() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = (((yy - 64) ** 2 + (xx - 64) ** 2) < 50**2).astype(np.uint8)
    return np.where(mask > 0, 80, 180).astype(np.uint8), mask


def test_shutters_darken_whole_edges_and_take_the_lung_under_them_out_of_the_mask() -> None:
    image, mask = disc()
    t = CollimatorShutters(width=(0.1, 0.3), value=(0, 30), p=1.0)
    t.set_random_seed(0)
    sides_seen, cut_fractions = set(), []
    for _ in range(100):
        out = t(image=image, mask=mask)
        dark = out["image"] != image
        shuttered = {
            "top": dark[0].all(),
            "bottom": dark[-1].all(),
            "left": dark[:, 0].all(),
            "right": dark[:, -1].all(),
        }
        assert any(shuttered.values())
        sides_seen |= {s for s, on in shuttered.items() if on}
        # one shutter grey
        assert out["image"][dark].max() <= 30 and len(np.unique(out["image"][dark])) == 1
        # the mask loses exactly the lung under the shutters, nothing else
        np.testing.assert_array_equal(out["mask"], np.where(dark, 0, mask))
        if shuttered["top"]:
            cut_fractions.append(dark[:, SIZE // 2].argmin() / SIZE)
    assert sides_seen == {"top", "bottom", "left", "right"}
    assert 0.09 <= min(cut_fractions) < 0.15 and 0.25 < max(cut_fractions) <= 0.31


def test_burnt_in_text_is_bright_strokes_on_the_image_only() -> None:
    image, mask = disc()
    t = BurntInText(lines=(2, 4), height=(0.04, 0.08), p=1.0)
    t.set_random_seed(1)
    changed = []
    for _ in range(30):
        out = t(image=image, mask=mask)
        np.testing.assert_array_equal(out["mask"], mask)
        diff = out["image"].astype(int) - image
        assert diff.min() >= 0  # text only brightens
        changed.append((diff > 0).mean())
    assert 0.002 < np.mean(changed) < 0.1  # strokes, not blocks
    first, second = (BurntInText(lines=(2, 4), height=(0.04, 0.08), p=1.0) for _ in range(2))
    first.set_random_seed(7)
    second.set_random_seed(7)
    # seeded
    np.testing.assert_array_equal(first(image=image)["image"], second(image=image)["image"])


def test_bad_ranges_are_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match=r"CollimatorShutters.width"):
        CollimatorShutters(width=(0.3, 0.1))
    with pytest.raises(ValueError, match=r"BurntInText.lines"):
        BurntInText(lines=(0, 2))


@requires_cxr
def test_robust_augmentation_covers_the_shifts_it_targets(compose_cfg) -> None:
    """augment=robust: zoom-out to 0.8 with black fill, gamma 0.5-2.2 on about 40 % of images; the
    mask stays binary and follows the geometry."""
    split = CXR / "ChestXray" / "train"
    image, mask = load_pair(
        split / "image" / "cxrimage_0.png", split / "mask" / "cxrmask_0.jpeg", SIZE
    )
    transform = instantiate(
        compose_cfg("+experiment=cxr_small", "augment=robust").data.train_transform
    )
    names = [type(t).__name__ for t in transform.transforms]
    assert {"RandomGamma", "CollimatorShutters", "BurntInText", "Affine", "GaussNoise"} <= set(
        names
    )
    affine, gamma = (transform.transforms[names.index(n)] for n in ("Affine", "RandomGamma"))
    affine.set_random_seed(4)
    flat = np.full((SIZE, SIZE), 100, np.uint8)
    areas = []
    for _ in range(200):
        out = affine(image=flat, mask=np.ones_like(mask))
        areas.append(out["mask"].mean())
        # past the edge
        outside = cv2.erode((out["mask"] == 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert out["image"][outside].max(initial=0) == 0  # black outside the moved film
        assert set(np.unique(out["mask"])) <= {0, 1}
    assert 0.6 < min(areas) < 0.7  # zoom 0.8 per axis: about 0.64 of the area
    gamma.set_random_seed(5)
    mid = np.full((SIZE, SIZE), 128, np.uint8)
    gammas = [
        np.log(gamma(image=mid)["image"].mean() / 255) / np.log(128 / 255) for _ in range(300)
    ]
    applied = [g for g in gammas if abs(g - 1) > 1e-3]
    assert 0.3 < len(applied) / len(gammas) < 0.5
    assert 0.49 <= min(applied) < 0.6 and 2.0 < max(applied) <= 2.21
