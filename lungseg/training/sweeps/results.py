"""The sweep's table: one line per job (knobs, metrics, epochs, wall time, status), and its best
job."""

from __future__ import annotations

import math
from typing import Any

from lungseg.config import monitor_mode
from lungseg.training.sweeps.jobs import METRICS


def finite_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def best_row(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The finished job with the best ``metric`` (lowest for a loss, else highest)."""
    scored = [
        r for r in rows if r["status"] == "finished" and finite_number(r.get(metric)) is not None
    ]
    if not scored:
        return None
    sign = -1.0 if monitor_mode(metric) == "min" else 1.0
    return max(scored, key=lambda r: sign * float(r[metric]))


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def job_table(rows: list[dict[str, Any]], knobs: list[str]) -> list[list[str]]:
    """Header and one line per job: job, knobs, metrics, epochs, wall time, status, error."""
    header = ["job", "run", *knobs, *METRICS, "epochs", "wall_s", "status", "error"]
    lines = [
        [
            r["job"],
            r["run"],
            *(r["overrides"].get(k, "") for k in knobs),
            *(cell(r.get(m)) for m in METRICS),
            cell(r["epochs"]),
            "" if r["wall_s"] is None else f"{float(r['wall_s']):.1f}",
            r["status"],
            str(r["error"]).splitlines()[0][:80] if r["error"] else "",
        ]
        for r in rows
    ]
    return [header, *lines]
