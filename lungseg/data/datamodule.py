"""LungDataModule: the train/val/test splits of one dataset folder as DataLoaders."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, get_worker_info

from lungseg.data.dataset import LungDataset
from lungseg.data.images import limit_opencv_threads
from lungseg.data.layout import SPLITS, Pair, find_pairs, require_root
from lungseg.errors import DataError
from lungseg.runtime import default_num_workers

log = logging.getLogger(__name__)


def init_worker(worker_id: int) -> None:
    """Seed a DataLoader worker: Lightning's per-worker seeds plus the dataset's augmentation seed.

    ``torch.initial_seed()`` in a worker is the loader's base seed (drawn anew each epoch from the
    main process's generator) plus the worker id, so epochs and workers all augment differently,
    and the same ``seed=`` reproduces them.
    """
    seed = torch.initial_seed()
    pl_worker_init_function(worker_id)
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)


def augmenters(transform: Any) -> list[Any]:
    """The transform and every transform inside it: each keeps its own random generators (albumentations 2)."""
    if transform is None:
        return []
    return [transform] + [t for child in getattr(transform, "transforms", []) for t in augmenters(child)]


SUBSET_SEED = 0  # one fixed draw for every run, whatever its seed=, so runs on the same subset compare


def subset(pairs: list[Pair], n: int, root: Path) -> list[Pair]:
    """The first ``n`` pairs of one fixed random permutation (in file order): a smaller training set for a
    learning curve. Subsets are nested (the 15 of n=15 are among the 30 of n=30) and the same for every run."""
    if not 1 <= n <= len(pairs):
        raise DataError(f"data.train_subset={n}, but {root} has {len(pairs)} training pairs; "
                        f"pick 1 to {len(pairs)}, or null for all of them")
    order = np.random.default_rng(SUBSET_SEED).permutation(len(pairs))
    return [pairs[i] for i in sorted(order[:n])]


class LungDataModule(L.LightningDataModule):
    """Chest X-ray image/mask pairs from ``<root>/ChestXray/{train,val,test}/{image,mask}/``."""

    def __init__(
        self,
        root: str,
        image_size: int = 256,
        batch_size: int = 8,
        num_workers: int | str = "auto",
        cache: bool = True,
        train_transform: Any = None,
        synthesize: bool = False,
        pin_memory: bool | str = "auto",
        train_subset: int | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers == "auto" else int(num_workers)
        self.cache = cache
        self.train_transform = train_transform
        self.synthesize = synthesize
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.train_subset = train_subset
        self.datasets: dict[str, LungDataset] = {}

    def prepare_data(self) -> None:
        """Write the built-in synthetic sample set when asked to and it is not there yet."""
        if self.synthesize:
            from lungseg.data.sample import ensure_sample_dataset

            ensure_sample_dataset(self.root)

    def _stage_splits(self, stage: str | None) -> tuple[str, ...]:
        return {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)

    def check_splits(self, splits: tuple[str, ...]) -> dict[str, list[Pair]]:
        """Pair the files of ``splits`` (no decoding); every problem of every split is reported at once."""
        require_root(self.root)
        found, problems = {}, []
        for split in splits:
            found[split], split_problems = find_pairs(self.root, split)
            problems += split_problems
        if problems:
            raise DataError(f"dataset at {self.root} has {len(problems)} problem(s):", problems)
        return found

    def setup(self, stage: str | None = None) -> None:
        """Pair and validate the splits the stage needs; every problem is reported at once."""
        wanted = [s for s in self._stage_splits(stage) if s not in self.datasets]
        found = self.check_splits(tuple(wanted))
        if "train" in found and self.train_subset is not None:
            found["train"] = subset(found["train"], self.train_subset, self.root)
        for split in wanted:
            transform = self.train_transform if split == "train" else None  # val/test: resized, never augmented
            dataset = LungDataset(found[split], self.image_size, transform, cache=self.cache)
            dataset.reseed(int(torch.randint(0, 2**31 - 1, ()).item()))  # follows seed_everything
            self.datasets[split] = dataset
            subset_note = f" (data.train_subset={self.train_subset})" if split == "train" and self.train_subset else ""
            log.info("%s: %d pairs from %s%s", split, len(dataset), self.root, subset_note)

    def state_dict(self) -> dict[str, Any]:
        """The training augmentation's random state (in-process loading), so a resumed run augments as an
        uninterrupted one would. Worker processes reseed themselves each epoch from torch's restored RNG."""
        train = self.datasets.get("train")
        return {"augment_rng": [(t.random_generator.bit_generator.state, t.py_random.getstate())
                                for t in augmenters(train.transform if train is not None else None)]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the training augmentation's random state saved by :meth:`state_dict`."""
        train = self.datasets.get("train")
        for transform, (np_state, py_state) in zip(augmenters(train.transform if train is not None else None),
                                                   state_dict.get("augment_rng", []), strict=False):
            transform.random_generator.bit_generator.state = np_state
            transform.py_random.setstate(py_state)

    def dataset(self, split: str) -> LungDataset:
        """The dataset of one split, set up on first use."""
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return self.datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        limit_opencv_threads(self.num_workers)
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            worker_init_fn=init_worker,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
