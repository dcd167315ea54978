"""A training run's record, ``result.json``: status (running, finished, failed), times, metrics,
host and pid; written by ``lungseg.train`` at the start and end of a run, read by the sweep summary.
A finished run's record is never overwritten: a later run in the same folder writes beside it and
takes its name only when it finishes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from lungseg.atomic import process_alive, write_text
from lungseg.runs import RESULT_FILE


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_record(path: Path) -> dict[str, Any]:
    """A run's record ({} when absent or unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def record_path(run: Path, started: str) -> Path:
    """Where this run's record goes: ``result.json``, unless that holds a finished run's record,
    which is never overwritten: then ``result-<started>.json`` beside it (promoted by
    :func:`promote` if this run finishes)."""
    previous = read_record(run / RESULT_FILE)
    if previous.get("status") == "finished":
        return unused_record(run, started)
    return run / RESULT_FILE


def unused_record(run: Path, started: str) -> Path:
    """``result-<started>.json``, or with ``-2``, ``-3``... when a record of that second exists
    already."""
    stem = f"result-{started.replace(':', '-')}"
    path, n = run / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = run / f"{stem}-{n}.json"
    return path


def promote(record: Path) -> None:
    """A run that finished in a folder with an earlier finished record becomes ``result.json``; the
    earlier record is kept as ``result-<its start>.json``."""
    current = record.parent / RESULT_FILE
    if record == current:
        return
    if current.exists():
        os.replace(
            current,
            unused_record(record.parent, str(read_record(current).get("started", "earlier"))),
        )
    os.replace(record, current)


def run_status(result: dict[str, Any]) -> str:
    """finished / failed, or for a job that never wrote its end: running (its process lives here) or
    killed."""
    status = result.get("status", "killed")
    if status != "running":
        return status
    here = result.get("host") == socket.gethostname()
    return "running" if here and process_alive(int(result.get("pid", -1))) else "killed"
