"""LungOpacity: synthetic opacity lands inside the lung only, brightens it towards soft tissue,
keeps the mask."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig

from lungseg.data.images import load_pair
from lungseg.data.opacity import LungOpacity
from tests.helpers import CXR, requires_cxr


@requires_cxr
def test_haze_brightens_the_lung_towards_soft_tissue_and_leaves_the_rest() -> None:
    split = CXR / "ChestXray" / "train"
    image, mask = load_pair(
        split / "image" / "cxrimage_0.png", split / "mask" / "cxrmask_0.jpeg", 256
    )
    lung = mask > 0
    # > 20 px from the lung
    far = cv2.dilate(lung.astype(np.uint8), np.ones((41, 41), np.uint8)) == 0
    transform = LungOpacity(p=1.0)
    transform.set_random_seed(0)
    gains, cover = [], []
    for _ in range(20):
        out = transform(image=image, mask=mask)
        np.testing.assert_array_equal(out["mask"], mask)  # the lung is still lung
        # nothing outside the lung moves
        np.testing.assert_array_equal(out["image"][far], image[far])
        changed = np.abs(out["image"].astype(int) - image) > 3
        cover.append(changed[lung].mean())
        gains.append(float(out["image"][changed].mean()) - float(image[changed].mean()))
        assert out["image"].dtype == np.uint8 and out["image"].shape == image.shape
    # the lung is darker than the soft tissue around it: where the haze lands it brightens, clearly
    assert min(gains) > 5 and np.mean(gains) > 10
    # patchy: part of the lung, not all, not none
    assert 0.1 < np.mean(cover) < 0.8 and max(cover) > 0.3


def test_reproducible_from_its_seed_and_off_at_p0() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 120, (64, 64), dtype=np.uint8)
    image[:, :8] = 220  # body
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 1
    runs = []
    for _ in range(2):
        t = LungOpacity(p=1.0, coverage=(0.5, 0.5))
        t.set_random_seed(7)
        runs.append(t(image=image, mask=mask)["image"])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], image)
    np.testing.assert_array_equal(LungOpacity(p=0.0)(image=image, mask=mask)["image"], image)
    # an empty mask (nothing to haze) passes the image through
    np.testing.assert_array_equal(
        LungOpacity(p=1.0)(image=image, mask=np.zeros_like(mask))["image"], image
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": (0.5, 1.5)},
        {"coverage": (0.8, 0.2)},
        {"grid": (1, 4)},
        {"tissue_percentile": (50, 101)},
    ],
)
def test_bad_ranges_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="LungOpacity"):
        LungOpacity(**kwargs)


def test_augment_opacity_is_the_original_pipeline_plus_the_haze(
    compose_cfg: Callable[..., DictConfig],
) -> None:
    keras = instantiate(compose_cfg().data.train_transform, _convert_="all")
    opacity = instantiate(compose_cfg("augment=opacity").data.train_transform, _convert_="all")
    names = [type(t).__name__ for t in opacity.transforms]
    assert names == ["Affine", "LungOpacity", "MultiplicativeNoise"]
    assert [type(t).__name__ for t in keras.transforms] == ["Affine", "MultiplicativeNoise"]
    assert repr(keras.transforms[0]) == repr(opacity.transforms[0])
