"""Val and test figures against the number of training images (scripts/learning_curve.sh; docs/RESULTS.md).

    python scripts/learning_curve_table.py outputs/learning_curve/n*-seed*

Each run folder is ``n<N>-seed<S>`` with eval/val and eval/test from lungseg.evaluate; runs with the same N are
averaged (mean ± SD when there are several seeds). The hard test films are the three consolidated AP supine ones.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HARD = ("cxrimage_76", "cxrimage_86", "cxrimage_87")


def read_run(run: Path) -> dict[str, float]:
    """One run's figures: val and test pooled / per-image Dice and HD95, and test Dice without and on the hard films."""
    row: dict[str, float] = {}
    for split in ("val", "test"):
        metrics = json.loads((run / "eval" / split / "metrics.json").read_text())
        row[f"{split} pooled Dice"] = metrics["pooled"]["dice"]
        row[f"{split} per-image Dice"] = metrics["per_image"]["dice_mean"]
        row[f"{split} HD95 px"] = metrics["per_image"]["hd95_mean"]
    with (run / "eval" / "test" / "per_image.csv").open(newline="") as f:
        dice = {Path(r["file"]).stem: float(r["dice"]) for r in csv.DictReader(f)}
    row["test per-image Dice, 3 hard films"] = float(np.mean([dice[k] for k in HARD]))
    row["test per-image Dice, other 12"] = float(np.mean([v for k, v in dice.items() if k not in HARD]))
    return row


def main(runs: list[str]) -> None:
    groups: dict[int, list[dict[str, float]]] = defaultdict(list)
    for run in map(Path, runs):
        match = re.fullmatch(r"n(\d+)-seed\d+", run.name)
        if match is None:
            sys.exit(f"{run}: expected a folder named n<N>-seed<S> (scripts/learning_curve.sh)")
        groups[int(match.group(1))].append(read_run(run))
    columns = list(next(iter(groups.values()))[0])
    print("| training images | runs | " + " | ".join(columns) + " |")
    print("| --- " * (len(columns) + 2) + "|")
    for n in sorted(groups):
        rows = groups[n]
        cells = []
        for column in columns:
            values = np.array([r[column] for r in rows])
            digits = 1 if "HD95" in column else 4
            spread = f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.{digits}f}{spread}")
        print(f"| {n} | {len(rows)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
