"""The built-in synthetic sample dataset: layout, determinism, plausibility and atomic writing."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungseg.data import sample
from lungseg.data.layout import DATASET_DIR, SPLITS, find_pairs, image_name, mask_name
from lungseg.data.sample import ensure_sample_dataset, make_phantom, write_sample_dataset

SMALL = {"n_train": 4, "n_val": 2, "n_test": 2}
NUMBERS = {"train": range(0, 4), "val": range(4, 6), "test": range(6, 8)}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_dataset(tmp_path_factory.mktemp("sample") / "data", **SMALL)


def all_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the writer's lock file (kept beside the dataset, empty)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def read_pairs(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = [pair for split in SPLITS for pair in find_pairs(root, split)[0]]
    return [
        (
            cv2.imread(str(p.image), cv2.IMREAD_UNCHANGED),
            cv2.imread(str(p.mask), cv2.IMREAD_GRAYSCALE),
        )
        for p in pairs
    ]


def test_layout_and_counts(small_set: Path) -> None:
    for split, numbers in NUMBERS.items():
        folder = small_set / DATASET_DIR / split
        assert sorted(p.name for p in (folder / "image").iterdir()) == sorted(
            image_name(n) for n in numbers
        )
        assert sorted(p.name for p in (folder / "mask").iterdir()) == sorted(
            mask_name(n) for n in numbers
        )
        pairs, problems = find_pairs(small_set, split)
        assert problems == [] and len(pairs) == len(numbers)
    assert sorted(p.name for p in small_set.iterdir()) == [f".{DATASET_DIR}.lock", DATASET_DIR]
    # no temporary folder left
    assert [p.name for p in small_set.parent.iterdir()] == [small_set.name]
    for image, mask in read_pairs(small_set):
        assert image.shape == mask.shape == (256, 256) and image.dtype == np.uint8


def test_masks_are_jpeg_of_the_exact_phantom_mask(small_set: Path) -> None:
    path = small_set / DATASET_DIR / "val" / "mask" / mask_name(5)
    assert path.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, like the real dataset
    _, exact = make_phantom(np.random.default_rng([0, 5]))
    stored = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert np.mean((stored > 127) == (exact > 127)) > 0.998


def test_make_phantom_contract() -> None:
    for size in (256, 128):
        image, mask = make_phantom(np.random.default_rng(7), size)
        assert image.shape == mask.shape == (size, size)
        assert image.dtype == mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
    assert image.std() > 20  # not a flat image


def test_deterministic(tmp_path: Path) -> None:
    a = all_files(write_sample_dataset(tmp_path / "a", **SMALL))
    b = all_files(write_sample_dataset(tmp_path / "b", **SMALL))
    assert len(a) == 16 and a == b
    c = all_files(write_sample_dataset(tmp_path / "c", seed=1, **SMALL))
    assert c.keys() == a.keys() and all(c[k] != a[k] for k in a)


def test_masks_binary_and_plausible(small_set: Path) -> None:
    fractions = []
    for _, mask in read_pairs(small_set):
        assert np.mean((mask > 40) & (mask < 215)) < 0.01  # only JPEG ringing along the outline
        lungs = mask > 127
        fractions.append(lungs.mean())
        half = mask.shape[1] // 2
        # the patient's left lung is the smaller one
        assert lungs[:, half:].sum() < lungs[:, :half].sum()
        n_fields, _ = cv2.connectedComponents(lungs.astype(np.uint8))
        assert n_fields - 1 == 2
    assert all(0.15 <= f <= 0.45 for f in fractions), fractions
    assert np.std(fractions) > 0.005  # lungs vary in size


def test_lungs_darker_than_surrounding_body_but_not_a_threshold(small_set: Path) -> None:
    for image, mask in read_pairs(small_set):
        lungs = mask > 127
        ring = cv2.dilate(lungs.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool) & ~lungs
        assert image[lungs].mean() + 25 < image[ring].mean()
        best = max(
            2 * (lungs & (image < t)).sum() / (lungs.sum() + (image < t).sum())
            for t in range(8, 256, 8)
        )
        assert best < 0.85  # ribs, noise and the dark background defeat a single global threshold


def test_second_call_is_a_noop(small_set: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = {p: p.stat().st_mtime_ns for p in small_set.rglob("*")}
    with caplog.at_level(logging.INFO, logger=sample.__name__):
        assert write_sample_dataset(small_set, n_train=1, seed=3) == small_set
        assert ensure_sample_dataset(small_set) == small_set
    assert {p: p.stat().st_mtime_ns for p in small_set.rglob("*")} == before
    assert caplog.records == []


def test_ensure_writes_when_absent_and_logs_where(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data" / "sample"
    root.mkdir(parents=True)
    (root / ".gitkeep").touch()  # an existing root without the dataset is filled in
    with caplog.at_level(logging.INFO, logger=sample.__name__):
        assert ensure_sample_dataset(str(root), **SMALL) == root
    assert len(list((root / DATASET_DIR).rglob("*.png"))) == 8
    assert len(caplog.records) == 1 and str(root) in caplog.records[0].getMessage()


@pytest.mark.parametrize("failure", ["raises", "returns False"])
def test_interrupted_write_leaves_nothing_and_rerun_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    real_imencode, calls = cv2.imencode, []

    def flaky_imencode(suffix: str, *args: object) -> tuple[bool, object]:
        calls.append(suffix)
        if len(calls) > 5:
            if failure == "raises":
                raise KeyboardInterrupt
            return False, None
        return real_imencode(suffix, *args)

    root = tmp_path / "sample"
    monkeypatch.setattr(cv2, "imencode", flaky_imencode)
    with pytest.raises(KeyboardInterrupt if failure == "raises" else OSError):
        write_sample_dataset(root, **SMALL)
    assert len(calls) == 6
    assert not (root / DATASET_DIR).exists()
    # the partial folder is gone
    assert [p.name for p in (tmp_path / "sample").iterdir()] == [f".{DATASET_DIR}.lock"]
    monkeypatch.setattr(cv2, "imencode", real_imencode)
    write_sample_dataset(root, **SMALL)
    assert len(all_files(root)) == 16


def test_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        sample, "write_sample_dataset", functools.partial(write_sample_dataset, **SMALL)
    )
    sample.main([str(tmp_path / "cli")])
    assert str(tmp_path / "cli" / DATASET_DIR) in capsys.readouterr().out
    assert len(all_files(tmp_path / "cli")) == 16
