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
from torch.utils.data import DataLoader, Sampler, get_worker_info

from lungseg.data.dataset import MIB, LungDataset, bad_files
from lungseg.data.images import limit_opencv_threads
from lungseg.data.layout import SPLITS, Pair, find_pairs, require_root
from lungseg.errors import DataError
from lungseg.runtime import default_num_workers, keep_freed_memory

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
    # a forked worker has it from its parent already, a spawned one sets it here
    keep_freed_memory()
    pl_worker_init_function(worker_id)
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)


# the training items' one fixed order, which deals them out to the ranks (and the precise-BN sample)
SHARE_SEED = 0


def train_share(length: int, rank: int, world: int) -> np.ndarray:
    """The training items rank ``rank`` of ``world`` reads, epoch after epoch (and so decodes and
    caches): every ``world``-th item of one fixed random permutation, so each rank's share is a
    random draw, not a run of neighbouring files. Never empty: with fewer items than ranks a rank
    borrows one."""
    order = np.random.default_rng(SHARE_SEED).permutation(length)
    share = order[rank::world]
    return share if len(share) or not length else order[rank % length :][:1]


class ShuffledShareSampler(Sampler[int]):
    """Under DDP, a rank's training items: its fixed share (:func:`train_share`) in a new order
    every epoch, padded with its own items to the longest share so every rank takes the same number
    of steps.

    (torch's DistributedSampler deals the whole set out anew every epoch, so over a run every rank
    would read, decode and cache every image.)"""

    def __init__(self, length: int, rank: int, world: int, seed: int) -> None:
        self.share = train_share(length, rank, world)
        self.per_rank = -(-length // world)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch: a new order."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.share)
        # padding repeats the rank's own first items
        return iter(np.resize(order, self.per_rank).tolist())

    def __len__(self) -> int:
        return self.per_rank


class ShardSampler(Sampler[int]):
    """Items ``rank, rank + world, ...`` of a split: under DDP every item is on exactly one rank,
    none repeated.

    (torch's DistributedSampler pads a split to a multiple of the world size by repeating items,
    which would count some images twice in the pooled val/test metrics.)"""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.items = range(rank, length, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def augmenters(transform: Any) -> list[Any]:
    """The transform and every transform inside it: each keeps its own random generators
    (albumentations 2)."""
    if transform is None:
        return []
    return [transform] + [
        t for child in getattr(transform, "transforms", []) for t in augmenters(child)
    ]


# one fixed draw for every run, whatever its seed=, so runs on the same subset compare
SUBSET_SEED = 0


def subset(pairs: list[Pair], n: int, root: Path) -> list[Pair]:
    """The first ``n`` pairs of one fixed random permutation (in file order): a smaller training set
    for a learning curve. Subsets are nested (the 15 of n=15 are among the 30 of n=30) and the same
    for every run."""
    if not 1 <= n <= len(pairs):
        raise DataError(
            f"data.train_subset={n}, but {root} has {len(pairs)} training pairs; "
            f"pick 1 to {len(pairs)}, or null for all of them"
        )
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
        cache_mb: float = 4096,
        train_transform: Any = None,
        synthesize: bool = False,
        pin_memory: bool | str = "auto",
        train_subset: int | None = None,
        intensity: str = "window",
    ) -> None:
        super().__init__()
        # how images become 8-bit (images.INTENSITY_RULES): training's, or a model's
        self.intensity = intensity
        self.root = Path(root)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers == "auto" else int(num_workers)
        self.cache_mb = float(cache_mb)
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
        return {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage or "", SPLITS
        )

    def check_splits(self, splits: tuple[str, ...]) -> dict[str, list[Pair]]:
        """Pair the files of ``splits`` (no decoding); every problem of every split is reported at
        once."""
        require_root(self.root)
        found, problems = {}, []
        for split in splits:
            found[split], split_problems = find_pairs(self.root, split)
            problems += split_problems
        if problems:
            raise DataError(f"dataset at {self.root} has {len(problems)} problem(s):", problems)
        return found

    @staticmethod
    def share(split: str, length: int, rank: int, world: int) -> np.ndarray:
        """The items of ``split`` this rank reads: its training share, or every ``world``-th
        val/test item."""
        return (
            train_share(length, rank, world) if split == "train" else np.arange(rank, length, world)
        )

    def setup(self, stage: str | None = None) -> None:
        """Pair the splits the stage needs, then decode this rank's share of each once (validating
        every file before any training; under DDP the ranks together read each file once) into the
        decode cache. Every problem of every rank is reported at once, by every rank."""
        wanted = [s for s in self._stage_splits(stage) if s not in self.datasets]
        found = self.check_splits(tuple(wanted))
        if "train" in found and self.train_subset is not None:
            found["train"] = subset(found["train"], self.train_subset, self.root)
        rank, world = process_rank()
        problems: list[str] = []
        made: dict[str, LungDataset] = {}
        for split in wanted:
            # val/test: resized, never augmented
            transform = self.train_transform if split == "train" else None
            share = self.share(split, len(found[split]), rank, world)
            budget = int(self.cache_mb * MIB) - sum(
                d.cache.nbytes for d in [*self.datasets.values(), *made.values()]
            )
            dataset = LungDataset(
                found[split],
                self.image_size,
                transform,
                cache_bytes=budget,
                cache_order=share,
                shared_cache=self.num_workers > 0,
                intensity=self.intensity,
            )
            # follows seed_everything; each DDP rank augments differently
            dataset.reseed(
                int(torch.randint(0, 2**31 - 1, ()).item()) + RANK_STRIDE * rank_zero_only.rank
            )
            problems += dataset.read(share)
            made[split] = dataset
            subset_note = (
                f" (data.train_subset={self.train_subset})"
                if split == "train" and self.train_subset
                else ""
            )
            log.info(
                "%s: %d pairs from %s%s; %s",
                split,
                len(dataset),
                self.root,
                subset_note,
                self._cache_note(dataset, len(share)),
            )
        if world > 1:  # a bad file on one rank stops every rank, with the same message
            everyone: list[list[str]] = [[] for _ in range(world)]
            torch.distributed.all_gather_object(everyone, problems)
            problems = [p for rank_problems in everyone for p in rank_problems]
        if problems:
            raise bad_files(sorted(problems))
        self.datasets.update(made)

    def _cache_note(self, dataset: LungDataset, share: int) -> str:
        """One line on what the decode cache holds."""
        cache = dataset.cache
        whose = f"{share}" if share == len(dataset) else f"this rank's {share}"
        held = f"all {whose}" if cache.capacity >= share else f"{cache.capacity} of {whose}"
        line = f"decode cache {cache.nbytes / MIB:,.1f} MiB holds {held}"
        if cache.capacity < share:
            line += f", the other {share - cache.capacity} are decoded on every read"
        if cache.shm_limited:
            line += (
                " (limited by the free shared memory in /dev/shm: raise it, e.g. docker run "
                "--shm-size=8g)"
            )
        return line + f" (data.cache_mb={self.cache_mb:g})"

    def state_dict(self) -> dict[str, Any]:
        """The training augmentation's random state (in-process loading), so a resumed run augments
        as an uninterrupted one would. Worker processes reseed themselves each epoch from torch's
        restored RNG."""
        train = self.datasets.get("train")
        return {
            "augment_rng": [
                (t.random_generator.bit_generator.state, t.py_random.getstate())
                for t in augmenters(train.transform if train is not None else None)
            ]
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the training augmentation's random state saved by :meth:`state_dict`."""
        train = self.datasets.get("train")
        for transform, (np_state, py_state) in zip(
            augmenters(train.transform if train is not None else None),
            state_dict.get("augment_rng", []),
            strict=False,
        ):
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
        """The split's loader; under DDP each rank gets its own share (the trainer's
        use_distributed_sampler is off: this is the one place that shards)."""
        limit_opencv_threads(self.num_workers)
        keep_freed_memory()  # each batch reuses the pages of the ones before it
        dataset = self.dataset(split)
        rank, world = process_rank()
        sampler: Sampler[int] | None = None
        # training: each rank's fixed share, shuffled, padded to equal length (every rank steps
        # together)
        if world > 1:
            sampler = (
                ShuffledShareSampler(len(dataset), rank, world, seed=torch.initial_seed() % 2**31)
                if shuffle
                else ShardSampler(len(dataset), rank, world)
            )
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
