"""The reviewer's decisions, kept in ``review.csv`` beside predictions.csv: checked when read,
rewritten whole and atomically on every change under a lock (two tabs, or two servers, never lose
each other's rows), and counted for predict's summary, evaluate's report and ``--summary``."""

from __future__ import annotations

import contextlib
import csv
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from operator import attrgetter
from pathlib import Path
from typing import Any

from lungseg.atomic import write_text
from lungseg.errors import DataError, LungsegError
from lungseg.inference.outputs import PREDICTIONS, Film, load_films

try:  # POSIX: also serialise writers in other processes (a second server on the same folder)
    import fcntl
except ImportError:  # pragma: no cover - Windows: the in-process lock only
    fcntl = None  # type: ignore[assignment]

REVIEW_CSV = "review.csv"
DECISIONS = ("accepted", "rejected")
NOTE_LIMIT = 4000  # characters: a note is a remark, not a report
FIX = "fix or delete that row, or move the file away to start afresh (nothing was changed)"


@dataclass(frozen=True)
class Decision:
    """One film's review: ``decision`` accepted, rejected or empty (a note only); ``quality_score``
    and ``needs_review`` as predictions.csv had them when it was decided."""

    film: str
    decision: str = ""
    note: str = ""
    input: str = ""
    quality_score: str = ""
    needs_review: str = ""
    decided_at: str = ""

    def stale(self, film: Film) -> bool:
        """Decided on an earlier mask: a re-run has changed the film's quality score since."""
        now = (film.row.get("quality_score") or "").strip()
        return bool(self.quality_score and now and self.quality_score != now)


COLUMNS = tuple(f.name for f in fields(Decision))  # review.csv's columns, in this order


def _row(row: dict[str | None, Any], films: dict[str, Film], where: str) -> Decision:
    """One row of review.csv as a Decision, or one error naming the row."""
    if None in row:
        raise DataError(f"{where}: more cells than the header has columns; {FIX}")
    cells = {k: (v or "") for k, v in row.items() if k is not None}
    key, decision = cells["film"].strip(), cells["decision"].strip().lower()
    if not key:
        raise DataError(f"{where}: no film named; {FIX}")
    if key not in films:
        raise DataError(f"{where}: film '{key}' is not in {PREDICTIONS}; {FIX}")
    if decision not in (*DECISIONS, ""):
        raise DataError(
            f"{where}: decision '{cells['decision']}' is not accepted, rejected or empty; {FIX}"
        )
    return Decision(**{**cells, "film": key, "decision": decision})


def _read_text(path: Path) -> str:
    """review.csv's text ("" when absent)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(
            f"{path}: cannot read it ({err}); move it away to start afresh (nothing was changed)"
        ) from None


def read_review(path: Path, films: dict[str, Film], text: str | None = None) -> dict[str, Decision]:
    """The decisions of ``review.csv`` (``text``: its content, already read; none when absent or
    empty), checked against the folder's films: an unknown column, film or decision, or a film
    listed twice, is one error naming the file and row."""
    text = _read_text(path) if text is None else text
    if not text.strip():
        return {}
    reader = csv.DictReader(io.StringIO(text, newline=""))
    decisions: dict[str, Decision] = {}
    rows: dict[str, int] = {}
    try:
        header = reader.fieldnames or []
        if not set(header) <= set(COLUMNS) or "film" not in header or "decision" not in header:
            raise DataError(
                f"{path}, row 1: columns {', '.join(header)}; review.csv has film, "
                f"decision and only {', '.join(COLUMNS[2:])} beside them; {FIX}"
            )
        for row in reader:
            where = f"{path}, row {reader.line_num}"
            decision = _row(row, films, where)
            if decision.film in rows:
                raise DataError(
                    f"{where}: film '{decision.film}' is listed twice (also row "
                    f"{rows[decision.film]}); {FIX}"
                )
            rows[decision.film] = reader.line_num
            decisions[decision.film] = decision
    except csv.Error as err:
        raise DataError(
            f"{path}, row {reader.line_num}: not readable as CSV ({err}); {FIX}"
        ) from None
    return decisions


def render_review(films: list[Film], decisions: dict[str, Decision]) -> str:
    """review.csv's text: a row per film with a decision or a note, in predictions.csv order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    cells = attrgetter(*COLUMNS)
    writer.writerows(cells(decisions[f.key]) for f in films if f.key in decisions)
    return out.getvalue()


