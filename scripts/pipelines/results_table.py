"""Mean ± SD over runs of the test-split evaluation and the native-resolution prediction
(docs/RESULTS.md).

    python scripts/pipelines/results_table.py outputs/results/cxr_small-seed*
    outputs/results/baseline

Each run folder needs eval/test/metrics.json (lungseg.evaluate) and predict-native/predictions.csv
(lungseg.predict with truth=); runs are grouped by name without its ``-seed<N>`` suffix.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

COLUMNS = {  # header -> how to read it from one run
    "val Dice (best.ckpt)": lambda _m, _n, r: r["metrics"]["best/val_dice"],
    "pooled Dice": lambda m, _n, _r: m["pooled"]["dice"],
    "per-image Dice": lambda m, _n, _r: m["per_image"]["dice_mean"],
    "HD95 px": lambda m, _n, _r: m["per_image"]["hd95_mean"],
    "median per-image Dice": lambda m, _n, _r: m["per_image"]["dice_median"],
    "median HD95 px": lambda m, _n, _r: m["per_image"]["hd95_median"],
    "pooled Dice, post-proc.": lambda m, _n, _r: m["postprocessed"]["pooled_dice"],
    "per-image Dice, post-proc.": lambda m, _n, _r: m["postprocessed"]["dice_mean"],
    "HD95 px, post-proc.": lambda m, _n, _r: m["postprocessed"]["hd95_mean"],
    "native per-image Dice": lambda _m, n, _r: float(np.mean([float(r["dice"]) for r in n])),
}


def read_run(run: Path) -> dict[str, float]:
    """One row of figures for one run folder."""
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    with (run / "predict-native" / "predictions.csv").open(newline="") as f:
        native = list(csv.DictReader(f))
    result = json.loads((run / "result.json").read_text())
    row = {name: float(read(metrics, native, result)) for name, read in COLUMNS.items()}
    print(
        f"{run}: {result['epochs']} epochs, {result['wall_s'] / 60:.1f} min of training",
        file=sys.stderr,
    )
    return row


def cell(values: np.ndarray, digits: int) -> str:
    """A table cell: the mean, and ± the SD over runs when there is more than one."""
    sd = f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else ""
    return f"{values.mean():.{digits}f}{sd}"


def main(runs: list[str]) -> None:
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for run in map(Path, runs):
        groups[re.sub(r"-seed\d+$", "", run.name)].append(read_run(run))
    print("| recipe | runs | " + " | ".join(COLUMNS) + " |")
    print("| --- | --- |" + " --- |" * len(COLUMNS))
    for name, rows in groups.items():
        cells = [
            cell(np.array([r[col] for r in rows]), 4 if "Dice" in col else 1) for col in COLUMNS
        ]
        print(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
