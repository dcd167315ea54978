"""Evaluate a model on one split: ``python -m lungseg.evaluate ckpt_path=... data.root=...
[split=test]``.

The split is scored by ``lungseg.evaluation.scoring`` (every image once, in file order,
un-augmented), summarised by ``lungseg.evaluation.summary`` and written by
``lungseg.evaluation.report`` into a folder beside the final one, which replaces an earlier report
only whole (``overwrite=true``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from lungseg.atomic import atomic_dir, output_lock
from lungseg.config import CONFIG_DIR, command_line
from lungseg.errors import CheckpointError, exit_on_user_error
from lungseg.evaluation.report import write_report
from lungseg.evaluation.review import describe, review_counts
from lungseg.evaluation.scoring import choose_threshold, sample_predictions, score_split
from lungseg.evaluation.summary import build_summary
from lungseg.inference.backends import model_sources
from lungseg.inference.segmenter import LungSegmenter
from lungseg.runs import checkpoint_run
from lungseg.settings import check_evaluate, refuse_existing, writable_dir

log = logging.getLogger(__name__)


def run_dir(ckpt_path: str | Path) -> Path:
    """The training run of a checkpoint: the parent of ``checkpoints/``, else the checkpoint's
    folder (where the report goes by default, and where training curves are looked for)."""
    ckpt_path = Path(ckpt_path).resolve()
    return checkpoint_run(ckpt_path) or ckpt_path.parent


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Load, check, evaluate and write the report; return the metrics.json content."""
    if not cfg.get("ckpt_path") and not cfg.get("model_path"):
        raise CheckpointError(
            "no model given; pass ckpt_path=outputs/<run>/checkpoints/best.ckpt (or "
            "model_path=DIR, "
            "a pretrained folder)"
        )
    check_evaluate(cfg)
    # checked first
    reviewed = review_counts(cfg.review, required=True) if cfg.get("review") else None
    sources = model_sources(cfg.get("ckpt_path") or cfg.get("model_path"))
    name = cfg.split if len(sources) == 1 else f"{cfg.split}-ensemble-of-{len(sources)}"
    out = Path(cfg.output_dir) if cfg.get("output_dir") else run_dir(sources[0]) / "eval" / name
    refuse_existing(out, "output_dir", bool(cfg.overwrite))
    writable_dir(out.parent, "output_dir")
    seg = LungSegmenter.load(
        sources,
        str(cfg.device),
        cfg.precision,
        cfg.data.image_size,
        threshold=cfg.get("threshold"),
        quality_tta=bool(cfg.quality.tta),
        review_below=cfg.quality.review_below,
        polarity=str(cfg.polarity),
    )
    # an ensemble's report goes beside its first member's run, named for the ensemble
    source = Path(sources[0])
    size = seg.image_size
    datamodule = instantiate(
        cfg.data, image_size=int(size), train_transform=None, intensity=seg.description.intensity
    )  # the model's own input rule
    dataset = datamodule.dataset(cfg.split)
    val = datamodule.dataset("val") if cfg.tune_threshold else None
    log.info(
        "evaluating %s on %s/%s: %d images at %d px",
        source,
        cfg.data.root,
        cfg.split,
        len(dataset),
        size,
    )

    tuned = None
    if val is not None:
        tuned = choose_threshold(seg, val, cfg.data.batch_size, cfg.auroc_bins)
        log.info("threshold with the best val Dice: %.4f (Dice %.4f)", *tuned)
    results = score_split(
        seg,
        dataset,
        cfg.data.batch_size,
        (tuned[0],) if tuned else (),
        cfg.auroc_bins,
        cfg.calibration_bins,
        cfg.pixel_spacing_mm,
    )
    meta = {
        "checkpoint": sources[0] if len(sources) == 1 else sources,
        "data_root": str(cfg.data.root),
        "split": cfg.split,
        "image_size": int(size),
        "threshold": seg.threshold,
        "device": str(seg.device),
        "precision": seg.precision,
        "quality_tta": seg.scoring.tta,
        "review_below": seg.scoring.review_below,
    }
    if reviewed:
        meta["review"] = reviewed  # lungseg-review's decisions on a prediction folder (review=)
    samples = sample_predictions(seg, dataset, results["rows"], cfg.n_samples, cfg.n_worst)

    # the earlier report stays whole until now
    with output_lock(out, "output_dir"), atomic_dir(out) as staged:
        # again: another run may have written it meanwhile
        refuse_existing(out, "output_dir", bool(cfg.overwrite))
        summary = build_summary(
            results, meta, tuned, cfg.calibration_bins if cfg.calibration else None
        )
        write_report(staged, summary, results, samples, cfg, run_dir(source) / "tensorboard")
    log.info("report written to %s", out)
    summary["output_dir"] = str(out)
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Evaluate and print the headline numbers."""
    summary = evaluate(cfg)
    pooled, per_image = summary["pooled"], summary["per_image"]
    print(
        f"{summary['n_images']} images: pooled Dice {pooled['dice']:.4f}, IoU {pooled['iou']:.4f}, "
        f"AUROC {pooled['auroc']:.4f}; per-image Dice {per_image['dice_mean']:.4f} ± "
        f"{per_image['dice_sd']:.4f}, "
        f"HD95 {per_image['hd95_mean']:.2f} px, ASSD {per_image['assd_mean']:.2f} px"
    )
    clean = summary["postprocessed"]
    print(
        "post-processed (two largest components, holes filled): pooled Dice "
        f"{clean['pooled_dice']:.4f}; "
        f"per-image Dice {clean['dice_mean']:.4f} ± {clean['dice_sd']:.4f}, HD95 "
        f"{clean['hd95_mean']:.2f} px, "
        f"ASSD {clean['assd_mean']:.2f} px -> {summary['output_dir']}"
    )
    q = summary["quality"]
    rho = "undefined" if q["spearman"] is None else f"{q['spearman']:.3f}"
    bad = (
        f"{q['n_bad']} under Dice {q['bad_dice']:.2f}, {q['bad_flagged_share']:.0%} of them flagged"
        if q["n_bad"]
        else f"none under Dice {q['bad_dice']:.2f}"
    )
    print(
        f"quality score vs Dice: Spearman {rho}; at quality.review_below={q['review_below']:.4f} "
        f"{q['n_flagged']}/{q['n_images']} flagged ({q['flagged_share']:.0%}), {bad}; the highest "
        "operating point "
        "flagging at most a quarter of this split: "
        f"quality.review_below={q['suggested_review_below']:.4f} "
        f"(choose it on val)"
    )
    if summary.get("review"):
        print(describe(summary["review"]))


cli = command_line(main)

if __name__ == "__main__":
    cli()
