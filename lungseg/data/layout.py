"""The on-disk layout of a dataset and how images are paired with their masks.

Kaggle layout: ``<root>/ChestXray/{train,val,test}/{image,mask}/`` with ``cxrimage_<N>.png`` and
``cxrmask_<N>.jpeg``, paired by the number N. Any other ``image/`` + ``mask/`` folder pair is
paired by file stem (``a.png`` with ``a.png`` or ``a_mask.png``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lungseg.errors import DataError

DATASET_DIR = "ChestXray"
SPLITS = ("train", "val", "test")
IMAGE_DIR = "image"
MASK_DIR = "mask"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
IMAGE_PATTERN = re.compile(r"^cxrimage_(\d+)$")
MASK_PATTERN = re.compile(r"^cxrmask_(\d+)$")


def image_name(n: int) -> str:
    """File name of image number ``n`` in the Kaggle layout."""
    return f"cxrimage_{n}.png"


def mask_name(n: int) -> str:
    """File name of mask number ``n`` in the Kaggle layout."""
    return f"cxrmask_{n}.jpeg"


@dataclass(frozen=True)
class Pair:
    """One image and its mask."""

    image: Path
    mask: Path

    @property
    def name(self) -> str:
        return self.image.name


def split_dir(root: Path, split: str) -> Path:
    """The folder holding ``image/`` and ``mask/`` of a split (with or without ``ChestXray/``)."""
    root = Path(root)
    nested = root / DATASET_DIR / split
    if nested.is_dir() or not (root / split).is_dir():
        return nested
    return root / split


def _files(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files in ``folder`` and a problem line for every other file."""
    images, problems = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            problems.append(
                f"{path}: not an image file (expected one of {sorted(IMAGE_SUFFIXES)}); move it out"
            )
    return images, problems


def _mask_key(stem: str) -> str:
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


def pair_files(image_dir: Path, mask_dir: Path) -> tuple[list[Pair], list[str]]:
    """Pair images with masks (by N in the Kaggle naming, else by stem); return pairs and
    problems."""
    images, problems = _files(image_dir)
    masks, mask_problems = _files(mask_dir)
    problems += mask_problems
    kaggle = any(IMAGE_PATTERN.match(p.stem) for p in images)
    if kaggle:

        def image_key(p: Path) -> str | None:
            m = IMAGE_PATTERN.match(p.stem)
            return m.group(1).lstrip("0") or "0" if m else None

        def mask_key(p: Path) -> str | None:
            m = MASK_PATTERN.match(p.stem)
            return m.group(1).lstrip("0") or "0" if m else None
    else:

        def image_key(p: Path) -> str | None:
            return p.stem

        def mask_key(p: Path) -> str | None:
            return _mask_key(p.stem)

    by_key: dict[str, Path] = {}
    for mask in masks:
        key = mask_key(mask)
        if key is None:
            problems.append(
                f"{mask}: mask name does not match cxrmask_<N>; rename it or move it out"
            )
        elif key in by_key:
            problems.append(
                f"{mask}: a second mask for the same image as {by_key[key].name}; keep one"
            )
        else:
            by_key[key] = mask
    pairs, seen = [], set()
    for image in images:
        key = image_key(image)
        if key is None:
            problems.append(
                f"{image}: image name does not match cxrimage_<N>; rename it or move it out"
            )
            continue
        if key in seen:
            problems.append(f"{image}: a second image with the same number/stem; keep one")
            continue
        seen.add(key)
        mask = by_key.get(key)
        if mask is None:
            expected = mask_name(int(key)) if kaggle else f"{image.stem}.png"
            problems.append(
                f"{image}: no mask (expected {mask_dir / expected}); add it or remove the image"
            )
        else:
            pairs.append(Pair(image, mask))
    for key, mask in by_key.items():
        if key not in seen:
            problems.append(f"{mask}: no image for this mask; add the image or remove the mask")
    if kaggle:
        pairs.sort(key=lambda p: int(IMAGE_PATTERN.match(p.image.stem).group(1)))  # type: ignore[union-attr]
    return pairs, problems


def find_pairs(root: Path, split: str) -> tuple[list[Pair], list[str]]:
    """All pairs of one split under ``root`` and the problems found while pairing them."""
    folder = split_dir(root, split)
    image_dir, mask_dir = folder / IMAGE_DIR, folder / MASK_DIR
    missing = [d for d in (image_dir, mask_dir) if not d.is_dir()]
    if missing:
        return [], [
            f"{d}: folder missing (expected <root>/{DATASET_DIR}/{split}/{d.name}/)"
            for d in missing
        ]
    pairs, problems = pair_files(image_dir, mask_dir)
    if not pairs and not problems:
        problems.append(f"{folder}: split '{split}' is empty; put image/mask pairs there")
    elif not pairs:
        problems.append(f"{folder}: split '{split}' has no usable image/mask pair")
    return pairs, problems


def require_root(root: Path) -> Path:
    """Fail with the three ways forward when there is no dataset at ``root``."""
    root = Path(root)
    if not any(split_dir(root, s).is_dir() for s in SPLITS):
        raise DataError(
            f"no dataset at {root} (expected "
            f"{root}/{DATASET_DIR}/{{train,val,test}}/{{image,mask}}/). "
            "Either download it with Kaggle credentials (`make data`, see README), point at a "
            "local "
            "copy with data.root=/path/to/dataset, or train on the built-in sample: "
            "+experiment=demo"
        )
    return root
