"""The evaluation report: metrics.json, per_image.csv, report.md, PNG figures and TensorBoard events."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from lungseg.evaluation import figures
from lungseg.inference.quality import operating_point, review_figures
from lungseg.markdown import table

POOLED = ("accuracy", "precision", "recall", "f1", "specificity", "iou", "dice", "auroc", "loss", "balanced_accuracy")
PER_IMAGE = ("dice", "iou", "hd95_px", "assd_px", "hd95_mm", "assd_mm")
# The notebook's reported test results (see ../shared/seed/notebook-facts.md); its "AUC" was (sens + spec) / 2
# of thresholded masks, and its accuracy is derived here from its confusion matrix.
ORIGINAL = {"precision": 0.974872, "recall": 0.982158, "f1": 0.978501, "dice": 0.978501, "specificity": 0.991546,
            "balanced_accuracy": 0.986852, "iou": 0.957907}
ORIGINAL_CONFUSION = {"tp": 102_883_876, "fn": 877_213, "fp": 618_257, "tn": 34_032_686}
ORIGINAL["accuracy"] = (ORIGINAL_CONFUSION["tp"] + ORIGINAL_CONFUSION["tn"]) / sum(ORIGINAL_CONFUSION.values())


def spread(rows: list[dict[str, Any]], names: tuple[str, ...] = PER_IMAGE, suffix: str = "") -> dict[str, float]:
    """Mean, SD (n-1), median and worst value of each per-image metric ``<name><suffix>`` present in ``rows``."""
    out: dict[str, float] = {}
    for name in names:
        column = name.replace("_px", f"{suffix}_px") if name.endswith("_px") else f"{name}{suffix}"
        if column not in rows[0]:
            continue
        values = np.array([r[column] for r in rows], dtype=np.float64)
        key = name.removesuffix("_px")
        worst = values.min() if name in ("dice", "iou") else values.max()
        out.update({f"{key}_mean": float(values.mean()),
                    f"{key}_sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    f"{key}_median": float(np.median(values)), f"{key}_worst": float(worst)})
    return out


def summarise(rows: list[dict[str, Any]], n_worst: int = 5) -> dict[str, Any]:
    """Per-image spread of each metric, the empty-mask counts and the worst images."""
    out: dict[str, Any] = spread(rows)
    out["empty_truth"] = sum(r["empty"] in ("truth", "both") for r in rows)
    out["empty_prediction"] = sum(r["empty"] in ("prediction", "both") for r in rows)
    ranked = sorted(range(len(rows)), key=lambda i: rows[i]["dice"])[:n_worst]
    out["worst"] = [{k: rows[i][k] for k in ("file", "dice", "iou", "hd95_px", "assd_px")} for i in ranked]
    return out


def sample_indices(rows: list[dict[str, Any]], n_samples: int, n_worst: int) -> list[int]:
    """The worst ``n_worst`` images by Dice, then ``n_samples`` evenly spaced others."""
    worst = sorted(range(len(rows)), key=lambda i: rows[i]["dice"])[:n_worst]
    rest = [i for i in range(len(rows)) if i not in worst]
    spread = [rest[int(j)] for j in np.linspace(0, len(rest) - 1, min(n_samples, len(rest)))] if rest else []
    return worst + list(dict.fromkeys(spread))


def make_figures(results: dict[str, Any], rows: list[dict[str, Any]], samples: dict[str, Any], cfg: DictConfig,
                 history_dir: Path, quality: dict[str, Any]) -> dict[str, Any]:
    """All figures of the report, by file name (without .png); ``samples`` holds the sample sheet's arrays
    (images, masks, probs, titles), ``quality`` the quality score's figures (:func:`quality_summary`)."""
    pooled, threshold = results["pooled"][0], results["thresholds"][0]
    fpr, tpr, _ = results["roc"]
    precision, recall, _ = results["pr"]
    confusion = results["confusion"]
    prevalence = float(confusion[1].sum() / max(confusion.sum(), 1))
    figs = {"roc": figures.roc_figure(fpr, tpr, pooled["auroc"]),
            "precision_recall": figures.pr_figure(precision, recall, prevalence),
            "confusion_matrix": figures.confusion_figure(confusion),
            "dice_histogram": figures.dice_histogram(np.array([r["dice"] for r in rows]))}
    history = figures.read_history(history_dir)
    if history:
        figs["training_curves"] = figures.history_figure(history)
    figs["predictions"] = figures.prediction_figure(samples["images"], samples["masks"], samples["probs"],
                                                    samples["titles"], threshold)
    figs["quality_vs_dice"] = figures.quality_figure(np.array([r["quality_score"] for r in rows]),
                                                     np.array([r["dice_clean"] for r in rows]),
                                                     quality["review_below"], quality["bad_dice"])
    if cfg.calibration:
        cal = results["calibration"]
        figs["reliability"] = figures.reliability_figure(cal["confidence"], cal["frequency"], cal["fraction"],
                                                         float(cal["ece"]))
    return figs


