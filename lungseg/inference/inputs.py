"""Finding and reading a user's radiographs (PNG, JPEG, BMP, TIFF, DICOM) as 8-bit grayscale for
inference."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungseg.data.images import preprocess, read_image_file, require_radiograph, to_gray8
from lungseg.data.layout import IMAGE_DIR, IMAGE_SUFFIXES, split_dir
from lungseg.dicom.read import DICOM_FEATURE, DicomFilm, read_dicom, read_film
from lungseg.errors import DataError, require_extra
from lungseg.inference.gate import OK, Status, gate

# read_dicom and DICOM_FEATURE live in lungseg.dicom.read; imported here for this module's callers
__all__ = ["DICOM_FEATURE", "InputFile", "find_inputs", "is_dicom", "read_dicom", "read_input"]

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
INPUT_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES
DICOM_MAGIC_OFFSET = 128  # "DICM" follows a 128-byte preamble in a DICOM Part 10 file


@dataclass(frozen=True)
class InputFile:
    """One input and the output name it maps to (relative, without suffix): ``sub/folder/stem``."""

    path: Path
    key: str


def is_dicom(path: Path) -> bool:
    """A ``.dcm``/``.dicom`` suffix, or a suffix-less file with the DICOM preamble (as PACS exports
    often are)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with path.open("rb") as f:
            f.seek(DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _keys(paths: list[Path], root: Path) -> list[str]:
    """Output keys: the relative path without suffix; stems shared in one folder keep their suffix
    (1_png, 1_jpg)."""
    rel = [p.relative_to(root) if p != root else Path(p.name) for p in paths]
    plain = [
        r.with_suffix("").as_posix() if r.suffix.lower() in INPUT_SUFFIXES else r.as_posix()
        for r in rel
    ]
    counts = Counter(plain)
    return [
        k if counts[k] == 1 else f"{k}_{r.suffix.lstrip('.').lower()}"
        for k, r in zip(plain, rel, strict=True)
    ]


def find_inputs(
    source: str | Path, pattern: str | None = None, skipped: list[str] | None = None
) -> list[InputFile]:
    """A file, or every radiograph under a folder (recursive; ``pattern`` a glob such as
    ``**/*.dcm``). Links that lead nowhere (broken, or a loop) are added to ``skipped`` with the
    reason; hidden files are left out."""
    files = _find_files(source, pattern, skipped)
    # one message before any work, not one failure per DICOM file
    if any(is_dicom(f.path) for f in files):
        require_extra("pydicom", "dicom", DICOM_FEATURE)
    return files


def _find_files(
    source: str | Path, pattern: str | None, skipped: list[str] | None
) -> list[InputFile]:
    """The inputs ``find_inputs`` returns, before the DICOM reader is checked."""
    source = Path(source).expanduser()
    if source.is_file():
        return [InputFile(source, _keys([source], source)[0])]
    if not source.is_dir():
        raise DataError(
            f"input={source}: no such file or folder; pass an image, a DICOM file or "
            "a folder of them"
        )
    candidates = [
        p
        for p in (source.glob(pattern) if pattern else source.rglob("*"))
        if not any(part.startswith(".") for part in p.relative_to(source).parts)
    ]
    if skipped is not None:
        skipped += [
            f"{p}: a symbolic link that leads nowhere (broken, or a loop); skipped"
            for p in sorted(candidates)
            if p.is_symlink() and not p.exists()
        ]
    paths = sorted(
        p for p in candidates if p.is_file() and (p.suffix.lower() in INPUT_SUFFIXES or is_dicom(p))
    )
    if not paths:
        what = (
            f"matching {pattern!r}"
            if pattern
            else f"with a suffix in {sorted(INPUT_SUFFIXES)} (or DICOM)"
        )
        raise DataError(
            f"input={source}: no radiographs {what}; check the folder or the pattern= setting"
        )
    return [InputFile(p, k) for p, k in zip(paths, _keys(paths, source), strict=True)]


def read_input(path: Path, intensity: str = "window") -> np.ndarray:
    """Read any supported input as uint8 grayscale (H, W) at its original resolution, by the model's
    intensity rule (``to_gray8``)."""
    path = Path(path)
    raw = read_dicom(path) if is_dicom(path) else read_image_file(path)
    return to_gray8(require_radiograph(raw, str(path)), intensity)


def read_checked(
    path: Path, intensity: str = "window"
) -> tuple[np.ndarray | None, Status, DicomFilm | None]:
    """An input through the input gate (``lungseg.inference.gate``): a DICOM's attributes first (a
    film they refuse is never decoded), then its pixels. Returns (grayscale by the intensity rule,
    or None when refused; the verdict; the DICOM it came from, None for other files). An unreadable
    file raises its DataError."""
    path = Path(path)
    film = read_film(path) if is_dicom(path) else None
    status = gate(film) if film is not None else OK
    if status.refused:
        return None, status, film
    raw = require_radiograph(
        film.pixels() if film is not None else read_image_file(path), str(path)
    )
    gray = to_gray8(raw, intensity)
    # the gate measures the film after the window rule: the model's own input when it reads so
    status = gate(film, raw, gray=gray if intensity == "window" else None)
    return (None if status.refused else gray), status, film


def film_size(path: Path) -> tuple[int, int] | None:
    """(rows, columns) of an input from its header alone (a DICOM's attributes, an image file's
    header); None when it cannot be told (the run reports the file when it reads it)."""
    from PIL import Image

    path = Path(path)
    try:
        if is_dicom(path):
            film = read_film(path)
            return (film.rows, film.columns) if film.rows and film.columns else None
        with Image.open(path) as image:
            return image.height, image.width
    except (DataError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


# a dataset root calibrates on its training images, never on val or test
CALIBRATION_SPLIT = "train"


def calibration_files(source: str | Path, count: int) -> list[Path]:
    """Up to ``count`` radiographs from ``source``: a dataset root's train-split images (Kaggle
    layout, with or without ``ChestXray/``), else every radiograph under a plain folder; evenly
    spread over the sorted list."""
    source = Path(source).expanduser()
    if count < 1:
        raise DataError(f"calibration_images={count}: use 1 or more (64 is the default)")
    if not source.exists():
        raise DataError(
            f"calibration={source}: no such folder; pass a dataset root (its train split's images "
            "are "
            "used) or a folder of radiographs"
        )
    images = split_dir(source, CALIBRATION_SPLIT) / IMAGE_DIR
    folder = images if images.is_dir() else source
    try:
        files = [f.path for f in find_inputs(folder)]
    except DataError:
        raise DataError(
            f"calibration={source}: no radiographs in {folder}; pass a dataset root (its train "
            "split's "
            "images are used) or a folder of radiographs"
        ) from None
    picks = np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int))
    return [files[i] for i in picks]


def calibration_images(files: list[Path], size: int, intensity: str = "window") -> np.ndarray:
    """float32 (N, 1, size, size): the files through the project's one preprocessing (by the model's
    intensity rule), un-augmented."""
    return np.stack([preprocess(read_input(f, intensity), size) for f in files])[:, None]
