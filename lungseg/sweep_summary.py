"""Summarise a sweep: ``python -m lungseg.sweep_summary outputs/multirun/<date>/<time> [--metric
best/val_dice]`` (``lungseg.training.sweeps``; every ``--multirun`` writes it at its end too)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lungseg.errors import exit_on_user_error
from lungseg.training.sweeps import summarize


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m lungseg.sweep_summary <multirun folder> [--metric
    best/val_dice]``."""
    parser = argparse.ArgumentParser(
        prog="python -m lungseg.sweep_summary", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "sweep_dir", help="the folder a --multirun wrote, e.g. outputs/multirun/<date>/<time>"
    )
    parser.add_argument(
        "--metric", default="best/val_dice", help="what 'best' means (a loss is minimised)"
    )
    args = parser.parse_args(argv)
    summary = summarize(args.sweep_dir, args.metric)
    print(summary["report"])
    print(f"written: {Path(args.sweep_dir) / 'summary.csv'}, summary.md, summary.png")
    print(f"see it: tensorboard --logdir {args.sweep_dir}  (HParams tab)")


if __name__ == "__main__":
    main(sys.argv[1:])
