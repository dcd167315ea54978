"""Segment radiographs: ``python -m lungseg.predict ckpt_path=best.ckpt input=/scans/ output=/masks/``: a thin
layer over :class:`lungseg.LungSegmenter` that finds inputs, writes masks, overlays and predictions.csv."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig
from rich.progress import Progress

from lungseg.atomic import atomic_open, output_lock, remove_stale_under, write_bytes
from lungseg.config import CONFIG_DIR, command_line
from lungseg.data.images import read_mask
from lungseg.data.layout import pair_files
from lungseg.errors import DataError, LungsegError, exit_on_user_error
from lungseg.evaluation.review import REVIEW_CSV, describe, review_counts
from lungseg.evaluation.surface import surface_distances
from lungseg.inference.backends import model_sources
from lungseg.inference.inputs import InputFile, find_inputs
from lungseg.inference.outputs import CSV_COLUMNS, PREDICTIONS, TRUTH_COLUMNS, output_paths
from lungseg.inference.overlay import overlay
from lungseg.inference.postprocess import PlausibilityLimits
from lungseg.inference.segmenter import LungSegmenter, Segmentation
from lungseg.metrics import dice_iou, mask_counts
from lungseg.settings import check_predict, writable_dir

log = logging.getLogger(__name__)

def write_png(path: Path, image: np.ndarray) -> None:
    """Write a PNG atomically (any path, Unicode included; RGB images in RGB order), creating its folder. The
    output tree's stale temp files are cleaned once when the run starts, not per file."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    write_bytes(path, data.tobytes(), clean=False)


def compare(final: np.ndarray, truth_path: Path) -> dict[str, Any]:
    """Dice, IoU and HD95 (px) of a final mask against a reference mask file at the same (native) resolution."""
    truth = read_mask(truth_path) > 0
    if truth.shape != final.shape:
        raise DataError(f"{truth_path}: reference mask is {truth.shape[1]}x{truth.shape[0]} but its radiograph is "
                        f"{final.shape[1]}x{final.shape[0]}; truth= needs masks at the inputs' resolution")
    dice, iou = dice_iou(*mask_counts(final, truth))
    return {"truth": str(truth_path), "dice": round(dice, 6), "iou": round(iou, 6),
            "hd95_px": round(surface_distances(final, truth).hd95, 3)}


def reference_masks(cfg: DictConfig, files: list[InputFile]) -> dict[Path, Path]:
    """With ``truth=``: each input's reference mask (paired as the dataset pairs them: cxrimage_N with cxrmask_N,
    else by stem); every input must have one."""
    if not cfg.get("truth"):
        return {}
    truth = Path(cfg.truth).expanduser()
    if not truth.is_dir():
        raise DataError(f"truth={truth}: no such folder; pass the folder of reference masks (or leave truth unset)")
    masks: dict[Path, Path] = {}
    for folder in sorted({f.path.parent for f in files}):
        pairs, _ = pair_files(folder, truth)
        masks.update({pair.image.resolve(): pair.mask for pair in pairs})
    missing = [f"{f.path}: no reference mask in {truth}" for f in files if f.path.resolve() not in masks]
    if missing:
        raise DataError(f"truth={truth}: {len(missing)} input(s) have no reference mask "
                        "(cxrimage_<N> pairs with cxrmask_<N>, other names by stem):", missing)
    return {f.path: masks[f.path.resolve()] for f in files}


def write_outputs(result: Segmentation, paths: dict[str, Path], cfg: DictConfig,
                  truth: Path | None = None) -> dict[str, Any]:
    """Write one input's files; return its CSV measures (and, given a reference mask ``truth``, the written mask's
    Dice, IoU and HD95 against it)."""
    write_png(paths["masks"], result.mask.astype(np.uint8) * 255)
    if "overlays" in paths:
        write_png(paths["overlays"], overlay(result.gray, result.mask, max_size=cfg.overlay_size))
    if "probabilities" in paths:
        write_png(paths["probabilities"], np.round(np.clip(result.probability, 0, 1) * 255).astype(np.uint8))
    return {**result.stats, **compare(result.mask, truth)} if truth is not None else result.stats


