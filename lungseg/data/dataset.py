"""LungDataset: image/mask pairs as tensors, decoded and resized on first read into a budgeted
cache, augmented per item."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lungseg.data.images import load_pair, to_unit_float
from lungseg.data.layout import Pair
from lungseg.errors import DataError
from lungseg.runtime import usable_cores

MIB = 2**20
# where torch's shared tensors live on Linux (Docker's default is only 64 MB)
SHARED_MEMORY = Path("/dev/shm")


def item_bytes(size: int) -> int:
    """Bytes one cached item takes: the uint8 image and its uint8 mask at ``size`` x ``size``."""
    return 2 * size * size


def read_each(
    read: Callable[[int], Any], indices: Iterable[int], threads: int | None = None
) -> list[str]:
    """Call ``read(i)`` for every index (in threads: OpenCV decodes without the GIL); the sorted
    messages of every DataError, one per bad file."""
    problems: list[str] = []

    def one(i: int) -> None:
        try:
            read(i)
        except DataError as err:
            problems.append(str(err))

    workers = threads or min(8, usable_cores())
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, indices))
    return sorted(problems)


def bad_files(problems: list[str]) -> DataError:
    """The one error for every bad file found while reading a dataset."""
    return DataError(f"{len(problems)} bad file(s) in the dataset:", problems)


class DecodeCache:
    """Decoded, resized uint8 image/mask pairs of one split, kept from their first read within a
    byte budget.

    Items of ``order`` get a slot each, in that order, until ``budget_bytes`` is spent; the others
    are decoded on every read. With ``shared`` the pixels and their filled flags live in shared
    memory, so what one DataLoader worker decodes is seen by the other workers and the main process
    and kept across epochs; a spawned worker maps the same memory (torch passes it by handle)
    instead of receiving a copy.
    """

    def __init__(
        self,
        length: int,
        size: int,
        budget_bytes: int,
        order: Sequence[int] | None = None,
        shared: bool = False,
    ) -> None:
        order = np.arange(length) if order is None else np.asarray(order, np.int64)
        capacity = int(min(len(order), max(0, budget_bytes) // item_bytes(size)))
        self.shm_limited = False
        if shared and capacity and SHARED_MEMORY.is_dir():
            # Half of what is free: the workers pass their batches through the same memory. Beyond
            # it a write would kill the process with SIGBUS instead of an error.
            room = int(shutil.disk_usage(SHARED_MEMORY).free // 2 // item_bytes(size))
            self.shm_limited, capacity = room < capacity, min(capacity, room)
        self.slot = np.full(length, -1, np.int64)  # item -> its slot, -1: not cached
        self.slot[order[:capacity]] = np.arange(capacity)
        self.pixels = torch.empty((capacity, 2, size, size), dtype=torch.uint8)
        self.filled = torch.zeros(capacity, dtype=torch.bool)
        if shared and capacity:
            self.pixels.share_memory_()
            self.filled.share_memory_()

    @property
    def capacity(self) -> int:
        return len(self.filled)

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

    def filled_count(self) -> int:
        return int(self.filled.sum())

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached image and mask of item ``index``, or None when it has no slot or is not
        decoded yet."""
        slot = self.slot[index]
        if slot < 0 or not self.filled[slot]:
            return None
        pair = self.pixels[slot].numpy()
        return pair[0], pair[1]

    def put(self, index: int, image: np.ndarray, mask: np.ndarray) -> None:
        """Keep item ``index`` when it has a slot (the pixels first, then the flag that says they
        are there)."""
        slot = self.slot[index]
        if slot >= 0:
            self.pixels[slot, 0] = torch.from_numpy(image)
            self.pixels[slot, 1] = torch.from_numpy(mask)
            self.filled[slot] = True


class LungDataset(Dataset):
    """Pairs of one split; items are dicts with ``image`` (1,H,W) float in [0,1], ``mask`` (1,H,W)
    {0,1}.

    Each pair is decoded and resized on its first read and kept in a :class:`DecodeCache` of
    ``cache_bytes`` (0: decoded on every read); ``cache_order`` says which items get its slots first
    (default: file order).
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        image_size: int = 256,
        transform: Any = None,
        cache_bytes: int = 0,
        cache_order: Sequence[int] | None = None,
        shared_cache: bool = False,
        intensity: str = "window",
    ) -> None:
        self.pairs = list(pairs)
        self.intensity = intensity
        self.image_size = image_size
        self.transform = transform
        self.cache = DecodeCache(
            len(self.pairs), image_size, cache_bytes, cache_order, shared_cache
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def reseed(self, seed: int) -> None:
        """Seed the augmentation (albumentations keeps its own generator, which forked workers would
        share)."""
        if self.transform is not None:
            self.transform.set_random_seed(seed % 2**32)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The resized, un-augmented uint8 image and {0,1} mask of one item (decoded once where the
        cache has room)."""
        cached = self.cache.get(index)
        if cached is not None:
            return cached
        pair = self.pairs[index]
        image, mask = load_pair(pair.image, pair.mask, self.image_size, self.intensity)
        self.cache.put(index, image, mask)
        return image, mask

    def read(self, indices: Iterable[int] | None = None, threads: int | None = None) -> list[str]:
        """Read ``indices`` (default: every item) once, filling the cache; the message of every bad
        file."""
        return read_each(self.raw, range(len(self)) if indices is None else indices, threads)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index)

    def item(self, index: int, augment: bool = True) -> dict[str, Any]:
        """One item as tensors; ``augment=False`` gives it as evaluation sees it, whatever the
        transform."""
        image, mask = self.raw(index)
        if augment and self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(to_unit_float(image)).unsqueeze(0),
            "mask": torch.from_numpy(mask.astype(np.float32)).unsqueeze(0),
            "index": index,
        }
