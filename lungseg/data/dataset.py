"""LungDataset: image/mask pairs as tensors, decoded and resized once, augmented per item."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lungseg.data.images import load_pair, to_unit_float
from lungseg.data.layout import Pair
from lungseg.errors import DataError


def load_pairs(pairs: Sequence[Pair], size: int, threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Decode, validate and resize every pair; report every bad file at once."""
    images = np.empty((len(pairs), size, size), np.uint8)
    masks = np.empty((len(pairs), size, size), np.uint8)
    problems: list[str] = []

    def load(i: int) -> None:
        try:
            images[i], masks[i] = load_pair(pairs[i].image, pairs[i].mask, size)
        except DataError as err:
            problems.append(str(err))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # cv2 decodes without the GIL
        list(pool.map(load, range(len(pairs))))
    if problems:
        raise DataError(f"{len(problems)} bad file(s) in the dataset:", sorted(problems))
    return images, masks


class LungDataset(Dataset):
    """Pairs of one split; items are dicts with ``image`` (1,H,W) float in [0,1], ``mask`` (1,H,W) {0,1}."""

    def __init__(self, pairs: Sequence[Pair], image_size: int = 256, transform: Any = None,
                 cache: bool = True) -> None:
        self.pairs = list(pairs)
        self.image_size = image_size
        self.transform = transform
        self._cache = load_pairs(self.pairs, image_size) if cache else None

    def __len__(self) -> int:
        return len(self.pairs)

    def reseed(self, seed: int) -> None:
        """Seed the augmentation (albumentations keeps its own generator, which forked workers would share)."""
        if self.transform is not None:
            self.transform.set_random_seed(seed % 2**32)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The resized, un-augmented uint8 image and {0,1} mask of one item."""
        if self._cache is not None:
            return self._cache[0][index], self._cache[1][index]
        pair = self.pairs[index]
        return load_pair(pair.image, pair.mask, self.image_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index)

    def item(self, index: int, augment: bool = True) -> dict[str, Any]:
        """One item as tensors; ``augment=False`` gives it as evaluation sees it, whatever the transform."""
        image, mask = self.raw(index)
        if augment and self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(to_unit_float(image)).unsqueeze(0),
            "mask": torch.from_numpy(mask.astype(np.float32)).unsqueeze(0),
            "index": index,
        }
