"""Cohort runs: thousands of films, one model, runs that survive interruption and split across
machines.

- ``shard=i/n`` takes the films whose output key hashes to ``i`` modulo ``n``: deterministic,
  disjoint, and stable when films are added. Shards write into one output folder (each its own CSV,
  manifest, journal and lock); :func:`merge_shards` joins their CSVs and manifests.
- The journal (``.journal<shard>.jsonl`` in the output folder) gets each film's CSV row, with its
  content and model SHA-256, as soon as its files are written. ``resume=true`` skips every film
  whose row is there for the same model, whose content is unchanged and whose outputs exist, so a
  killed run picks up where it stopped with nothing written twice or lost.
- The manifest (``run<shard>.json``): lungseg version, the model (sources, SHA-256, description),
  settings, device and precision, counts by status, timings.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungseg.artifacts.store import file_sha256, installed_model
from lungseg.atomic import write_text
from lungseg.errors import DataError, LungsegError
from lungseg.inference.outputs import CSV_COLUMNS, PREDICTIONS

RUN_FILE = "run.json"
# error: unreadable (a DataError); refused: the input gate
STATUSES = ("ok", "flagged", "refused", "error")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``shard=i/n``); the whole run is shard 0 of 1."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, setting: Any) -> Shard:
        """``None`` -> the whole run; ``"i/n"`` with 0 <= i < n; else one line naming the
        setting."""
        if setting in (None, ""):
            return cls()
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(setting))
        if not match or not int(match.group(1)) < int(match.group(2)):
            raise LungsegError(
                f"shard={setting}: use i/n with 0 <= i < n (e.g. shard=0/4 ... shard=3/4)"
            )
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def suffix(self) -> str:
        """``-shard-i-of-n`` in its file names ('' for the whole run)."""
        return f"-shard-{self.index}-of-{self.count}" if self.count > 1 else ""

    def holds(self, key: str) -> bool:
        """Whether the film with output ``key`` belongs to this shard."""
        return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % self.count == self.index

    def csv_name(self) -> str:
        return PREDICTIONS.replace(".csv", f"{self.suffix}.csv")

    def run_name(self) -> str:
        return RUN_FILE.replace(".json", f"{self.suffix}.json")

    def journal_name(self) -> str:
        return f".journal{self.suffix}.jsonl"


def model_sha256(sources: list[str]) -> str:
    """One SHA-256 for the model of ``sources`` (a checkpoint, an ONNX file, a pretrained folder's
    weights, an installed model's; an ensemble's members in order); a Hub id counts by its name."""
    digests = []
    for source in sources:
        path = installed_model(source) or Path(source).expanduser()
        if path.is_dir():
            path = path / "model.safetensors"
        digests.append(file_sha256(path) if path.is_file() else f"hub:{source}")
    return (
        digests[0] if len(digests) == 1 else hashlib.sha256("\n".join(digests).encode()).hexdigest()
    )


class Journal:
    """The append-only record of a run's finished films (one JSON line each, flushed as
    written): what ``resume=true`` skips. A line cut short by a kill is ignored."""

    def __init__(self, path: Path, model: str, fresh: bool) -> None:
        self.path, self.model = path, model
        self._lock = threading.Lock()
        if fresh:
            path.unlink(missing_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def rows(self) -> dict[str, dict[str, Any]]:
        """The last row recorded for each input by this model, by input path."""
        rows: dict[str, dict[str, Any]] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line a kill cut short
            if entry.get("model_sha256") == self.model:
                rows[entry["row"]["input"]] = entry
        return rows

    def record(self, row: dict[str, Any]) -> None:
        """Add a finished film's row (written from the threads that write its files)."""
        line = json.dumps({"model_sha256": self.model, "row": row}, default=str) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def reusable(entry: dict[str, Any], output: Path) -> bool:
    """Whether a journal row can stand for its film: its content is unchanged and its outputs exist
    (a film that failed to be read is tried again)."""
    row = entry["row"]
    if row.get("status") == "error" or not row.get("content_sha256"):
        return False
    path = Path(row["input"])
    if not path.is_file() or file_sha256(path) != row["content_sha256"]:
        return False
    return all((output / row[k]).is_file() for k in ("mask", "seg") if row.get(k))


def csv_text(rows: list[dict[str, Any]], columns: tuple[str, ...] = CSV_COLUMNS) -> str:
    """predictions.csv's text: ``columns`` first, then any others the rows hold (truth=, ...), in
    their order."""
    extra = [k for r in rows for k in r if k not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(
        text, fieldnames=[*columns, *dict.fromkeys(extra)], extrasaction="ignore"
    )
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def status_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many films of each status."""
    return {s: sum(r.get("status") == s for r in rows) for s in STATUSES}


def merge_shards(output: Path) -> dict[str, Any]:
    """Join the shards' CSVs into ``predictions.csv`` (rows by input) and their manifests into
    ``run.json``; every shard of the run must have finished."""
    found = sorted(output.glob(PREDICTIONS.replace(".csv", "-shard-*-of-*.csv")))
    counts = {
        int(m.group(2)) for p in found if (m := re.search(r"-shard-(\d+)-of-(\d+)\.csv$", p.name))
    }
    if not found:
        raise DataError(
            f"output={output}: no shard results (predictions-shard-<i>-of-<n>.csv) to merge; run "
            "the "
            "shards first (shard=i/n)"
        )
    if len(counts) != 1:
        raise DataError(
            f"output={output}: shard results of different splits ({sorted(counts)} shards) in one "
            "folder; keep one split's files"
        )
    n = counts.pop()
    shards = [Shard(i, n) for i in range(n)]
    missing = [s.csv_name() for s in shards if not (output / s.csv_name()).is_file()]
    if missing:
        raise DataError(
            f"output={output}: {len(missing)} of {n} shards have not finished "
            f"({', '.join(missing)}); "
            "run them (resume=true continues a killed one), then merge again"
        )
    rows: list[dict[str, Any]] = []
    manifests = []
    for shard in shards:
        with (output / shard.csv_name()).open(newline="", encoding="utf-8") as f:
            rows += list(csv.DictReader(f))
        manifest = output / shard.run_name()
        manifests.append(
            json.loads(manifest.read_text())
            if manifest.is_file()
            else {"shard": f"{shard.index}/{n}"}
        )
    rows.sort(key=lambda r: r["input"])
    write_text(output / PREDICTIONS, csv_text(rows))
    merged = {"shards": manifests, "counts": status_counts(rows), "films": len(rows)}
    write_text(output / RUN_FILE, json.dumps(merged, indent=2, default=str) + "\n")
    return merged