def _require(cfg: DictConfig, *names: str) -> None:
    missing = [n for n in names if cfg.get(n) in (None, "")]
    if missing:
        raise LungsegError("missing setting(s): " + ", ".join(f"{n}=" for n in missing) +
                           "; e.g. python -m lungseg.predict ckpt_path=best.ckpt input=/scans/ output=/masks/")


def plan_outputs(cfg: DictConfig, output: Path,
                 skipped: list[str] | None = None) -> tuple[list[InputFile], list[dict[str, Path]]]:
    """The inputs (none from inside ``output``) and their output paths; refuse to overwrite unless asked."""
    inside = output.resolve()
    files = [f for f in find_inputs(cfg.input, cfg.get("pattern"), skipped) if inside not in f.path.resolve().parents]
    if not files:
        raise DataError(f"input={cfg.input}: every radiograph found lies inside output={output}; choose another")
    paths = [output_paths(output, f.key, bool(cfg.overlays), bool(cfg.save_probabilities)) for f in files]
    refuse_overwrite(cfg, output, paths)
    return files, paths


def refuse_overwrite(cfg: DictConfig, output: Path, paths: list[dict[str, Path]]) -> None:
    """Refuse to replace earlier outputs unless ``overwrite=true``."""
    if cfg.overwrite:
        return
    existing = [p for ps in paths for p in ps.values() if p.exists()]
    existing += [output / PREDICTIONS] if (output / PREDICTIONS).exists() else []
    if existing:
        raise LungsegError(f"output={output}: {len(existing)} output file(s) already exist (e.g. {existing[0]}); "
                           "pass overwrite=true to replace them, or choose another output=")


def segmenter(cfg: DictConfig) -> LungSegmenter:
    """The model of ``ckpt_path=`` or ``model_path=`` (a checkpoint, an ONNX file, a pretrained folder or a Hub
    id; ``[a,b,c]``: an ensemble), with the CLI's settings. ONNX models run without torch: torch is imported only
    for the others."""
    options = {"threshold": cfg.get("threshold"), "postprocess": bool(cfg.postprocess),
               "tta_flip": bool(cfg.tta_flip), "plausibility": PlausibilityLimits(**cfg.plausibility),
               "quality_tta": bool(cfg.quality.get("tta", False)), "review_below": cfg.quality.get("review_below"),
               "polarity": str(cfg.polarity)}
    sources = model_sources(cfg.get("model_path") or cfg.get("ckpt_path"))
    if not all(s.lower().endswith(".onnx") for s in sources):
        from lungseg.runtime import set_threads

        set_threads(cfg.get("threads"))
    return LungSegmenter.load(sources, str(cfg.device), cfg.precision, cfg.get("image_size"), cfg.get("threads"),
                              **options)



def predict(cfg: DictConfig) -> dict[str, Any]:
    """Segment every input, write masks/overlays/predictions.csv; return counts, failures and images/s."""
    _require(cfg, "input", "output")
    if not cfg.get("ckpt_path") and not cfg.get("model_path"):
        raise LungsegError("missing setting: ckpt_path= (a checkpoint) or model_path= (an ONNX file, a pretrained "
                           "folder or a Hub id); e.g. "
                           "python -m lungseg.predict ckpt_path=best.ckpt input=/scans/ output=/masks/")
    check_predict(cfg)
    output = Path(cfg.output).expanduser()
    failures: list[str] = []  # every input skipped, with why
    files, paths = plan_outputs(cfg, output, failures)
    truths = reference_masks(cfg, files)
    seg = segmenter(cfg)
    with output_lock(output, "output"):  # one writer per output folder, from the first file written
        writable_dir(output, "output")
        refuse_overwrite(cfg, output, paths)  # again under the lock: a run that finished meanwhile is kept
        remove_stale_under(output)  # the temp files of a run that was killed
        return write_predictions(cfg, seg, output, files, paths, truths, failures)


