"""The LightningDataModule and the configured augmentation, on pixels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lungseg.data.datamodule import LungDataModule
from lungseg.data.images import window
from lungseg.errors import DataError
from tests.helpers import CONF, CXR, requires_cxr, write_split


def _train_transform(compose_cfg: Callable[..., DictConfig], *overrides: str):
    """The configured training augmentation (augment=keras unless overridden), built as training
    builds it."""
    return instantiate(compose_cfg(*overrides).data.train_transform, _convert_="all")


def _stripes(size: int = 128) -> np.ndarray:
    """A mask with structure in every direction: two off-centre blobs."""
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (40, 60), (18, 35), 10, 0, 360, 1, -1)
    cv2.ellipse(mask, (92, 64), (15, 30), -5, 0, 360, 1, -1)
    return mask


def test_batches_are_the_files_pixels_at_the_model_scale(tiny_dataset: Path) -> None:
    dm = LungDataModule(str(tiny_dataset), image_size=48, batch_size=4)
    dm.setup()  # 64 -> 48 px: a factor where area and linear interpolation differ
    # evaluation: no augmentation, so the exact pixels are known
    batch = next(iter(dm.test_dataloader()))
    folder = tiny_dataset / "ChestXray" / "test"
    # paired by number
    for index, number in zip(batch["index"].tolist(), [50, 52, 54, 56], strict=True):
        image = cv2.imread(str(folder / "image" / f"cxrimage_{number}.png"), cv2.IMREAD_GRAYSCALE)
        mask = (
            cv2.imread(str(folder / "mask" / f"cxrmask_{number}.jpeg"), cv2.IMREAD_GRAYSCALE) >= 128
        )
        # shrinking: area
        expected_image = cv2.resize(window(image), (48, 48), interpolation=cv2.INTER_AREA) / 255
        expected_mask = cv2.resize(mask.astype(np.uint8), (48, 48), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_allclose(batch["image"][index, 0].numpy(), expected_image, atol=1e-6)
        np.testing.assert_array_equal(batch["mask"][index, 0].numpy(), expected_mask)
    assert batch["image"].dtype == batch["mask"].dtype == torch.float32
    train = next(iter(dm.train_dataloader()))
    assert (
        train["image"].shape == train["mask"].shape == (4, 1, 48, 48)
        and train["image"].dtype == torch.float32
    )
    assert set(train["mask"].unique().tolist()) == {0.0, 1.0}  # still binary after augmentation


def test_val_and_test_visit_every_image_exactly_once(tiny_dataset: Path) -> None:
    dm = LungDataModule(str(tiny_dataset), image_size=32, batch_size=3)
    dm.setup()
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        seen = [i for batch in loader for i in batch["index"].tolist()]
        assert seen == list(range(len(dm.dataset(split))))


def test_train_subset_is_one_fixed_nested_draw_and_leaves_val_alone(tiny_dataset: Path) -> None:
    def train_files(n: int | None, seed: int) -> list[str]:
        L.seed_everything(seed)
        dm = LungDataModule(str(tiny_dataset), image_size=32, train_subset=n)
        dm.setup("fit")
        assert len(dm.dataset("val")) == 4
        return [p.image.name for p in dm.dataset("train").pairs]

    everything = train_files(None, 0)
    three, six = train_files(3, 0), train_files(6, 0)
    assert len(three) == 3 and len(six) == 6 and set(three) < set(six) < set(everything)
    assert three == train_files(3, 123)  # the same images whatever the run's seed
    assert three != everything[:3] or six != everything[:6]  # a random draw, not the first files
    assert train_files(8, 0) == everything
    for bad in (0, 9):
        with pytest.raises(DataError, match=f"data.train_subset={bad}.*8 training pairs"):
            train_files(bad, 0)


def test_setup_reports_problems_and_missing_root(tiny_dataset: Path, tmp_path: Path) -> None:
    (tiny_dataset / "ChestXray" / "val" / "mask" / "cxrmask_31.jpeg").unlink()
    with pytest.raises(DataError, match="cxrimage_31.png: no mask"):
        LungDataModule(str(tiny_dataset)).setup("fit")
    with pytest.raises(DataError, match=r"no dataset at .*\+experiment=demo"):
        LungDataModule(str(tmp_path / "absent")).setup("fit")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        LungDataModule(str(tiny_dataset)).dataset("dev")


def test_configured_affine_keeps_image_and_mask_aligned(compose_cfg) -> None:
    transform = _train_transform(compose_cfg)
    transform.set_random_seed(0)
    mask = _stripes()
    image = (mask * 200 + 30).astype(np.uint8)  # the image *is* the mask, brightened
    changed = 0
    for _ in range(30):
        out = transform(image=image, mask=mask)
        aug_image, aug_mask = out["image"], out["mask"]
        assert set(np.unique(aug_mask)) <= {0, 1}  # nearest interpolation: still binary
        from_image = aug_image > (30 * 1.2 + 230 * 0.8) / 2
        inter = (from_image & (aug_mask > 0)).sum()
        union = (from_image | (aug_mask > 0)).sum()
        assert inter / union > 0.95
        changed += not np.array_equal(aug_mask, mask)
    assert changed >= 28


def test_configured_ranges_are_really_applied(compose_cfg) -> None:
    """Albumentations 2.x ignores unknown (1.x) argument names silently: measure what each transform
    does."""
    affine, brightness = _train_transform(compose_cfg).transforms
    affine.set_random_seed(1)
    brightness.set_random_seed(2)
    size = 128
    mask = np.zeros((size, size), np.uint8)
    mask[44:84, 34:94] = 1  # a 40x60 box in the centre
    flat = np.full((size, size), 100, np.uint8)
    areas, shifts, angles, ratios = [], [], [], []
    for _ in range(300):
        out = affine(image=flat, mask=mask)
        assert out["image"].min() == 100  # BORDER_REPLICATE (Keras 'nearest'): no black corners
        m = out["mask"]
        areas.append(m.sum() / mask.sum())
        ys, xs = np.nonzero(m)
        shifts.append(((xs.mean() - 63.5) / size, (ys.mean() - 63.5) / size))
        (_, _), (_, _), angle = cv2.minAreaRect(np.column_stack([xs, ys]).astype(np.float32))
        angles.append(min(angle % 90, 90 - angle % 90))
        ratios.append(brightness(image=flat)["image"].mean() / 100)
    shifts = np.array(shifts)
    assert 0.80 <= min(areas) < 0.9 and 1.1 < max(areas) <= 1.23  # zoom 0.9-1.1 per axis
    assert np.abs(shifts).max() <= 0.05 + 0.01 and np.abs(shifts).max() > 0.04  # shift 5 %
    assert max(angles) <= 10.5 and max(angles) > 8  # rotation +-10 degrees
    # brightness 0.8-1.2
    assert 0.8 - 1e-3 <= min(ratios) < 0.83 and 1.17 < max(ratios) <= 1.2 + 1e-3
    out = brightness(image=flat, mask=mask)
    assert np.array_equal(out["mask"], mask)  # brightness leaves the mask alone


def _augmented_by_index(dm: LungDataModule) -> dict[int, torch.Tensor]:
    return {
        int(i): img
        for batch in dm.train_dataloader()
        for i, img in zip(batch["index"], batch["image"], strict=True)
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentation_differs_per_epoch_and_worker_and_reproduces(
    compose_cfg, tmp_path: Path, workers: int
) -> None:
    root = tmp_path / "same"
    write_split(root, "train", list(range(8)), size=48)
    write_split(root, "val", [20], size=48)
    image = cv2.imread(str(root / "ChestXray/train/image/cxrimage_0.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(root / "ChestXray/train/mask/cxrmask_0.jpeg"), cv2.IMREAD_UNCHANGED)
    for n in range(1, 8):  # every item the same pixels: only augmentation can tell them apart
        cv2.imwrite(str(root / f"ChestXray/train/image/cxrimage_{n}.png"), image)
        cv2.imwrite(str(root / f"ChestXray/train/mask/cxrmask_{n}.jpeg"), mask)

    def run() -> list[dict[int, torch.Tensor]]:
        L.seed_everything(7, workers=True)
        dm = LungDataModule(
            str(root),
            image_size=48,
            batch_size=2,
            num_workers=workers,
            train_transform=_train_transform(compose_cfg),
        )
        dm.setup("fit")
        return [_augmented_by_index(dm) for _ in range(2)]

    first, second = run(), run()
    epoch1, epoch2 = first
    distinct = {tuple(img.flatten()[::97].tolist()) for img in epoch1.values()}
    assert len(distinct) == 8  # no two items (in any worker) got the same augmentation
    assert all(not torch.equal(epoch1[i], epoch2[i]) for i in epoch1)  # a new draw every epoch
    for a, b in zip(first, second, strict=True):  # the same seed gives the same epochs
        assert all(torch.equal(a[i], b[i]) for i in a)


@requires_cxr
def test_loads_the_real_cxr_images() -> None:
    dm = LungDataModule(str(CXR), image_size=256, batch_size=8)
    dm.setup()
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [60, 15, 15]
    batch = next(iter(dm.val_dataloader()))
    fractions = batch["mask"].mean(dim=(1, 2, 3))
    assert ((fractions > 0.1) & (fractions < 0.6)).all()  # lungs cover a plausible share
    # air in the lungs is dark on a radiograph: in every image the lung is darker than the rest
    # (measured:
    # by 0.06 to 0.17, 0.10 pooled), which inverted, shifted or mispaired masks would not be
    for image, mask in zip(batch["image"], batch["mask"], strict=True):
        assert image[mask > 0].mean() + 0.03 < image[mask == 0].mean()
    assert (
        batch["image"][batch["mask"] > 0].mean() + 0.05 < batch["image"][batch["mask"] == 0].mean()
    )
    assert batch["image"].std() > 0.1


def test_strong_augmentation_ranges_are_really_applied(compose_cfg) -> None:
    """augment=strong (the cxr_small recipe's): each transform's documented range, measured on
    pixels."""
    affine, elastic, gamma, contrast, brightness = _train_transform(
        compose_cfg, "augment=strong"
    ).transforms
    for k, t in enumerate((affine, elastic, gamma, contrast, brightness)):
        t.set_random_seed(10 + k)
    size = 256
    mask = np.zeros((size, size), np.uint8)
    mask[88:168, 68:188] = 1
    flat = np.full((size, size), 100, np.uint8)
    areas, angles = [], []
    for _ in range(200):
        out = affine(image=flat, mask=mask)
        assert out["image"].min() == 100  # replicate border
        areas.append(out["mask"].sum() / mask.sum())
        ys, xs = np.nonzero(out["mask"])
        (_, _), (_, _), angle = cv2.minAreaRect(np.column_stack([xs, ys]).astype(np.float32))
        angles.append(min(angle % 90, 90 - angle % 90))
    assert 0.7 <= min(areas) < 0.8 and 1.25 < max(areas) <= 1.36  # zoom 0.85-1.15 per axis
    assert 12 < max(angles) <= 21  # rotation +-15 degrees plus shear +-5

    ramp = np.tile(np.linspace(0, 255, size, dtype=np.float32), (size, 1)).astype(np.uint8)
    moved = []
    for _ in range(20):
        out = elastic(image=ramp, mask=mask)
        moved.append(
            np.abs(out["image"].astype(float) - ramp)[32:-32, 32:-32].mean() / (255 / (size - 1))
        )
        assert set(np.unique(out["mask"])) <= {0, 1}
    applied = [m for m in moved if m > 0]
    assert 0.3 < len(applied) / len(moved) < 0.8  # p = 0.5
    assert 1.0 < np.mean(applied) < 3.5  # mean displacement about 2 px

    mid = np.full((size, size), 128, np.uint8)
    gammas = [
        np.log(gamma(image=mid)["image"].mean() / 255) / np.log(128 / 255) for _ in range(200)
    ]
    gammas = [g for g in gammas if abs(g - 1) > 1e-3]
    assert 0.69 <= min(gammas) < 0.8 and 1.4 < max(gammas) <= 1.51  # gamma 0.7-1.5
    out = gamma(image=mid, mask=mask)
    assert np.array_equal(out["mask"], mask)  # intensity transforms leave the mask alone
    two = np.where(mask > 0, 150, 50).astype(np.uint8)
    spreads = [np.ptp(contrast(image=two)["image"].astype(float)) / 100 for _ in range(200)]
    assert 0.74 <= min(spreads) < 0.85 and 1.15 < max(spreads) <= 1.26  # contrast x0.75-1.25


def test_each_ddp_rank_augments_differently_and_a_rerun_repeats_it(
    tiny_dataset: Path, monkeypatch
) -> None:
    # @package data.train_transform: the Compose itself
    augment = OmegaConf.load(CONF / "augment" / "keras.yaml")

    def first_batch_as_rank(rank: int) -> torch.Tensor:
        monkeypatch.setattr(rank_zero_only, "rank", rank)
        L.seed_everything(5)
        dm = LungDataModule(
            str(tiny_dataset),
            image_size=32,
            batch_size=4,
            num_workers=0,
            train_transform=instantiate(augment),
        )
        dm.setup("fit")
        return torch.stack([dm.dataset("train")[i]["image"] for i in range(4)])

    rank0, rank1, rank0_again = (
        first_batch_as_rank(0),
        first_batch_as_rank(1),
        first_batch_as_rank(0),
    )
    assert torch.equal(rank0, rank0_again)  # the same seed= repeats each rank's stream
    assert (rank0 - rank1).abs().mean() > 0.01  # ranks draw their own augmentations
