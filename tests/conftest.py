"""Shared fixtures: the real CXR set from ../shared, small datasets written per test, composed configs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lungseg.config import CONFIG_DIR
from lungseg.data.layout import DATASET_DIR, IMAGE_DIR, MASK_DIR, image_name, mask_name

ROOT = Path(__file__).resolve().parents[1]
CONF = CONFIG_DIR
CXR = ROOT.parent / "shared" / "data" / "cxr-v7"

requires_cxr = pytest.mark.skipif(
    not (CXR / DATASET_DIR).is_dir(), reason=f"real CXR set not found at {CXR} (CI always has it)"
)


def disc_pair(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A tiny image/mask pair: a dark disc (the 'lung') on a brighter textured background."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    r = rng.integers(size // 6, size // 3)
    mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).astype(np.uint8) * 255
    image = np.where(mask > 0, 60, 180) + rng.normal(0, 10, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_split(root: Path, split: str, numbers: list[int], size: int = 64, seed: int = 0) -> None:
    """Write pairs with the given numbers N into ``root`` in the Kaggle layout."""
    rng = np.random.default_rng(seed)
    for sub in (IMAGE_DIR, MASK_DIR):
        (root / DATASET_DIR / split / sub).mkdir(parents=True, exist_ok=True)
    for n in numbers:
        image, mask = disc_pair(rng, size)
        cv2.imwrite(str(root / DATASET_DIR / split / IMAGE_DIR / image_name(n)), image)
        cv2.imwrite(str(root / DATASET_DIR / split / MASK_DIR / mask_name(n)), mask,
                    [cv2.IMWRITE_JPEG_QUALITY, 90])


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A small valid dataset: 8 train, 4 val, 4 test pairs of 64 px, with gaps in the numbering."""
    root = tmp_path / "data"
    write_split(root, "train", [0, 1, 2, 3, 5, 8, 13, 21])
    write_split(root, "val", [30, 31, 32, 40], seed=1)
    write_split(root, "test", [50, 52, 54, 56], seed=2)
    return root


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose ``conf/<name>.yaml`` with overrides, as the entry points do, writing into tmp_path."""

    def _compose(*overrides: str, config_name: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
