"""The evaluation report's files: metrics.json, per_image.csv, report.md, PNG figures and
TensorBoard events, from the summary (``evaluation.summary``) and the scoring's arrays."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from lungseg.evaluation import figures
from lungseg.evaluation.summary import ORIGINAL, ORIGINAL_CONFUSION, POOLED
from lungseg.markdown import table


def make_figures(
    results: dict[str, Any],
    rows: list[dict[str, Any]],
    samples: dict[str, Any],
    cfg: DictConfig,
    history_dir: Path,
    quality: dict[str, Any],
) -> dict[str, Any]:
    """All figures of the report, by file name (without .png); ``samples`` holds the sample sheet's
    arrays (images, masks, probs, titles), ``quality`` the quality score's figures
    (:func:`quality_summary`)."""
    pooled, threshold = results["pooled"][0], results["thresholds"][0]
    fpr, tpr, _ = results["roc"]
    precision, recall, _ = results["pr"]
    confusion = results["confusion"]
    prevalence = float(confusion[1].sum() / max(confusion.sum(), 1))
    figs = {
        "roc": figures.roc_figure(fpr, tpr, pooled["auroc"]),
        "precision_recall": figures.pr_figure(precision, recall, prevalence),
        "confusion_matrix": figures.confusion_figure(confusion),
        "dice_histogram": figures.dice_histogram(np.array([r["dice"] for r in rows])),
    }
    history = figures.read_history(history_dir)
    if history:
        figs["training_curves"] = figures.history_figure(history)
    figs["predictions"] = figures.prediction_figure(
        samples["images"], samples["masks"], samples["probs"], samples["titles"], threshold
    )
    figs["quality_vs_dice"] = figures.quality_figure(
        np.array([r["quality_score"] for r in rows]),
        np.array([r["dice_clean"] for r in rows]),
        quality["review_below"],
        quality["bad_dice"],
    )
    if cfg.calibration:
        cal = results["calibration"]
        figs["reliability"] = figures.reliability_figure(
            cal["confidence"], cal["frequency"], cal["fraction"], float(cal["ece"])
        )
    return figs


def _fmt(x: Any) -> str:
    return (
        f"{x:.6f}"
        if isinstance(x, float)
        else ("-" if x is None else f"{x:,}" if isinstance(x, int) else str(x))
    )


def _spread_rows(spread_of: dict[str, Any]) -> list[tuple[str, ...]]:
    """Table rows (metric, mean, SD, median, worst) of a :func:`spread` result."""
    return [
        (
            k.removesuffix("_mean"),
            *(
                _fmt(spread_of.get(k.replace("_mean", s)))
                for s in ("_mean", "_sd", "_median", "_worst")
            ),
        )
        for k in spread_of
        if k.endswith("_mean")
    ]


def report_markdown(summary: dict[str, Any], figure_names: list[str]) -> str:
    """report.md: the original's results table beside ours, per-image summary, worst 5, threshold,
    figures."""
    pooled, per, conf = summary["pooled"], summary["per_image"], summary["confusion"]
    clean = summary["postprocessed"]
    name = {
        "balanced_accuracy": '"AUC" of the original = (recall + specificity) / 2',
        "auroc": "AUROC (from probabilities)",
        "loss": "BCE loss",
    }
    metrics_rows = [(name.get(k, k), _fmt(ORIGINAL.get(k)), _fmt(pooled[k])) for k in POOLED]
    conf_rows = [
        (k.upper(), _fmt(ORIGINAL_CONFUSION[k]), _fmt(conf[k])) for k in ("tp", "fn", "fp", "tn")
    ]
    per_rows = _spread_rows(per)
    worst = [
        (Path(w["file"]).name, *(_fmt(float(w[k])) for k in ("dice", "iou", "hd95_px", "assd_px")))
        for w in per["worst"]
    ]
    parts = [
        f"# Evaluation: {summary['split']} split, {summary['n_images']} images",
        f"Checkpoint `{summary['checkpoint']}`, data `{summary['data_root']}`, "
        f"{summary['image_size']} px, "
        f"threshold {summary['threshold']}, precision {summary['precision']} on "
        f"{summary['device']}.",
        "## Pooled pixel metrics beside the original notebook",
        'The notebook sampled its test batches randomly (with replacement) and computed its "AUC" '
        "from "
        "thresholded masks; here every image is evaluated once and AUROC comes from the "
        "probabilities. "
        "Its positives are ~75 % of pixels, so its positive class may be inverted relative to the "
        "lung masks.",
        table([("metric", "original (Keras notebook)", "this evaluation"), *metrics_rows]),
        table([("pixels", "original", "this evaluation"), *conf_rows]),
        "## Per-image metrics",
        "HD95 and ASSD are in pixels (`_mm`: millimetres). An empty truth or prediction counts as "
        "the image "
        f"diagonal; both empty as 0 (Dice/IoU 1). Empty truths: {per['empty_truth']}, empty "
        "predictions: "
        f"{per['empty_prediction']}.",
        table([("metric", "mean", "SD", "median", "worst"), *per_rows]),
        "## After post-processing",
        "The thresholded masks cleaned as `lungseg.predict` does by default (the two largest "
        "connected "
        "components kept, holes filled); the pooled metrics above are the model's raw output.",
        table(
            [
                ("metric", "mean", "SD", "median", "worst"),
                ("pooled Dice", _fmt(clean["pooled_dice"]), "", "", ""),
                ("pooled IoU", _fmt(clean["pooled_iou"]), "", "", ""),
                *_spread_rows(clean),
            ]
        ),
        "## Worst 5 images by Dice",
        table([("image", "Dice", "IoU", "HD95 px", "ASSD px"), *worst]),
    ]
    if summary.get("tuned"):
        t = summary["tuned"]
        parts += [
            "## Threshold tuned on the val split",
            f"Best pooled val Dice {t['val_dice']:.6f} at threshold {t['threshold']:.4f}.",
            table(
                [
                    (
                        "metric",
                        f"threshold {summary['threshold']}",
                        f"threshold {t['threshold']:.4f}",
                    ),
                    *[(k, _fmt(pooled[k]), _fmt(t["pooled"][k])) for k in POOLED],
                    (
                        "per-image Dice mean",
                        _fmt(per["dice_mean"]),
                        _fmt(t["per_image"]["dice_mean"]),
                    ),
                ]
            ),
        ]
    q = summary["quality"]
    bad = (
        f"{q['bad_flagged_share']:.0%} of the {q['n_bad']} films under Dice {q['bad_dice']:.2f}"
        if q["n_bad"]
        else f"no film is under Dice {q['bad_dice']:.2f}"
    )
    parts += [
        "## Quality score",
        "Each post-processed mask's `quality_score` (`lungseg.inference.quality`, an estimate of "
        "its Dice; TTA views "
        f"{'on' if q['tta'] else 'off'}) against its true Dice: Spearman {_fmt(q['spearman'])}. "
        "At the operating "
        f"point {q['review_below']:.4f} (`quality.review_below`), {q['n_flagged']} of "
        f"{q['n_images']} films "
        f"({q['flagged_share']:.0%}) are flagged `needs_review`, {bad}. The highest operating "
        "point that "
        f"flags at most a quarter of this split's films: {q['suggested_review_below']:.4f} (flags "
        f"{q['suggested_flagged_share']:.0%}); choose it on val, never on the split you report.",
    ]
    if summary.get("review"):  # evaluate review=<prediction folder>: lungseg-review's decisions
        r, kinds = summary["review"], ("accepted", "rejected", "undecided")
        dice = [
            f"the flagged masks {k} have mean Dice {r[f'flagged_{k}_dice_mean']:.4f}"
            for k in kinds[:2]
            if r.get(f"flagged_{k}_dice_mean") is not None
        ]
        parts += [
            "## Review of the flagged masks",
            f"A reviewer's decisions (`lungseg-review`, `{r['review_csv']}`) on {r['films']} "
            "predicted "
            f"films{'; ' + ', '.join(dice) if dice else ''}.",
            table(
                [
                    ("films", *kinds),
                    (f"flagged ({r['flagged']})", *(r[f"flagged_{k}"] for k in kinds)),
                    (
                        f"not flagged ({r['films'] - r['flagged']})",
                        *(r[f"others_{k}"] for k in kinds),
                    ),
                ]
            ),
        ]
    if "calibration" in summary:
        parts.append(
            "## Calibration\n\nExpected calibration error (pixels, "
            f"{summary['calibration']['bins']} "
            f"bins): {summary['calibration']['ece']:.6f}."
        )
    parts += ["## Figures", *[f"![{n}]({n}.png)" for n in figure_names]]
    return "\n\n".join(parts) + "\n"


def write_report(
    out: Path,
    summary: dict[str, Any],
    results: dict[str, Any],
    samples: dict[str, Any],
    cfg: DictConfig,
    history_dir: Path,
) -> dict[str, Any]:
    """Write every output file into ``out``: per_image.csv, the figures (training curves from
    ``history_dir``, the sample sheet from ``samples``), TensorBoard events, metrics.json
    (``summary``, with the figures' names) and report.md; return that summary. Arrays in, files out:
    the report never runs a model."""
    from torch.utils.tensorboard import SummaryWriter

    rows = results["rows"]
    with (out / "per_image.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    figs = make_figures(results, rows, samples, cfg, history_dir, summary["quality"])
    tb = SummaryWriter(str(out / "tensorboard"))
    try:
        names = [p.stem for p in figures.save_figures(figs, out, tb)]
        for key, value in summary["pooled"].items():
            tb.add_scalar(f"eval/{cfg.split}/{key}", value)
        for key in ("dice_mean", "iou_mean", "hd95_mean", "assd_mean"):
            tb.add_scalar(f"eval/{cfg.split}/per_image_{key}", summary["per_image"][key])
            tb.add_scalar(f"eval/{cfg.split}/postprocessed_{key}", summary["postprocessed"][key])
        for key in ("spearman", "flagged_share", "bad_flagged_share"):
            if summary["quality"][key] is not None:
                tb.add_scalar(f"eval/{cfg.split}/quality_{key}", summary["quality"][key])
    finally:
        tb.close()
    summary["figures"] = [f"{n}.png" for n in names]
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(summary, names))
    return summary
