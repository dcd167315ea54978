"""The decode cache (issue 15, item 3): each item decoded once across epochs and DataLoader workers,
a byte budget that caches what fits and loads the rest the same, and under DDP each rank decoding
and reading only its share."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lungseg.data import datamodule as datamodule_module
from lungseg.data import dataset as dataset_module
from lungseg.data.datamodule import LungDataModule, ShuffledShareSampler, train_share
from lungseg.data.dataset import MIB, LungDataset, item_bytes
from lungseg.data.layout import find_pairs
from lungseg.errors import DataError


@pytest.fixture
def decodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Counts decodes by image file name, in this process and in forked DataLoader workers alike
    (each decode appends a line to a file); call it for the counts so far."""
    log = tmp_path / "decodes.txt"
    log.touch()
    real = dataset_module.load_pair

    def counting(image: Path, mask: Path, size: int, *rule: str):
        with open(log, "a") as f:
            f.write(f"{Path(image).name}\n")
        return real(image, mask, size, *rule)

    monkeypatch.setattr(dataset_module, "load_pair", counting)

    def counts(reset: bool = False) -> Counter:
        found = Counter(log.read_text().split())
        if reset:
            log.write_text("")
        return found

    return counts


def _epochs(loader: DataLoader, n: int) -> list[list[int]]:
    return [[i for batch in loader for i in batch["index"].tolist()] for _ in range(n)]


def test_each_item_is_decoded_once_across_epochs_and_workers(tiny_dataset: Path, decodes) -> None:
    pairs, _ = find_pairs(tiny_dataset, "train")
    names = {p.image.name for p in pairs}

    def run(shared: bool) -> LungDataset:
        dataset = LungDataset(pairs, 32, cache_bytes=MIB, shared_cache=shared)
        loader = DataLoader(
            dataset,
            batch_size=2,
            shuffle=True,
            num_workers=2,
            persistent_workers=True,
            generator=torch.Generator().manual_seed(0),
        )
        assert all(sorted(epoch) == list(range(8)) for epoch in _epochs(loader, 3))
        return dataset

    dataset = run(shared=True)
    assert decodes(reset=True) == Counter(names)  # once each, over 3 epochs and 2 workers
    # the main process sees it all
    assert dataset.cache.filled_count() == 8 and dataset.cache.pixels.is_shared()
    dataset = run(shared=False)  # the control: a cache the workers fill in their own memory
    assert decodes().total() > 8 and dataset.cache.filled_count() == 0


def test_the_data_module_decodes_each_file_once_in_setup_then_never(
    tiny_dataset: Path, decodes
) -> None:
    dm = LungDataModule(str(tiny_dataset), image_size=32, batch_size=2, num_workers=2)
    # every file of train and val read once: validated before any training, and cached
    dm.setup("fit")
    files = {p.image.name for split in ("train", "val") for p in dm.dataset(split).pairs}
    assert decodes() == Counter(files)
    _epochs(dm.train_dataloader(), 2), _epochs(dm.val_dataloader(), 2)
    assert decodes() == Counter(files)  # the workers read the shared cache: no decode in 2 epochs
    assert dm.dataset("train").cache.pixels.is_shared()


def test_a_spawned_worker_fills_the_same_shared_cache(tiny_dataset: Path) -> None:
    """A spawned worker (macOS; Linux from Python 3.14) gets the cache by handle, not as a copy."""
    pairs, _ = find_pairs(tiny_dataset, "train")
    dataset = LungDataset(pairs, 32, cache_bytes=MIB, shared_cache=True)
    loader = DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    assert sorted(_epochs(loader, 1)[0]) == list(range(8))
    assert dataset.cache.filled_count() == 8


