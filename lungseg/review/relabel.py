"""The films a reviewer rejected, copied out for relabelling: ``image/`` + ``mask/`` (the predicted
mask, to be corrected) and ``rejected.csv``, a folder that pairs as a training split does
(``lungseg.data.layout``)."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from pathlib import Path
from typing import Any

from lungseg.atomic import write_bytes, write_text
from lungseg.data.layout import IMAGE_DIR, IMAGE_PATTERN, IMAGE_SUFFIXES, MASK_DIR
from lungseg.errors import DataError, LungsegError
from lungseg.evaluation.review import REVIEW_CSV, read_folder
from lungseg.inference.outputs import Film
from lungseg.review.images import encode, mask_source, read_film

COLUMNS = ("image", "mask", "film", "input", "note", "quality_score", "needs_review", "decided_at")


def pair_names(films: list[Film]) -> list[tuple[str, str]]:
    """(image stem, mask stem) per film: its output key with folders joined by ``__``; Kaggle names
    (``cxrimage_<N>`` with ``cxrmask_<N>``) when every film has one, else the same stem for both (a
    ``cxrimage_<N>`` among other names is written ``cxrimage-<N>`` so the folder pairs by stem)."""
    stems = [film.key.replace("/", "__") for film in films]
    taken = set(stems)
    for i, stem in enumerate(stems):  # a/b and a top-level a__b: the second gets a number
        if stems.index(stem) != i:
            n = 2
            while f"{stem}-{n}" in taken:
                n += 1
            stems[i] = f"{stem}-{n}"
            taken.add(stems[i])
    if all(IMAGE_PATTERN.match(s) for s in stems):
        return [(s, s.replace("cxrimage_", "cxrmask_", 1)) for s in stems]
    stems = [re.sub(r"^cxrimage_(\d+)$", r"cxrimage-\1", s) for s in stems]
    return [(s, s) for s in stems]


def _film_bytes(film: Film) -> tuple[bytes, str]:
    """The film's file as it is (a PNG/JPEG/BMP/TIFF read the right way round), else decoded to an
    8-bit PNG (DICOM, or a film predict read inverted); with the suffix to write it under."""
    if not film.input.is_file():
        raise DataError(
            f"film not found: {film.input} (moved or deleted?); restore it, or clear "
            f"the rejection of '{film.key}' (nothing was written)"
        )
    suffix = film.input.suffix.lower()
    if suffix in IMAGE_SUFFIXES and not film.inverted:
        return film.input.read_bytes(), suffix
    return encode(read_film(film), "png"), ".png"


def export_rejected(folder: str | Path, out: str | Path) -> dict[str, Any]:
    """Copy every rejected film of ``folder`` (its image and predicted mask) into a new folder
    ``out`` with a ``rejected.csv``, built beside it and renamed into place when complete."""
    films, decisions = read_folder(folder)
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LungsegError(
            f"--export-rejected {out}: already exists; choose a new folder (nothing was written)"
        )
    rejected = [f for f in films if f.key in decisions and decisions[f.key].decision == "rejected"]
    if not rejected:
        raise LungsegError(f"{Path(folder) / REVIEW_CSV}: no film is rejected; nothing to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rows: list[dict[str, str]] = []
    try:
        for film, (image_stem, mask_stem) in zip(rejected, pair_names(rejected), strict=True):
            data, suffix = _film_bytes(film)
            image, mask = f"{IMAGE_DIR}/{image_stem}{suffix}", f"{MASK_DIR}/{mask_stem}.png"
            write_bytes(tmp / image, data)
            write_bytes(tmp / mask, mask_source(film).read_bytes())
            decision = decisions[film.key]
            rows.append(
                {
                    "image": image,
                    "mask": mask,
                    "film": film.key,
                    "input": str(film.input),
                    "note": decision.note,
                    "quality_score": film.row.get("quality_score", ""),
                    "needs_review": film.row.get("needs_review", ""),
                    "decided_at": decision.decided_at,
                }
            )
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(tmp / "rejected.csv", text.getvalue())
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"exported": len(rows), "folder": str(out)}