def quality_summary(rows: list[dict[str, Any]], review_below: float, tta: bool) -> dict[str, Any]:
    """How well the quality score predicts the Dice of the post-processed masks (the masks it scores): Spearman,
    the share flagged at ``review_below`` and the share of films under Dice 0.90 flagged; and the operating point
    this split suggests (the highest that flags at most a quarter of its films: choose it on val, never on test)."""
    scores, dice = [r["quality_score"] for r in rows], [r["dice_clean"] for r in rows]
    point = operating_point(scores)
    at_point = review_figures(scores, dice, point)
    return {**review_figures(scores, dice, review_below), "tta": tta, "suggested_review_below": point,
            "suggested_flagged_share": at_point["flagged_share"],
            "suggested_bad_flagged_share": at_point["bad_flagged_share"]}


def _fmt(x: Any) -> str:
    return f"{x:.6f}" if isinstance(x, float) else ("-" if x is None else f"{x:,}" if isinstance(x, int) else str(x))


def _spread_rows(spread_of: dict[str, Any]) -> list[tuple[str, ...]]:
    """Table rows (metric, mean, SD, median, worst) of a :func:`spread` result."""
    return [(k.removesuffix("_mean"), *(_fmt(spread_of.get(k.replace("_mean", s))) for s in
                                        ("_mean", "_sd", "_median", "_worst")))
            for k in spread_of if k.endswith("_mean")]


