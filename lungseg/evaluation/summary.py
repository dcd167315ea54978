"""The evaluation's numbers as one summary (metrics.json): pooled and per-image metrics, the
post-processed masks, the tuned threshold, calibration and the quality score; computed from the
scoring's arrays, written by ``report``."""

from __future__ import annotations

from typing import Any

import numpy as np

from lungseg.inference.quality import operating_point, review_figures

POOLED = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "specificity",
    "iou",
    "dice",
    "auroc",
    "loss",
    "balanced_accuracy",
)
PER_IMAGE = ("dice", "iou", "hd95_px", "assd_px", "hd95_mm", "assd_mm")
# The notebook's reported test results (see ../shared/seed/notebook-facts.md); its "AUC" was (sens +
# spec) / 2 of thresholded masks, and its accuracy is derived here from its confusion matrix.
ORIGINAL = {
    "precision": 0.974872,
    "recall": 0.982158,
    "f1": 0.978501,
    "dice": 0.978501,
    "specificity": 0.991546,
    "balanced_accuracy": 0.986852,
    "iou": 0.957907,
}
ORIGINAL_CONFUSION = {"tp": 102_883_876, "fn": 877_213, "fp": 618_257, "tn": 34_032_686}
ORIGINAL["accuracy"] = (ORIGINAL_CONFUSION["tp"] + ORIGINAL_CONFUSION["tn"]) / sum(
    ORIGINAL_CONFUSION.values()
)


def spread(
    rows: list[dict[str, Any]], names: tuple[str, ...] = PER_IMAGE, suffix: str = ""
) -> dict[str, float]:
    """Mean, SD (n-1), median and worst value of each per-image metric ``<name><suffix>`` present in
    ``rows``."""
    out: dict[str, float] = {}
    for name in names:
        column = name.replace("_px", f"{suffix}_px") if name.endswith("_px") else f"{name}{suffix}"
        if column not in rows[0]:
            continue
        values = np.array([r[column] for r in rows], dtype=np.float64)
        key = name.removesuffix("_px")
        worst = values.min() if name in ("dice", "iou") else values.max()
        out.update(
            {
                f"{key}_mean": float(values.mean()),
                f"{key}_sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                f"{key}_median": float(np.median(values)),
                f"{key}_worst": float(worst),
            }
        )
    return out


def per_image_summary(rows: list[dict[str, Any]], n_worst: int = 5) -> dict[str, Any]:
    """Per-image spread of each metric, the empty-mask counts and the worst images."""
    out: dict[str, Any] = spread(rows)
    out["empty_truth"] = sum(r["empty"] in ("truth", "both") for r in rows)
    out["empty_prediction"] = sum(r["empty"] in ("prediction", "both") for r in rows)
    ranked = sorted(range(len(rows)), key=lambda i: rows[i]["dice"])[:n_worst]
    out["worst"] = [
        {k: rows[i][k] for k in ("file", "dice", "iou", "hd95_px", "assd_px")} for i in ranked
    ]
    return out


def sample_indices(rows: list[dict[str, Any]], n_samples: int, n_worst: int) -> list[int]:
    """The worst ``n_worst`` images by Dice, then ``n_samples`` evenly spaced others."""
    worst = sorted(range(len(rows)), key=lambda i: rows[i]["dice"])[:n_worst]
    rest = [i for i in range(len(rows)) if i not in worst]
    spread = (
        [rest[int(j)] for j in np.linspace(0, len(rest) - 1, min(n_samples, len(rest)))]
        if rest
        else []
    )
    return worst + list(dict.fromkeys(spread))


def quality_summary(rows: list[dict[str, Any]], review_below: float, tta: bool) -> dict[str, Any]:
    """How well the quality score predicts the Dice of the post-processed masks (the masks it
    scores): Spearman, the share flagged at ``review_below`` and the share of films under Dice 0.90
    flagged; and the operating point this split suggests (the highest that flags at most a quarter
    of its films: choose it on val, never on test)."""
    scores, dice = [r["quality_score"] for r in rows], [r["dice_clean"] for r in rows]
    point = operating_point(scores)
    at_point = review_figures(scores, dice, point)
    return {
        **review_figures(scores, dice, review_below),
        "tta": tta,
        "suggested_review_below": point,
        "suggested_flagged_share": at_point["flagged_share"],
        "suggested_bad_flagged_share": at_point["bad_flagged_share"],
    }


def build_summary(
    results: dict[str, Any],
    meta: dict[str, Any],
    tuned: tuple[float, float] | None,
    calibration_bins: int | None,
) -> dict[str, Any]:
    """metrics.json's content from ``evaluation.scoring.score_split``'s results: ``meta`` (model,
    data, settings) first, then every figure; ``tuned`` the val-tuned threshold and its Dice,
    ``calibration_bins`` None without calibration."""
    rows = results["rows"]
    tn, fp, fn, tp = (int(v) for v in results["confusion"].reshape(-1))
    summary: dict[str, Any] = {
        **meta,
        "n_images": len(rows),
        "n_pixels": tn + fp + fn + tp,
        "pooled": results["pooled"][0],
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "per_image": per_image_summary(rows),
        "postprocessed": {
            **{f"pooled_{k}": v for k, v in results["pooled_clean"].items()},
            **spread(rows, ("dice", "iou", "hd95_px", "assd_px"), "_clean"),
        },
    }
    if tuned is not None:
        t = results["thresholds"][1]
        summary["tuned"] = {
            "threshold": t,
            "val_dice": tuned[1],
            "pooled": results["pooled"][1],
            "per_image": {
                "dice_mean": float(np.mean([r[f"dice@{t:.4g}"] for r in rows])),
                "iou_mean": float(np.mean([r[f"iou@{t:.4g}"] for r in rows])),
            },
        }
    if calibration_bins is not None:
        summary["calibration"] = {
            "ece": float(results["calibration"]["ece"]),
            "bins": calibration_bins,
        }
    summary["quality"] = quality_summary(rows, meta["review_below"], meta["quality_tta"])
    return summary
