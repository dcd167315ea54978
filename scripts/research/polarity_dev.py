"""Research script, not a pipeline: produced the polarity check's thresholds, POLARITY_CHECK_BELOW
and POLARITY_ACCEPT (docs/quality.md) at commit 3e03194; kept to reproduce or extend them.

The polarity check's development data (lungseg.inference.segmenter, polarity="auto"): every train
and val film of a set under every robustness-benchmark shift and severity, given upright and
inverted, segmented as read and with its grey levels inverted; prints, per accept threshold, how
many inverted films would be read back and how many upright ones turned.

    python scripts/research/polarity_dev.py DATA_ROOT CKPT [CKPT ...]

Use it on train and val only (it never reads test). About 5 minutes per 128 px model on 2 cores.
"""

from __future__ import annotations

import sys

import numpy as np

from lungseg.evaluation.robustness import SHIFTS, load_split
from lungseg.inference.segmenter import POLARITY_CHECK_BELOW, LungSegmenter
from lungseg.metrics import mask_dice

ACCEPTS = (0.8, 0.85, 0.88, 0.9, 0.92)


def collect(root: str, ckpt: str) -> list[dict[str, float | bool]]:
    """Both readings of every (film, shift, severity, given polarity): scores and Dice."""
    seg = LungSegmenter.load(ckpt, "cpu", polarity="as_read")
    rng, rows = np.random.default_rng(0), []
    for split in ("train", "val"):
        for gray, truth, _ in load_split(root, split, seg.description.intensity):
            for shift, (move, levels) in SHIFTS.items():
                if shift == "mirror":
                    continue
                for level in levels:
                    film, moved = move(gray, truth, level, rng)
                    for given_inverted in (False, True):
                        given = 255 - film if given_inverted else film
                        as_read, flipped = seg.segment(given), seg.segment(255 - given)
                        rows.append(
                            {
                                "inverted": given_inverted ^ (shift == "inverted"),
                                "unshifted": shift == "inverted",
                                "score": as_read.quality_score,
                                "flipped_score": flipped.quality_score,
                                "dice": mask_dice(as_read.mask, moved),
                                "flipped_dice": mask_dice(flipped.mask, moved),
                            }
                        )
    return rows


def table(rows: list[dict[str, float | bool]]) -> None:
    """Per accept threshold: inverted films read back, unshifted ones read back, upright films
    turned."""
    inverted = [r for r in rows if r["inverted"]]
    upright = [r for r in rows if not r["inverted"]]
    print(
        "| accept at | inverted films read back | unshifted inverted read back | upright films "
        "turned | "
        "mean Dice, inverted films | mean Dice change, upright films |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for accept in ACCEPTS:

        def turned(r: dict) -> bool:
            return r["score"] < POLARITY_CHECK_BELOW and r["flipped_score"] >= accept  # noqa: B023

        back = sum(turned(r) for r in inverted)
        plain = [r for r in inverted if r["unshifted"]]
        dice_inverted = np.mean([r["flipped_dice"] if turned(r) else r["dice"] for r in inverted])
        change = np.mean([r["flipped_dice"] - r["dice"] if turned(r) else 0.0 for r in upright])
        print(
            f"| {accept} | {back} / {len(inverted)} | {sum(turned(r) for r in plain)} / "
            f"{len(plain)} | "
            f"{sum(turned(r) for r in upright)} / {len(upright)} | {dice_inverted:.3f} | "
            f"{change:+.4f} |"
        )


if __name__ == "__main__":
    root, ckpts = sys.argv[1], sys.argv[2:]
    everything = []
    for ckpt in ckpts:
        rows = collect(root, ckpt)
        print(f"\n{ckpt}")
        table(rows)
        everything += rows
    if len(ckpts) > 1:
        print(f"\nall {len(ckpts)} models")
        table(everything)