def markdown(summary: dict[str, Any], figure_names: list[str]) -> str:
    """report.md: the original's results table beside ours, per-image summary, worst 5, threshold, figures."""
    pooled, per, conf = summary["pooled"], summary["per_image"], summary["confusion"]
    clean = summary["postprocessed"]
    name = {"balanced_accuracy": '"AUC" of the original = (recall + specificity) / 2',
            "auroc": "AUROC (from probabilities)", "loss": "BCE loss"}
    metrics_rows = [(name.get(k, k), _fmt(ORIGINAL.get(k)), _fmt(pooled[k])) for k in POOLED]
    conf_rows = [(k.upper(), _fmt(ORIGINAL_CONFUSION[k]), _fmt(conf[k])) for k in ("tp", "fn", "fp", "tn")]
    per_rows = _spread_rows(per)
    worst = [(Path(w["file"]).name, *(_fmt(float(w[k])) for k in ("dice", "iou", "hd95_px", "assd_px")))
             for w in per["worst"]]
    parts = [
        f"# Evaluation: {summary['split']} split, {summary['n_images']} images",
        f"Checkpoint `{summary['checkpoint']}`, data `{summary['data_root']}`, {summary['image_size']} px, "
        f"threshold {summary['threshold']}, precision {summary['precision']} on {summary['device']}.",
        "## Pooled pixel metrics beside the original notebook",
        "The notebook sampled its test batches randomly (with replacement) and computed its \"AUC\" from "
        "thresholded masks; here every image is evaluated once and AUROC comes from the probabilities. "
        "Its positives are ~75 % of pixels, so its positive class may be inverted relative to the lung masks.",
        table([("metric", "original (Keras notebook)", "this evaluation"), *metrics_rows]),
        table([("pixels", "original", "this evaluation"), *conf_rows]),
        "## Per-image metrics",
        "HD95 and ASSD are in pixels (`_mm`: millimetres). An empty truth or prediction counts as the image "
        f"diagonal; both empty as 0 (Dice/IoU 1). Empty truths: {per['empty_truth']}, empty predictions: "
        f"{per['empty_prediction']}.",
        table([("metric", "mean", "SD", "median", "worst"), *per_rows]),
        "## After post-processing",
        "The thresholded masks cleaned as `lungseg.predict` does by default (the two largest connected "
        "components kept, holes filled); the pooled metrics above are the model's raw output.",
        table([("metric", "mean", "SD", "median", "worst"),
                ("pooled Dice", _fmt(clean["pooled_dice"]), "", "", ""),
                ("pooled IoU", _fmt(clean["pooled_iou"]), "", "", ""),
                *_spread_rows(clean)]),
        "## Worst 5 images by Dice",
        table([("image", "Dice", "IoU", "HD95 px", "ASSD px"), *worst]),
    ]
    if summary.get("tuned"):
        t = summary["tuned"]
        parts += ["## Threshold tuned on the val split",
                  f"Best pooled val Dice {t['val_dice']:.6f} at threshold {t['threshold']:.4f}.",
                  table([("metric", f"threshold {summary['threshold']}", f"threshold {t['threshold']:.4f}"),
                          *[(k, _fmt(pooled[k]), _fmt(t["pooled"][k])) for k in POOLED],
                          ("per-image Dice mean", _fmt(per["dice_mean"]), _fmt(t["per_image"]["dice_mean"]))])]
    q = summary["quality"]
    bad = (f"{q['bad_flagged_share']:.0%} of the {q['n_bad']} films under Dice {q['bad_dice']:.2f}" if q["n_bad"]
           else f"no film is under Dice {q['bad_dice']:.2f}")
    parts += ["## Quality score",
              f"Each post-processed mask's `quality_score` (`lungseg.inference.quality`, an estimate of its Dice; TTA views "
              f"{'on' if q['tta'] else 'off'}) against its true Dice: Spearman {_fmt(q['spearman'])}. At the operating "
              f"point {q['review_below']:.4f} (`quality.review_below`), {q['n_flagged']} of {q['n_images']} films "
              f"({q['flagged_share']:.0%}) are flagged `needs_review`, {bad}. The highest operating point that "
              f"flags at most a quarter of this split's films: {q['suggested_review_below']:.4f} (flags "
              f"{q['suggested_flagged_share']:.0%}); choose it on val, never on the split you report."]
    if summary.get("review"):  # evaluate review=<prediction folder>: lungseg-review's decisions
        r, kinds = summary["review"], ("accepted", "rejected", "undecided")
        dice = [f"the flagged masks {k} have mean Dice {r[f'flagged_{k}_dice_mean']:.4f}"
                for k in kinds[:2] if r.get(f"flagged_{k}_dice_mean") is not None]
        parts += ["## Review of the flagged masks",
                  f"A reviewer's decisions (`lungseg-review`, `{r['review_csv']}`) on {r['films']} predicted "
                  f"films{'; ' + ', '.join(dice) if dice else ''}.",
                  table([("films", *kinds), (f"flagged ({r['flagged']})", *(r[f"flagged_{k}"] for k in kinds)),
                          (f"not flagged ({r['films'] - r['flagged']})", *(r[f"others_{k}"] for k in kinds))])]
    if "calibration" in summary:
        parts.append(f"## Calibration\n\nExpected calibration error (pixels, {summary['calibration']['bins']} "
                     f"bins): {summary['calibration']['ece']:.6f}.")
    parts += ["## Figures", *[f"![{n}]({n}.png)" for n in figure_names]]
    return "\n\n".join(parts) + "\n"


def write_report(out: Path, results: dict[str, Any], meta: dict[str, Any], tuned: tuple[float, float] | None,
                 samples: dict[str, Any], cfg: DictConfig, history_dir: Path) -> dict[str, Any]:
    """Write every output file into ``out`` (training curves from ``history_dir``, the sample sheet from
    ``samples``); return metrics.json's content. Arrays in, files out: the report never runs a model."""
    from torch.utils.tensorboard import SummaryWriter

    rows = results["rows"]
    tn, fp, fn, tp = (int(v) for v in results["confusion"].reshape(-1))
    summary: dict[str, Any] = {**meta, "n_images": len(rows), "n_pixels": tn + fp + fn + tp,
                               "pooled": results["pooled"][0], "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
                               "per_image": summarise(rows),
                               "postprocessed": {**{f"pooled_{k}": v for k, v in results["pooled_clean"].items()},
                                                 **spread(rows, ("dice", "iou", "hd95_px", "assd_px"), "_clean")}}
    if tuned is not None:
        t = results["thresholds"][1]
        summary["tuned"] = {"threshold": t, "val_dice": tuned[1], "pooled": results["pooled"][1],
                            "per_image": {"dice_mean": float(np.mean([r[f"dice@{t:.4g}"] for r in rows])),
                                          "iou_mean": float(np.mean([r[f"iou@{t:.4g}"] for r in rows]))}}
    if cfg.calibration:
        summary["calibration"] = {"ece": float(results["calibration"]["ece"]), "bins": cfg.calibration_bins}
    summary["quality"] = quality_summary(rows, meta["review_below"], meta["quality_tta"])
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
    (out / "report.md").write_text(markdown(summary, names))
    return summary
