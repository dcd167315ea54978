"""Research script, not a pipeline: produced the quality score's weights (docs/quality.md) at commit
c55a48a; kept to reproduce or extend them.

The quality score's development data: every film of a split, clean, under the robustness benchmark's
shifts and under synthetic airspace opacity, with its quality features, score and true Dice (of the
mask lungseg.predict delivers), to choose the score on val.

    python scripts/research/quality_features.py CKPT DATA_ROOT [SPLIT=val]
    [OUT=quality_features.csv]

Prints the Spearman correlation of each feature and of the score (without and with TTA) with Dice
(clean films, then all), the operating point each gives on the clean films and its figures, and the
TTA cost. Use it on val only: the score is frozen before test is looked at (issue 17).
"""

from __future__ import annotations

import csv
import sys
import time

import numpy as np

from lungseg.data.images import preprocess
from lungseg.data.opacity import LungOpacity
from lungseg.evaluation.robustness import APART, SHIFTS, load_split
from lungseg.inference.quality import TTA_FEATURES, operating_point, review_figures, score, spearman
from lungseg.inference.segmenter import LungSegmenter
from lungseg.metrics import mask_dice


def opacity(gray: np.ndarray, mask: np.ndarray, strength: float, rng: np.random.Generator) -> tuple:
    """Dense airspace opacity over part of the lung (lungseg.data.opacity.LungOpacity, always
    applied), the truth unchanged: the failure the test films show (consolidation on AP supine
    films), which no benchmark shift makes."""
    hit = LungOpacity(
        alpha=(strength, strength), coverage=(0.25 + strength / 3, 0.25 + strength / 3), p=1.0
    )
    hit.set_random_seed(int(rng.integers(2**31)))
    return hit(image=gray, mask=mask)["image"], mask


DEV_SHIFTS = {"opacity": (opacity, (0.5, 0.75, 0.95))}


def collect(ckpt: str, root: str, split: str) -> list[dict[str, object]]:
    seg = LungSegmenter.load(ckpt, "cpu", quality_tta=True)
    rows, seconds = [], {"model": 0.0, "tta": 0.0}
    films = load_split(root, split, seg.description.intensity)  # read as the model reads its inputs
    for i, (gray, truth, name) in enumerate(films):
        variants = [("clean", 0, gray, truth)]
        for s, (shift_name, (shift, levels)) in enumerate(
            {**SHIFTS, **APART, **DEV_SHIFTS}.items()
        ):
            for severity, level in enumerate(levels, start=1):
                moved, moved_truth = shift(
                    gray, truth, level, np.random.default_rng([0, i, s, severity])
                )
                variants.append((shift_name, severity, moved, moved_truth))
        for shift_name, severity, image, target in variants:
            result = seg.segment(image)
            plain = {k: v for k, v in result.quality_features.items() if k not in TTA_FEATURES}
            rows.append(
                {
                    "image": name,
                    "shift": shift_name,
                    "severity": severity,
                    "dice": mask_dice(result.mask, target),
                    "score": score(plain),
                    "score_tta": result.quality_score,
                    **result.quality_features,
                }
            )
    # TTA cost per film at the model's size: the model alone vs. the model and the two views
    batch = np.stack([preprocess(g, seg.image_size)[None] for g, _, _ in films])
    for _ in range(2):
        tick = time.perf_counter()
        seg.probabilities(batch)
        seconds["model"] = time.perf_counter() - tick
        tick = time.perf_counter()
        seg.quality_views(batch)
        seconds["tta"] = time.perf_counter() - tick
    print(
        f"model {1000 * seconds['model'] / len(batch):.1f} ms/film, TTA views "
        f"{1000 * seconds['tta'] / len(batch):.1f} ms/film ({seg.image_size} px, batch "
        f"{len(batch)}, "
        f"{seg.precision})"
    )
    return rows


def main() -> None:
    ckpt, root = sys.argv[1], sys.argv[2]
    split = sys.argv[3] if len(sys.argv) > 3 else "val"
    out = sys.argv[4] if len(sys.argv) > 4 else "quality_features.csv"
    rows = collect(ckpt, root, split)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    clean = [r for r in rows if r["shift"] == "clean"]
    for label, subset in (("clean", clean), ("all", rows)):
        d = [r["dice"] for r in subset]
        names = [k for k in rows[0] if k not in ("image", "shift", "severity", "dice")]
        print(
            f"{label} ({len(subset)} films, Dice {min(d):.3f}..{max(d):.3f}, "
            f"{sum(x < 0.9 for x in d)} < 0.90): "
            + ", ".join(f"{k} {spearman([r[k] for r in subset], d):+.3f}" for k in names)
        )
    for key in ("score", "score_tta"):
        point = operating_point([r[key] for r in clean])
        print(
            f"{key}: operating point on the clean films {point:.4f};",
            "clean:",
            review_figures([r[key] for r in clean], [r["dice"] for r in clean], point),
            "all:",
            review_figures([r[key] for r in rows], [r["dice"] for r in rows], point),
        )
    print(f"-> {out}")


if __name__ == "__main__":
    main()
