"""A ``lungseg.predict`` output folder: its layout (``masks/``, ``overlays/``, ``probabilities/``
and ``predictions.csv`` with its columns), and its films read back as the review page lists them:
flagged films first, then the lowest (most doubtful) quality score first."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from lungseg.errors import DataError
from lungseg.inference.sides import CSV_COLUMNS as SIDES_COLUMNS

PREDICTIONS = "predictions.csv"
REQUIRED = ("input", "mask")
FIX = "pass the output= folder of a lungseg.predict run"
CSV_COLUMNS = (
    "input",
    "mask",
    "status",
    "status_reason",
    "height",
    "width",
    "lung_fraction",
    "area_image_left_px",
    "area_image_right_px",
    "large_components",
    "plausibility",
    "quality_score",
    "needs_review",
    "inverted",
    *SIDES_COLUMNS,
    "seg",
    "content_sha256",
)
# with truth=: the written mask against the reference mask
TRUTH_COLUMNS = ("truth", "dice", "iou", "hd95_px")


# PNG masks (with overlays and probabilities as asked); DICOM SEG of DICOM films
OUTPUT_FORMATS = ("png", "seg")


def output_paths(
    output: Path,
    key: str,
    overlays: bool = True,
    probabilities: bool = False,
    formats: tuple[str, ...] = ("png",),
) -> dict[str, Path]:
    """Where one input's files go: ``masks/<key>.png``, ``overlays/<key>.png``,
    ``probabilities/<key>.png`` (with ``png``) and ``seg/<key>.dcm`` (with ``seg``; written for
    DICOM films only)."""
    kinds = [
        *(["masks"] if "png" in formats else []),
        *(["overlays"] if overlays else []),
        *(["probabilities"] if probabilities else []),
    ]
    paths = {kind: output / kind / f"{key}.png" for kind in kinds}
    if "seg" in formats:
        paths["seg"] = output / "seg" / f"{key}.dcm"
    return paths


def truthy(text: str | None) -> bool:
    """A boolean cell of predictions.csv (``True``/``False`` as Python writes them; 1, yes)."""
    return (text or "").strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class Film:
    """One row of predictions.csv; ``key`` names its outputs (``masks/<key>.png``)."""

    key: str
    index: int
    row: dict[str, str]
    folder: Path

    @property
    def score(self) -> float | None:
        """The mask's quality score (an estimate of its Dice); None where the run wrote none."""
        text = (self.row.get("quality_score") or "").strip()
        return float(text) if text else None

    @property
    def status(self) -> str:
        """``status`` where the run wrote one (ok / flagged / refused), else an empty string."""
        return (self.row.get("status") or "").strip().lower()

    @property
    def flagged(self) -> bool:
        """``needs_review`` (or, where the run records one, ``status`` flagged)."""
        return truthy(self.row.get("needs_review")) or self.status == "flagged"

    @property
    def refused(self) -> bool:
        """The run refused to segment this film: there is no mask to judge."""
        return self.status == "refused"

    @property
    def inverted(self) -> bool:
        """The film was read with its grey levels inverted (predict's polarity check)."""
        return truthy(self.row.get("inverted"))

    @property
    def input(self) -> Path:
        """The original film (a relative path: from the current folder, else the output folder)."""
        path = Path(self.row["input"]).expanduser()
        if path.is_absolute() or path.exists():
            return path
        return self.folder / path

    @property
    def mask(self) -> Path | None:
        """The written mask (None for a film without one)."""
        return self.folder / self.row["mask"] if self.row.get("mask") else None

    @property
    def overlay(self) -> Path:
        """The preview predict wrote (absent with ``overlays=false``)."""
        return self.folder / "overlays" / f"{self.key}.png"


def _key(mask: str, input_path: str) -> str | None:
    """``masks/a/b.png`` -> ``a/b``; a film without a mask is named by its input; None: foreign."""
    if not mask:
        return input_path or None
    parts = Path(mask).parts
    if len(parts) < 2 or parts[0] != "masks" or not mask.endswith(".png") or ".." in parts:
        return None
    return mask[len("masks/") : -len(".png")]


def _film(row: dict[str, str | None], index: int, folder: Path, where: str) -> Film:
    """One row as a Film, or one error naming the row."""
    cells = {k: (v or "") for k, v in row.items() if k is not None}
    key = _key(cells["mask"].strip(), cells["input"].strip())
    if key is None:
        raise DataError(f"{where}: mask '{cells['mask']}' is not masks/<name>.png; {FIX}")
    film = Film(key, index, cells, folder)
    try:
        score = film.score
    except ValueError:
        score = math.nan
    if score is not None and not math.isfinite(score):
        raise DataError(f"{where}: quality_score '{cells['quality_score']}' is not a number; {FIX}")
    return film


def load_films(folder: str | Path) -> list[Film]:
    """Every film of a prediction output folder, in predictions.csv order; anything else is one
    error naming the file (and row)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "no such folder"
        raise DataError(f"{folder}: {what}; {FIX}")
    path = folder / PREDICTIONS
    if not path.is_file():
        raise DataError(f"{folder}: not a lungseg.predict output (no {PREDICTIONS}); {FIX}")
    films: list[Film] = []
    rows: dict[str, int] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(
                    f"{path}: not a lungseg.predict {PREDICTIONS} (no column(s) "
                    f"{', '.join(missing)}); {FIX}"
                )
            for row in reader:
                where = f"{path}, row {reader.line_num}"
                film = _film(row, len(films), folder, where)
                if film.key in rows:
                    raise DataError(
                        f"{where}: film '{film.key}' is listed twice (also row "
                        f"{rows[film.key]}); {FIX}"
                    )
                rows[film.key] = reader.line_num
                films.append(film)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: not a readable CSV ({err}); {FIX}") from None
    if not films:
        raise DataError(f"{path}: lists no films (the run segmented nothing); nothing to review")
    return films


def doubt(film: Film) -> tuple[bool, float, int]:
    """The review order's key: flagged or refused first; then the lowest score (none: lowest of
    all); then predictions.csv order."""
    score = -math.inf if film.score is None else film.score
    return (not (film.flagged or film.refused), score, film.index)


def review_order(films: list[Film]) -> list[Film]:
    """The films as the page lists them (:func:`doubt`)."""
    return sorted(films, key=doubt)