def write_predictions(cfg: DictConfig, seg: LungSegmenter, output: Path, files: list[InputFile],
                      paths: list[dict[str, Path]], truths: dict[Path, Path], failures: list[str]) -> dict[str, Any]:
    """Segment ``files`` and write their outputs and predictions.csv; return the run's summary."""
    workers = None if cfg.num_workers == "auto" else int(cfg.num_workers)  # None: the backend's default
    log.info("%d input(s) -> %s (model %d px, batch %d, %s, threshold %g, post-processing %s, flip TTA %s)",
             len(files), output, seg.image_size, cfg.batch_size, seg.backend, seg.threshold, cfg.postprocess,
             cfg.tta_flip)

    scores: list[dict[str, Any]] = []
    start, done, review, timing = time.perf_counter(), 0, 0, {"model_s": 0.0}

    def write(i: int, result: Segmentation) -> dict[str, Any] | DataError:
        """One input's files, written beside the model's next batches: its CSV measures, or why it failed."""
        try:
            return write_outputs(result, paths[i], cfg, truths.get(files[i].path))
        except DataError as err:  # a reference mask that cannot be compared (names its file)
            return err
        except (OSError, LungsegError, cv2.error) as err:
            return DataError(f"{files[i].path}: cannot write outputs ({err}); check output= is writable")

    results = seg.predict_many([f.path for f in files], int(cfg.batch_size), workers, skip_errors=True,
                               timing=timing, sink=write)
    with atomic_open(output / PREDICTIONS, "w", newline="") as csv_file, \
            Progress(disable=not cfg.progress, transient=False) as bar:
        task = bar.add_task("predicting", total=len(files))
        rows = csv.DictWriter(csv_file, fieldnames=CSV_COLUMNS + (TRUTH_COLUMNS if truths else ()))
        rows.writeheader()
        for i, stats in enumerate(results):
            bar.advance(task)
            if isinstance(stats, DataError):
                failures.append(str(stats))
                continue
            rows.writerow({"input": str(files[i].path), "mask": paths[i]["masks"].relative_to(output).as_posix(),
                           **stats})
            if "dice" in stats:
                scores.append(stats)
            done += 1
            review += bool(stats["needs_review"])
    seconds = time.perf_counter() - start
    model_rate = done / timing["model_s"] if timing["model_s"] else 0.0
    log.info("predicted %d image(s) in %.1f s: %.2f images/s end to end, %.2f images/s in the model (%.0f %%)",
             done, seconds, done / seconds, model_rate, 100 * done / seconds / model_rate if model_rate else 0)
    log.info("%d of %d mask(s) need review (quality_score below %.4f); wrote %s", review, done,
             seg.scoring.review_below, output / PREDICTIONS)
    summary = {"predicted": done, "needs_review": review, "failures": failures, "seconds": seconds,
               "images_per_s": done / seconds, "model_images_per_s": model_rate,
               "image_size": seg.image_size, "precision": seg.precision, "threshold": seg.threshold}
    if (output / REVIEW_CSV).is_file():  # a reviewed folder predicted again: what was decided
        try:
            summary["review"] = review_counts(output)
            log.info(describe(summary["review"]))
        except LungsegError as err:
            log.warning("%s not counted: %s", REVIEW_CSV, err)
    if scores:
        dice = np.array([r["dice"] for r in scores])
        summary.update(truth_images=len(scores), dice_mean=float(dice.mean()),
                       dice_sd=float(dice.std(ddof=1)) if len(dice) > 1 else 0.0,
                       iou_mean=float(np.mean([r["iou"] for r in scores])),
                       hd95_px_mean=float(np.mean([r["hd95_px"] for r in scores])))
        log.info("against truth=%s at native resolution (%d images): Dice %.4f ± %.4f, IoU %.4f, HD95 %.1f px",
                 cfg.truth, len(scores), summary["dice_mean"], summary["dice_sd"], summary["iou_mean"],
                 summary["hd95_px_mean"])
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point: predict, then fail (exit 2) listing every input that could not be segmented."""
    summary = predict(cfg)
    if summary["failures"]:
        raise DataError(f"{len(summary['failures'])} input(s) failed and were skipped "
                        f"({summary['predicted']} others were segmented):", summary["failures"])


cli = command_line(main)

if __name__ == "__main__":
    cli()
