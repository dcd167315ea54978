"""LungDataModule: the train/val/test splits of one dataset folder as DataLoaders."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, DistributedSampler, Sampler, get_worker_info

from lungseg.data.dataset import LungDataset
from lungseg.data.images import limit_opencv_threads
from lungseg.data.layout import SPLITS, Pair, find_pairs, require_root
from lungseg.errors import DataError
from lungseg.runtime import default_num_workers

log = logging.getLogger(__name__)


RANK_STRIDE = 1_000_003  # a prime: rank r's augmentation seeds are offset by r * this


def process_rank() -> tuple[int, int]:
    """(global rank, world size) of this process under DDP; (0, 1) otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_worker(worker_id: int) -> None:
    """Seed a DataLoader worker: Lightning's per-worker seeds plus the dataset's augmentation seed.

    ``torch.initial_seed()`` in a worker is the loader's base seed (drawn anew each epoch from the
    main process's generator) plus the worker id, so epochs and workers all augment differently, and
    the rank is added so every DDP rank does too; the same ``seed=`` reproduces them all.
    """
    seed = torch.initial_seed() + RANK_STRIDE * rank_zero_only.rank
    pl_worker_init_function(worker_id)
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)


class ShardSampler(Sampler[int]):
    """Items ``rank, rank + world, ...`` of a split: under DDP every item is on exactly one rank, none repeated.

    (torch's DistributedSampler pads a split to a multiple of the world size by repeating items, which would
    count some images twice in the pooled val/test metrics.)"""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.items = range(rank, length, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


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
            # follows seed_everything; each DDP rank augments differently
            dataset.reseed(int(torch.randint(0, 2**31 - 1, ()).item()) + RANK_STRIDE * rank_zero_only.rank)
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
        """The split's loader; under DDP each rank gets its own share (the trainer's use_distributed_sampler is
        off: this is the one place that shards)."""
        limit_opencv_threads(self.num_workers)
        dataset = self.dataset(split)
        rank, world = process_rank()
        sampler: Sampler[int] | None = None
        if world > 1:  # training: shuffled shards, padded to equal length (every rank steps together)
            sampler = (DistributedSampler(dataset, world, rank, shuffle=True, seed=torch.initial_seed() % 2**31)
                       if shuffle else ShardSampler(len(dataset), rank, world))
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
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