def test_a_small_budget_caches_what_fits_and_the_rest_loads_the_same(
    tiny_dataset: Path, decodes, caplog
) -> None:
    pairs, _ = find_pairs(tiny_dataset, "train")
    plain = LungDataset(pairs, 48)  # no cache: decoded on every read
    expected = [tuple(a.copy() for a in plain.raw(i)) for i in range(8)]
    decodes(reset=True)
    small = LungDataset(
        pairs, 48, cache_bytes=3 * item_bytes(48) + 100, cache_order=[5, 1, 7, 0, 2, 3, 4, 6]
    )
    assert small.cache.capacity == 3 and small.cache.nbytes == 3 * item_bytes(48)
    for _ in range(3):
        for i in range(8):
            image, mask = small.raw(i)
            assert np.array_equal(image, expected[i][0]) and np.array_equal(mask, expected[i][1])
    counts = decodes()
    # 5, 1, 7 kept
    assert [counts[pairs[i].image.name] for i in range(8)] == [3, 1, 3, 3, 3, 1, 3, 1]

    # the data module says what it keeps
    with caplog.at_level(logging.INFO, logger=datamodule_module.__name__):
        dm = LungDataModule(str(tiny_dataset), image_size=48, cache_mb=3.5 * item_bytes(48) / MIB)
        dm.setup("fit")
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        line.startswith("train: 8 pairs")
        and "holds 3 of 8, the other 5 are decoded on every read" in line
        for line in lines
    ), lines
    assert any(line.startswith("val: 4 pairs") and "holds 0 of 4" in line for line in lines), lines
    uncached = LungDataModule(str(tiny_dataset), image_size=48, cache_mb=0)
    for split in ("train", "val"):
        for i in range(len(dm.dataset(split))):
            a, b = (
                dm.dataset(split).item(i, augment=False),
                uncached.dataset(split).item(i, augment=False),
            )
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert uncached.dataset("train").cache.capacity == 0


def test_under_ddp_a_rank_decodes_and_reads_only_its_share(
    tiny_dataset: Path, decodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    others: list[str] = []  # what rank 0 found wrong

    def all_gather_object(out: list, mine: list) -> None:
        out[0], out[1] = list(others), mine

    monkeypatch.setattr(datamodule_module, "process_rank", lambda: (1, 2))
    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    dm = LungDataModule(str(tiny_dataset), image_size=32, batch_size=2, num_workers=2)
    dm.setup("fit")
    train, val = dm.dataset("train"), dm.dataset("val")
    share = train_share(8, 1, 2)
    # the two shares: all, no overlap
    assert sorted(set(share) | set(train_share(8, 0, 2))) == list(range(8))
    assert not set(share) & set(train_share(8, 0, 2)) and len(share) == 4
    mine = {train.pairs[i].image.name for i in share} | {val.pairs[i].image.name for i in (1, 3)}
    # half of train, half of val: validated and cached by this rank only
    assert decodes() == Counter(mine)
    assert train.cache.capacity == 4 and val.cache.capacity == 2

    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, ShuffledShareSampler)
    epochs = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)  # as Lightning does
        epochs += _epochs(loader, 1)
    assert (
        all(sorted(e) == sorted(share.tolist()) for e in epochs)
        and len({tuple(e) for e in epochs}) > 1
    )
    assert sorted(_epochs(dm.val_dataloader(), 1)[0]) == [1, 3]
    assert decodes() == Counter(mine)  # 3 epochs: nothing decoded again, nothing of rank 0's read

    others.append("/data/train/image/cxrimage_99.png: not a readable image (corrupt or truncated?)")
    # another rank's bad file
    with pytest.raises(DataError, match="cxrimage_99.png: not a readable image"):
        LungDataModule(str(tiny_dataset), image_size=32).setup("fit")


def test_shares_pad_with_their_own_items_so_ranks_step_together() -> None:
    samplers = [ShuffledShareSampler(9, rank, 2, seed=3) for rank in range(2)]
    epochs = [list(s) for s in samplers]
    assert [len(e) for e in epochs] == [5, 5]
    assert sorted(set(epochs[0]) | set(epochs[1])) == list(range(9)) and not set(epochs[0]) & set(
        epochs[1]
    )
    # padded from its own share
    assert len(set(epochs[1])) == 4 and set(epochs[1]) == set(train_share(9, 1, 2))
    samplers[0].set_epoch(1)
    assert list(samplers[0]) != epochs[0] and sorted(samplers[0]) == sorted(epochs[0])
    # fewer items than ranks: one each
    assert [len(train_share(1, rank, 2)) for rank in range(2)] == [1, 1]
