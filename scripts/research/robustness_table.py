"""Research script, not a pipeline: produced the robustness arms tables in docs/RESULTS.md (run by
robustness_arms.sh) at commit 3e03194; kept to reproduce or extend them.

Before/after tables of the robustness benchmark over seeds (docs/RESULTS.md).

    python scripts/research/robustness_table.py outputs/robust-arms before after

Reads <root>/<arm>-s<seed>/robustness-<split>/robustness.json (``lungseg.robustness``) for every arm
named and prints, per arm, mean ± SD over seeds of the clean and shifted per-image Dice and the
robustness number on val and test, then the per-shift table (mean over severities and seeds) side by
side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def runs(root: Path, arm: str, split: str) -> list[dict]:
    """Every seed's robustness.json of one arm and split."""
    return [
        json.loads(p.read_text())
        for p in sorted(root.glob(f"{arm}-s*/robustness-{split}/robustness.json"))
    ]


def cell(values: list[float]) -> str:
    if not values:
        return ""
    return (
        f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
        if len(values) > 1
        else f"{values[0]:.4f}"
    )


def main(root: Path, arms: list[str]) -> None:
    print(
        "| arm | seeds | split | clean per-image Dice | mean shifted Dice | robustness | mirror |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for arm in arms:
        for split in ("val", "test"):
            rs = runs(root, arm, split)
            if rs:
                print(
                    f"| {arm} | {len(rs)} | {split} | {cell([r['clean_dice'] for r in rs])} | "
                    f"{cell([r['mean_shifted_dice'] for r in rs])} | "
                    f"{cell([r['robustness'] for r in rs])} | "
                    f"{cell([r['per_shift']['mirror']['1'] for r in rs])} |"
                )
    for split in ("val", "test"):
        per_arm = {arm: runs(root, arm, split) for arm in arms}
        if not all(per_arm.values()):
            continue
        shifts = list(next(iter(per_arm.values()))[0]["per_shift"])
        print(
            f"\nPer shift on {split}: mean per-image Dice at severity 1 / 2 / 3 (mean over seeds)\n"
        )
        print("| shift | " + " | ".join(arms) + " |")
        print("| --- |" + " --- |" * len(arms))
        for shift in shifts:
            row = []
            for arm in arms:
                levels = sorted(per_arm[arm][0]["per_shift"][shift])
                row.append(
                    " / ".join(
                        f"{np.mean([r['per_shift'][shift][lv] for r in per_arm[arm]]):.3f}"
                        for lv in levels
                    )
                )
            print(f"| {shift} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2:])