@contextlib.contextmanager
def _folder_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the lock file ``path``, shared with other processes (POSIX)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ReviewBook:
    """A prediction folder's films and their decisions. A change re-reads review.csv under a lock,
    applies itself and rewrites the whole file atomically before it returns."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        self.films = load_films(self.folder)
        self.by_key = {film.key: film for film in self.films}
        self.path = self.folder / REVIEW_CSV
        self._lock = threading.Lock()
        self._lock_file = self.folder / f".{REVIEW_CSV}.lock"
        self._text = _read_text(self.path)  # what this book last read or wrote
        self.decisions = read_review(self.path, self.by_key, self._text)  # a bad file stops here
        try:
            self._lock_file.touch()
        except OSError as err:
            raise DataError(
                f"{self.folder}: cannot write {REVIEW_CSV} there ({err.strerror or err}); review "
                "a writable copy of it"
            ) from None

    def decide(
        self, key: str, decision: str | None = None, note: str | None = None
    ) -> Decision | None:
        """Set a film's decision (accepted, rejected, or empty to clear it) and/or its note (None:
        unchanged) and write review.csv; return the film's row (None once it has neither)."""
        film = self.by_key.get(key)
        if film is None:
            raise LungsegError(f"film '{key}' is not in {self.folder / PREDICTIONS}")
        if decision is not None and decision not in (*DECISIONS, ""):
            raise LungsegError(f"decision '{decision}' is not accepted, rejected or empty")
        if note is not None and len(note) > NOTE_LIMIT:
            raise LungsegError(f"a note holds at most {NOTE_LIMIT} characters, not {len(note)}")
        with self._lock, _folder_lock(self._lock_file):
            text = _read_text(self.path)  # parsed again only if someone else has written it
            current = (
                dict(self.decisions)
                if text == self._text
                else read_review(self.path, self.by_key, text)
            )
            old = current.get(key, Decision(key))
            new = Decision(
                key,
                old.decision if decision is None else decision,
                old.note if note is None else note.replace("\r\n", "\n").strip(),
                film.row.get("input", ""),
                film.row.get("quality_score", ""),
                film.row.get("needs_review", ""),
                datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            if new.decision or new.note:
                current[key] = new
            else:
                current.pop(key, None)
            text = render_review(self.films, current)
            write_text(self.path, text)
            self.decisions, self._text = current, text
        return current.get(key)

    def counts(self) -> dict[str, Any]:
        """:func:`count_decisions` of this folder as it stands."""
        return count_decisions(self.films, self.decisions, self.path)


def count_decisions(
    films: list[Film], decisions: dict[str, Decision], path: Path
) -> dict[str, Any]:
    """How many films are flagged, how many of those (and of the others) a reviewer accepted and
    rejected, and with reference masks (``truth=``) the mean Dice of the flagged accepted and
    rejected masks."""

    def decided(film: Film) -> str:
        return decisions[film.key].decision if film.key in decisions else ""

    by_key = {f.key: f for f in films}
    flagged = [f for f in films if f.flagged]
    others = [f for f in films if not f.flagged]
    out: dict[str, Any] = {
        "review_csv": str(path),
        "films": len(films),
        "flagged": len(flagged),
        "refused": sum(f.refused for f in films),
        "flagged_accepted": sum(decided(f) == "accepted" for f in flagged),
        "flagged_rejected": sum(decided(f) == "rejected" for f in flagged),
        "others_accepted": sum(decided(f) == "accepted" for f in others),
        "others_rejected": sum(decided(f) == "rejected" for f in others),
        "notes": sum(bool(d.note) for d in decisions.values()),
        "stale": sum(
            d.stale(by_key[d.film]) for d in decisions.values() if d.decision and d.film in by_key
        ),
    }
    out["flagged_undecided"] = out["flagged"] - out["flagged_accepted"] - out["flagged_rejected"]
    out["others_undecided"] = len(others) - out["others_accepted"] - out["others_rejected"]
    out["accepted"] = out["flagged_accepted"] + out["others_accepted"]
    out["rejected"] = out["flagged_rejected"] + out["others_rejected"]
    if films and "dice" in films[0].row:
        for kind in DECISIONS:
            dice = [float(f.row["dice"]) for f in flagged if decided(f) == kind and f.row["dice"]]
            out[f"flagged_{kind}_dice_mean"] = sum(dice) / len(dice) if dice else None
    return out


def read_folder(folder: str | Path) -> tuple[list[Film], dict[str, Decision]]:
    """A prediction folder's films and its review.csv's decisions (read only, checked)."""
    films = load_films(folder)
    return films, read_review(Path(folder).expanduser() / REVIEW_CSV, {f.key: f for f in films})


def review_counts(folder: str | Path, required: bool = False) -> dict[str, Any] | None:
    """:func:`count_decisions` of a prediction folder; None when it has no review.csv (``required``:
    an error). A bad folder or review.csv is one DataError naming the file and row."""
    path = Path(folder).expanduser() / REVIEW_CSV
    films, decisions = read_folder(folder)
    if not path.is_file() and required:
        raise DataError(
            f"{folder}: no {REVIEW_CSV} yet; review the folder first: lungseg-review {folder}"
        )
    return count_decisions(films, decisions, path) if path.is_file() else None


def describe(counts: dict[str, Any]) -> str:
    """The counts as one line for a log: the flagged films accepted, rejected, undecided."""
    line = (
        f"review: {counts['flagged']} of {counts['films']} films flagged; a reviewer accepted "
        f"{counts['flagged_accepted']} and rejected {counts['flagged_rejected']} of them "
        f"({counts['flagged_undecided']} undecided), and of the others accepted "
        f"{counts['others_accepted']} and rejected {counts['others_rejected']}; "
        f"{counts['notes']} note(s)"
    )
    for kind in DECISIONS:
        dice = counts.get(f"flagged_{kind}_dice_mean")
        if dice is not None:
            line += f"; mean Dice of the flagged masks {kind}: {dice:.4f}"
    if counts["stale"]:
        line += (
            f"; {counts['stale']} decision(s) predate the current masks (their quality score "
            "has changed since)"
        )
    return f"{line} ({counts['review_csv']})"
