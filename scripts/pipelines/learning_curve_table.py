"""Val and test figures against the number of training images (scripts/pipelines/learning_curve.sh;
docs/RESULTS.md).

    python scripts/pipelines/learning_curve_table.py outputs/learning_curve/n*-seed* [--plot
    learning_curve.png]

Each run folder is ``n<N>-seed<S>`` with eval/val and eval/test from lungseg.evaluate; runs with the
same N are averaged (mean ± SD when there are several seeds). The hard test films are the three
consolidated AP supine ones. Then a least-squares line through every run, figure = a + b * log2(N):
the gain per doubling of the training set, and the N at which that line would reach the targets of
issue 8 (an extrapolation, labelled as one).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from results_table import cell  # scripts/ is on the path when this runs as a script

HARD = ("cxrimage_76", "cxrimage_86", "cxrimage_87")
TARGETS = {"test pooled Dice": 0.96, "test per-image Dice": 0.95, "test HD95 px": 8.0}


def read_run(run: Path) -> dict[str, float]:
    """One run's figures: val and test pooled / per-image Dice and HD95, and test Dice without and
    on the hard films."""
    row: dict[str, float] = {}
    for split in ("val", "test"):
        path = run / "eval" / split / "metrics.json"
        if not path.is_file():
            raise SystemExit(
                f"{path}: missing; score the run first: python -m lungseg.evaluate "
                f"ckpt_path={run}/checkpoints/best.ckpt data.root=<set> split={split}"
            )
        metrics = json.loads(path.read_text())
        row[f"{split} pooled Dice"] = metrics["pooled"]["dice"]
        row[f"{split} per-image Dice"] = metrics["per_image"]["dice_mean"]
        row[f"{split} HD95 px"] = metrics["per_image"]["hd95_mean"]
    with (run / "eval" / "test" / "per_image.csv").open(newline="") as f:
        dice = {Path(r["file"]).stem: float(r["dice"]) for r in csv.DictReader(f)}
    row["test per-image Dice, 3 hard films"] = float(np.mean([dice[k] for k in HARD]))
    row["test per-image Dice, other 12"] = float(
        np.mean([v for k, v in dice.items() if k not in HARD])
    )
    return row


def read_runs(runs: list[Path]) -> dict[int, list[dict[str, float]]]:
    """Runs grouped by their number of training images."""
    groups: dict[int, list[dict[str, float]]] = defaultdict(list)
    for run in runs:
        match = re.fullmatch(r"n(\d+)-seed\d+", run.name)
        if match is None:
            raise SystemExit(
                f"{run}: expected a folder named n<N>-seed<S> (scripts/pipelines/learning_curve.sh)"
            )
        groups[int(match.group(1))].append(read_run(run))
    return dict(sorted(groups.items()))


def fit(groups: dict[int, list[dict[str, float]]], column: str) -> tuple[float, float]:
    """Intercept and slope of column = a + b * log2(N), least squares over every run."""
    n = np.array([k for k, rows in groups.items() for _ in rows], float)
    y = np.array([r[column] for rows in groups.values() for r in rows])
    slope, intercept = np.polyfit(np.log2(n), y, 1)
    return float(intercept), float(slope)


def table(groups: dict[int, list[dict[str, float]]]) -> str:
    """The markdown table: one row per N, then the fitted gain per doubling."""
    columns = list(next(iter(groups.values()))[0])
    lines = [
        "| training images | runs | " + " | ".join(columns) + " |",
        "| --- " * (len(columns) + 2) + "|",
    ]
    for n, rows in groups.items():
        cells = [
            cell(np.array([r[column] for r in rows]), 1 if "HD95" in column else 4)
            for column in columns
        ]
        lines.append(f"| {n} | {len(rows)} | " + " | ".join(cells) + " |")
    if len(groups) > 1:
        slopes = [fit(groups, c)[1] for c in columns]
        lines.append(
            "| per doubling (fit) | | "
            + " | ".join(
                f"{s:+.1f}" if "HD95" in c else f"{s:+.4f}"
                for c, s in zip(columns, slopes, strict=True)
            )
            + " |"
        )
    return "\n".join(lines)


def extrapolations(groups: dict[int, list[dict[str, float]]]) -> list[str]:
    """Where the fitted lines would meet the targets (only for figures that improve with N)."""
    lines = []
    for column, target in TARGETS.items():
        a, b = fit(groups, column)
        improving = b < 0 if "HD95" in column else b > 0
        if improving:
            lines.append(
                f"{column}: {b:+.4g} per doubling; the line reaches {target} at about "
                f"{2 ** ((target - a) / b):,.0f} training images (extrapolated)"
            )
        else:
            lines.append(f"{column}: does not improve with N here ({b:+.4g} per doubling)")
    return lines


def plot(groups: dict[int, list[dict[str, float]]], path: Path) -> None:
    """Val and test pooled Dice and the hard films' Dice against N (log scale), every run a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for column, colour in (
        ("val pooled Dice", "tab:blue"),
        ("test pooled Dice", "tab:orange"),
        ("test per-image Dice, other 12", "tab:green"),
        ("test per-image Dice, 3 hard films", "tab:red"),
    ):
        xs = [n for n, rows in groups.items() for _ in rows]
        ax.scatter(xs, [r[column] for rows in groups.values() for r in rows], color=colour, s=14)
        ax.plot(
            list(groups),
            [np.mean([r[column] for r in rows]) for rows in groups.values()],
            color=colour,
            label=column,
        )
    ax.axhline(
        TARGETS["test pooled Dice"], color="grey", ls="--", lw=1, label="target, pooled test Dice"
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(groups), [str(n) for n in groups])
    ax.set(
        xlabel="training images (cxr-v7, equal optimizer steps)",
        ylabel="Dice",
        title="cxr_small: accuracy against training-set size",
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--plot", type=Path, help="also draw the curve to this PNG")
    args = parser.parse_args()
    groups = read_runs(args.runs)
    print(table(groups))
    if len(groups) > 1:
        print()
        print("\n".join(extrapolations(groups)))
    if args.plot:
        plot(groups, args.plot)
        print(f"figure: {args.plot}")


if __name__ == "__main__":
    main()
