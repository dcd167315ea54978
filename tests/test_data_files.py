"""Reading, pairing and validating dataset files; every bad input gets a message naming the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungseg.data.check import check_dataset
from lungseg.data.images import (
    binarize,
    load_pair,
    preprocess,
    read_gray,
    read_mask,
    to_gray,
    to_gray8,
)
from lungseg.data.layout import find_pairs, pair_files
from lungseg.errors import DataError
from tests.helpers import CXR, ROOT, requires_cxr, write_split


def test_pairs_by_number_not_by_sorted_name(tiny_dataset: Path) -> None:
    pairs, problems = find_pairs(tiny_dataset, "train")
    assert problems == []
    # Sorted names would put 13 and 21 before 2 and pair 2 with 13's mask.
    assert [p.image.name for p in pairs][:5] == [f"cxrimage_{n}.png" for n in (0, 1, 2, 3, 5)]
    for pair in pairs:
        assert pair.image.stem.split("_")[1] == pair.mask.stem.split("_")[1]


def test_pairs_by_number_with_leading_zeros(tmp_path: Path) -> None:
    write_split(tmp_path, "train", [7])
    folder = tmp_path / "ChestXray" / "train"
    (folder / "mask" / "cxrmask_7.jpeg").rename(folder / "mask" / "cxrmask_007.jpeg")
    pairs, problems = find_pairs(tmp_path, "train")
    assert problems == [] and len(pairs) == 1


def test_pairs_any_folder_by_stem(tmp_path: Path) -> None:
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    img = np.zeros((8, 8), np.uint8)
    for stem in ("b", "a"):
        cv2.imwrite(str(tmp_path / "image" / f"{stem}.png"), img)
    cv2.imwrite(str(tmp_path / "mask" / "a_mask.png"), img)
    cv2.imwrite(str(tmp_path / "mask" / "b.png"), img)
    pairs, problems = pair_files(tmp_path / "image", tmp_path / "mask")
    assert problems == []
    assert {(p.image.name, p.mask.name) for p in pairs} == {
        ("a.png", "a_mask.png"),
        ("b.png", "b.png"),
    }


def test_jpeg_mask_is_binarised_at_128(tmp_path: Path) -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 10:30] = 255
    path = tmp_path / "m.jpeg"
    cv2.imwrite(str(path), mask, [cv2.IMWRITE_JPEG_QUALITY, 75])
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert len(np.unique(raw)) > 2  # JPEG really did add artefacts
    out = read_mask(path)
    assert set(np.unique(out)) == {0, 1}
    assert (out == (mask > 0)).mean() > 0.99
    assert binarize(np.array([[127, 128]], np.uint8)).tolist() == [[0, 1]]


def test_gray8_conversion_of_rgb_rgba_and_16bit() -> None:
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in BGR
    assert to_gray(bgr)[0, 0] == 76  # ITU-R 601 luma of red
    bgra = np.dstack([bgr, np.full((4, 4), 7, np.uint8)])
    assert np.array_equal(to_gray(bgra), to_gray(bgr))
    assert to_gray(bgr.astype(np.uint16) * 257)[0, 0] == 19596  # depth kept: 0.299 x 65535
    deep = np.array([[1000, 2000], [3000, 5000]], np.uint16)
    assert to_gray8(deep, "minmax").tolist() == [[0, 64], [128, 255]]
    # window: 4 levels, percentiles are the extremes
    assert to_gray8(deep).tolist() == [[0, 64], [128, 255]]
    assert to_gray8(np.full((3, 3), 9, np.uint16)).max() == 0
    bgr[:2, :, 0] = 255  # half red, half magenta: a colour film windows like its luminance
    assert np.array_equal(to_gray8(bgr.astype(np.uint16) * 257), to_gray8(bgr))
    assert set(np.unique(to_gray8(bgr))) == {0, 255}


def test_preprocess_resizes_to_unit_float() -> None:
    image = np.full((300, 200), 255, np.uint8)
    out = preprocess(image, 64)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert out.min() == pytest.approx(1.0)


def test_load_pair_resizes_mask_nearest(tmp_path: Path) -> None:
    write_split(tmp_path, "train", [0], size=96)
    folder = tmp_path / "ChestXray" / "train"
    image, mask = load_pair(
        folder / "image" / "cxrimage_0.png", folder / "mask" / "cxrmask_0.jpeg", 32
    )
    assert image.shape == mask.shape == (32, 32)
    assert set(np.unique(mask)) <= {0, 1}


def _bad_dataset(tmp_path: Path) -> Path:
    """One dataset with one of each problem, in different splits, so all must be reported at
    once."""
    root = tmp_path / "bad"
    write_split(root, "train", [0, 1, 2, 3, 4])
    write_split(root, "val", [10, 11])
    (root / "ChestXray" / "test" / "image").mkdir(parents=True)
    (root / "ChestXray" / "test" / "mask").mkdir(parents=True)  # empty split
    tr = root / "ChestXray" / "train"
    (tr / "mask" / "cxrmask_1.jpeg").unlink()  # missing mask
    (tr / "image" / "cxrimage_2.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")  # corrupt
    data = (tr / "image" / "cxrimage_3.png").read_bytes()
    (tr / "image" / "cxrimage_3.png").write_bytes(data[: len(data) // 3])  # truncated
    cv2.imwrite(str(tr / "mask" / "cxrmask_4.jpeg"), np.full((64, 64), 128, np.uint8))  # not binary
    (tr / "image" / "notes.txt").write_text("hello")  # not an image
    va = root / "ChestXray" / "val"
    cv2.imwrite(str(va / "mask" / "cxrmask_11.jpeg"), np.zeros((50, 64), np.uint8))  # size mismatch
    (va / "image" / "cxrimage_10.png").unlink()  # mask without image
    return root


def test_check_lists_every_problem_with_its_file(tmp_path: Path) -> None:
    root = _bad_dataset(tmp_path)
    with pytest.raises(DataError) as info:
        check_dataset(root)
    text = str(info.value)
    expected = [
        ("cxrimage_1.png", "no mask"),
        ("cxrimage_2.png", "not a readable image"),
        ("cxrimage_3.png", "not a readable image"),
        ("cxrmask_4.jpeg", "not binary"),
        ("notes.txt", "not an image file"),
        ("cxrimage_11.png", "must be the same size"),
        ("cxrmask_10.jpeg", "no image for this mask"),
        ("test", "is empty"),
    ]
    for name, what in expected:
        assert any(name in line and what in line for line in info.value.problems), (
            name,
            what,
            text,
        )
    assert len(info.value.problems) == len(expected)


def test_check_cli_exits_nonzero_and_writes_nothing(tmp_path: Path) -> None:
    root = _bad_dataset(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    proc = subprocess.run(
        [sys.executable, "-m", "lungseg.data.check", f"data.root={root}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "cxrimage_1.png" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_missing_root_names_the_three_ways_forward(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"make data.*data\.root=.*\+experiment=demo"):
        check_dataset(tmp_path / "nowhere")


def test_unreadable_file_error_names_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.png"):
        read_gray(tmp_path / "missing.png")


@requires_cxr
def test_real_cxr_set_checks_clean() -> None:
    counts = check_dataset(CXR)
    assert counts == {"train": 60, "val": 15, "test": 15}


@requires_cxr
def test_real_cxr_check_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lungseg.data.check", f"data.root={CXR}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "OK: 90 pairs" in proc.stdout
