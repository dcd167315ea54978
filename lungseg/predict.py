"""Segment radiographs: ``python -m lungseg.predict ckpt_path=best.ckpt input=/scans/
output=/masks/``: a thin layer over :class:`lungseg.LungSegmenter` that finds inputs, puts each
through the input gate, writes masks, overlays, DICOM SEG and predictions.csv (one row per film,
refused and unreadable ones too) and the run's manifest. Cohort runs (``lungseg.inference.cohort``):
``resume=true`` continues a killed run, ``shard=i/n`` splits the films for array jobs,
``merge=true`` joins the shards' results.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress

from lungseg.artifacts.store import file_sha256
from lungseg.atomic import output_lock, remove_stale_under, write_bytes, write_text
from lungseg.config import CONFIG_DIR, command_line
from lungseg.data.images import read_mask
from lungseg.data.layout import pair_files
from lungseg.errors import DataError, LungsegError, exit_on_user_error, require_extra
from lungseg.evaluation.review import REVIEW_CSV, describe, review_counts
from lungseg.evaluation.surface import surface_distances
from lungseg.inference.backends import model_sources
from lungseg.inference.cohort import (
    Journal,
    Shard,
    csv_text,
    merge_shards,
    model_sha256,
    reusable,
    status_counts,
)
from lungseg.inference.inputs import InputFile, film_size, find_inputs
from lungseg.inference.outputs import CSV_COLUMNS, OUTPUT_FORMATS, TRUTH_COLUMNS, output_paths
from lungseg.inference.overlay import overlay
from lungseg.inference.postprocess import PlausibilityLimits
from lungseg.inference.segmenter import LungSegmenter, Refused, Segmentation
from lungseg.inference.sides import split_film
from lungseg.metrics import dice_iou, mask_counts
from lungseg.settings import check_predict, writable_dir
from lungseg.version import __version__

log = logging.getLogger(__name__)
# the run finished, and the input gate refused at least one film (its row says why)
EXIT_REFUSED = 3


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a PNG atomically (any path, Unicode included; RGB images in RGB order), creating its
    folder. The output tree's stale temp files are cleaned once when the run starts, not per file.
    """
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    write_bytes(path, data.tobytes(), clean=False)


def compare(final: np.ndarray, truth_path: Path) -> dict[str, Any]:
    """Dice, IoU and HD95 (px) of a final mask against a reference mask file at the same (native)
    resolution."""
    truth = read_mask(truth_path) > 0
    if truth.shape != final.shape:
        raise DataError(
            f"{truth_path}: reference mask is {truth.shape[1]}x{truth.shape[0]} but its "
            "radiograph is "
            f"{final.shape[1]}x{final.shape[0]}; truth= needs masks at the inputs' resolution"
        )
    dice, iou = dice_iou(*mask_counts(final, truth))
    return {
        "truth": str(truth_path),
        "dice": round(dice, 6),
        "iou": round(iou, 6),
        "hd95_px": round(surface_distances(final, truth).hd95, 3),
    }


def reference_masks(cfg: DictConfig, files: list[InputFile]) -> dict[Path, Path]:
    """With ``truth=``: each input's reference mask (paired as the dataset pairs them: cxrimage_N
    with cxrmask_N, else by stem); every input must have one."""
    if not cfg.get("truth"):
        return {}
    truth = Path(cfg.truth).expanduser()
    if not truth.is_dir():
        raise DataError(
            f"truth={truth}: no such folder; pass the folder of reference masks (or "
            "leave truth unset)"
        )
    masks: dict[Path, Path] = {}
    for folder in sorted({f.path.parent for f in files}):
        pairs, _ = pair_files(folder, truth)
        masks.update({pair.image.resolve(): pair.mask for pair in pairs})
    missing = [
        f"{f.path}: no reference mask in {truth}" for f in files if f.path.resolve() not in masks
    ]
    if missing:
        raise DataError(
            f"truth={truth}: {len(missing)} input(s) have no reference mask "
            "(cxrimage_<N> pairs with cxrmask_<N>, other names by stem):",
            missing,
        )
    return {f.path: masks[f.path.resolve()] for f in files}


def output_formats(cfg: DictConfig) -> tuple[str, ...]:
    """``output_format=png``, ``seg`` or ``[png,seg]``."""
    setting = cfg.output_format
    items = list(setting) if OmegaConf.is_list(setting) else str(setting).split(",")
    formats = tuple(str(f).strip() for f in items if str(f).strip())
    if not formats or any(f not in OUTPUT_FORMATS for f in formats):
        raise LungsegError(f"output_format={setting}: use png, seg or [png,seg]")
    if "seg" in formats:
        require_extra("highdicom", "dicom", "DICOM SEG output")
    return formats


def write_outputs(
    result: Segmentation,
    paths: dict[str, Path],
    output: Path,
    cfg: DictConfig,
    seg: LungSegmenter,
    model: str,
    truth: Path | None = None,
) -> dict[str, Any]:
    """Write one film's files; return its CSV row's measures: the mask's, the patient's left and
    right lungs', the files written (relative to ``output``) and, given a reference mask ``truth``,
    the mask's Dice, IoU and HD95."""
    if "masks" in paths:
        write_png(paths["masks"], result.mask.astype(np.uint8) * 255)
    if "overlays" in paths:
        write_png(paths["overlays"], overlay(result.gray, result.mask, max_size=cfg.overlay_size))
    if "probabilities" in paths:
        write_png(
            paths["probabilities"],
            np.round(np.clip(result.probability, 0, 1) * 255).astype(np.uint8),
        )
    sides = split_film(result.mask, result.source)
    seg_file = ""
    if "seg" in paths and result.source is not None:  # a SEG references the DICOM film it segments
        from lungseg.dicom.seg import write_seg

        write_seg(
            result.source,
            sides.left.mask,
            sides.right.mask,
            seg.description,
            result.quality_score,
            result.needs_review,
            paths["seg"],
            weights_sha256=model,
            side_source=sides.side_source,
        )
        seg_file = paths["seg"].relative_to(output).as_posix()
    mask_file = paths["masks"].relative_to(output).as_posix() if "masks" in paths else ""
    row = {"mask": mask_file, **result.stats, **sides.stats(), "seg": seg_file}
    return {**row, **compare(result.mask, truth)} if truth is not None else row


def _require(cfg: DictConfig, *names: str) -> None:
    missing = [n for n in names if cfg.get(n) in (None, "")]
    if missing:
        raise LungsegError(
            "missing setting(s): "
            + ", ".join(f"{n}=" for n in missing)
            + "; e.g. python -m lungseg.predict ckpt_path=best.ckpt input=/scans/ output=/masks/"
        )


def plan_outputs(
    cfg: DictConfig,
    output: Path,
    formats: tuple[str, ...],
    shard: Shard,
    skipped: list[str] | None = None,
) -> tuple[list[InputFile], list[dict[str, Path]]]:
    """This shard's inputs (none from inside ``output``) and their output paths."""
    inside = output.resolve()
    files = [
        f
        for f in find_inputs(cfg.input, cfg.get("pattern"), skipped)
        if inside not in f.path.resolve().parents
    ]
    if not files:
        raise DataError(
            f"input={cfg.input}: every radiograph found lies inside output={output}; choose another"
        )
    files = [f for f in files if shard.holds(f.key)]
    paths = [
        output_paths(output, f.key, bool(cfg.overlays), bool(cfg.save_probabilities), formats)
        for f in files
    ]
    return files, paths


def refuse_overwrite(
    cfg: DictConfig, output: Path, paths: list[dict[str, Path]], shard: Shard
) -> None:
    """Refuse to replace earlier outputs unless ``overwrite=true`` (``resume=true`` continues them
    instead)."""
    if cfg.overwrite or cfg.resume:
        return
    existing = [p for ps in paths for p in ps.values() if p.exists()]
    existing += [output / shard.csv_name()] if (output / shard.csv_name()).exists() else []
    if existing:
        raise LungsegError(
            f"output={output}: {len(existing)} output file(s) already exist (e.g. {existing[0]}); "
            "pass resume=true to continue that run, overwrite=true to replace it, or choose "
            "another "
            "output="
        )


def segmenter(cfg: DictConfig) -> LungSegmenter:
    """The model of ``ckpt_path=`` or ``model_path=`` (a checkpoint, an ONNX file, a pretrained
    folder or a Hub id; ``[a,b,c]``: an ensemble), with the CLI's settings. ONNX models run without
    torch: torch is imported only for the others."""
    options = {
        "threshold": cfg.get("threshold"),
        "postprocess": bool(cfg.postprocess),
        "tta_flip": bool(cfg.tta_flip),
        "plausibility": PlausibilityLimits(**cfg.plausibility),
        "quality_tta": bool(cfg.quality.get("tta", False)),
        "review_below": cfg.quality.get("review_below"),
        "polarity": str(cfg.polarity),
        "gate": bool(cfg.gate),
    }
    sources = model_sources(cfg.get("model_path") or cfg.get("ckpt_path"))
    if not all(s.lower().endswith((".onnx", ".xml")) for s in sources):
        from lungseg.runtime import set_threads

        set_threads(cfg.get("threads"))
    return LungSegmenter.load(
        sources,
        str(cfg.device),
        cfg.precision,
        cfg.get("image_size"),
        cfg.get("threads"),
        backend=cfg.get("backend"),
        **options,
    )


def _torch_on_cpu(seg: LungSegmenter) -> bool:
    """Whether PyTorch runs the network on the CPU (where its threads are torch's to set)."""
    return seg.backend.name == "torch" and str(seg.device) == "cpu"


def pace_network(cfg: DictConfig, seg: LungSegmenter, files: list[InputFile]) -> int | None:
    """With ``threads`` unset, a PyTorch network on a CPU fed native-size films (the median of the
    first eight, by their headers) runs on all cores but one, leaving it to the threads that read,
    clean and write the films (``lungseg.runtime.threads_beside_finishing``); said in the log.
    Returns torch's threads before, to put back when the run ends, or None when left alone."""
    if cfg.get("threads") or not _torch_on_cpu(seg):
        return None
    import torch

    from lungseg.runtime import set_threads, threads_beside_finishing

    sizes = [size for f in files[:8] if (size := film_size(f.path))]
    if not sizes:
        return None
    pixels = int(np.median([h * w for h, w in sizes]))
    threads = threads_beside_finishing(pixels, seg.image_size**2)
    if not threads:
        return None
    before = torch.get_num_threads()
    set_threads(threads)
    log.info(
        "films of about %d px a side for a %d px model: the network runs on %d thread(s), "
        "leaving a core to reading, cleaning and writing the films (threads= sets it)",
        round(pixels**0.5),
        seg.image_size,
        threads,
    )
    return before


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Segment every input (of this shard), write its files, predictions.csv and run.json; return
    the summary (``merge=true``: join the shards' results instead)."""
    if cfg.get("merge"):
        _require(cfg, "output")
        return merge_shards(Path(cfg.output).expanduser())
    _require(cfg, "input", "output")
    if not cfg.get("ckpt_path") and not cfg.get("model_path"):
        raise LungsegError(
            "missing setting: ckpt_path= (a checkpoint) or model_path= (an ONNX file, a pretrained "
            "folder, an installed model's name or a Hub id); e.g. "
            "python -m lungseg.predict ckpt_path=best.ckpt input=/scans/ output=/masks/"
        )
    check_predict(cfg)
    formats, shard = output_formats(cfg), Shard.parse(cfg.get("shard"))
    output = Path(cfg.output).expanduser()
    failures: list[str] = []  # every input skipped, with why
    files, paths = plan_outputs(cfg, output, formats, shard, failures)
    refuse_overwrite(cfg, output, paths, shard)
    truths = reference_masks(cfg, files)
    seg = segmenter(cfg)
    threads_before = pace_network(cfg, seg, files)
    try:
        # one writer per folder (shard)
        with output_lock(output.with_name(output.name + shard.suffix), "output"):
            writable_dir(output, "output")
            # again under the lock: a run that finished meanwhile is kept
            refuse_overwrite(cfg, output, paths, shard)
            remove_stale_under(output)  # the temp files of a run that was killed
            return write_predictions(cfg, seg, output, files, paths, truths, failures, shard)
    finally:
        if threads_before:  # a caller in this process (the bench, a notebook) gets its own back
            from lungseg.runtime import set_threads

            set_threads(threads_before)


def _row(file: InputFile, status: str, reason: str, content: str = "") -> dict[str, Any]:
    """The CSV row of a film with no mask (refused by the gate, or unreadable)."""
    return {
        "input": str(file.path),
        "mask": "",
        "status": status,
        "status_reason": reason,
        "content_sha256": content,
    }


def write_predictions(
    cfg: DictConfig,
    seg: LungSegmenter,
    output: Path,
    files: list[InputFile],
    paths: list[dict[str, Path]],
    truths: dict[Path, Path],
    failures: list[str],
    shard: Shard,
) -> dict[str, Any]:
    """Segment ``files`` (those a resumed run has not done yet), write their outputs, the CSV and
    the manifest; return the run's summary."""
    started, start = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
    sources = model_sources(cfg.get("model_path") or cfg.get("ckpt_path"))
    model = model_sha256(sources)
    journal = Journal(output / shard.journal_name(), model, fresh=not cfg.resume)
    done = journal.rows() if cfg.resume else {}
    rows: list[dict[str, Any] | None] = [None] * len(files)
    for i, f in enumerate(files):
        if str(f.path) in done and reusable(done[str(f.path)], output):
            rows[i] = done[str(f.path)]["row"]
    todo = [i for i, row in enumerate(rows) if row is None]
    # None: the backend's default
    workers = None if cfg.num_workers == "auto" else int(cfg.num_workers)
    log.info(
        "%d input(s) -> %s%s (model %d px, batch %d, %s, threshold %g, post-processing %s, "
        "gate %s)",
        len(todo),
        output,
        f" (resumed: {len(files) - len(todo)} done before)" if cfg.resume else "",
        seg.image_size,
        cfg.batch_size,
        seg.backend,
        seg.threshold,
        cfg.postprocess,
        cfg.gate,
    )

    def write(j: int, result: Segmentation) -> dict[str, Any] | DataError:
        """One film's files, written beside the model's next batches: its CSV row, or why it
        failed."""
        i = todo[j]
        try:
            row = {
                "input": str(files[i].path),
                **write_outputs(
                    result, paths[i], output, cfg, seg, model, truths.get(files[i].path)
                ),
            }
        except DataError as err:  # a reference mask that cannot be compared (names its file)
            return err
        except (OSError, LungsegError, cv2.error, ValueError) as err:
            return DataError(
                f"{files[i].path}: cannot write outputs ({err}); check output= is writable"
            )
        row["content_sha256"] = file_sha256(files[i].path)  # just read: from the page cache
        journal.record(row)
        return row

    timing, segmented = {"model_s": 0.0}, 0
    try:
        results = seg.predict_many(
            [files[i].path for i in todo],
            int(cfg.batch_size),
            workers,
            skip_errors=True,
            timing=timing,
            sink=write,
        )
        with Progress(disable=not cfg.progress, transient=False) as bar:
            task = bar.add_task("predicting", total=len(todo))
            for j, item in enumerate(results):
                i = todo[j]
                bar.advance(task)
                if isinstance(item, Refused):
                    log.warning("%s", item)
                    rows[i] = _row(
                        files[i], "refused", item.status.reason, file_sha256(files[i].path)
                    )
                    journal.record(rows[i])
                elif isinstance(item, DataError):
                    failures.append(str(item))
                    log.warning("%s", str(item).splitlines()[0])
                    rows[i] = _row(files[i], "error", str(item).splitlines()[0])
                else:
                    rows[i] = item
                    segmented += 1
    finally:
        journal.close()
    written = [r for r in rows if r is not None]
    write_text(
        output / shard.csv_name(),
        csv_text(written, CSV_COLUMNS + (TRUTH_COLUMNS if truths else ())),
    )
    return summarise_run(
        cfg,
        seg,
        output,
        shard,
        written,
        failures,
        sources,
        model,
        started,
        time.perf_counter() - start,
        len(todo),
        segmented / timing["model_s"] if segmented else 0.0,
    )


def network_threads(cfg: DictConfig, seg: LungSegmenter) -> int | None:
    """The threads the network ran on: torch's on a CPU, else the ``threads`` setting."""
    if _torch_on_cpu(seg):
        import torch

        return torch.get_num_threads()
    return cfg.get("threads")


def summarise_run(
    cfg: DictConfig,
    seg: LungSegmenter,
    output: Path,
    shard: Shard,
    rows: list[dict[str, Any]],
    failures: list[str],
    sources: list[str],
    model: str,
    started: str,
    seconds: float,
    run: int,
    model_rate: float,
) -> dict[str, Any]:
    """Log the run's figures (``run`` films this run, through the model at ``model_rate`` images/s),
    write its manifest (run.json) and return its summary."""
    counts = status_counts(rows)
    segmented = counts["ok"] + counts["flagged"]
    rate = run / seconds if seconds else 0.0
    review = sum(str(r.get("needs_review")) == "True" for r in rows)
    log.info(
        "%d film(s) in %.1f s: %.2f images/s end to end, %.2f images/s in the model; %s",
        run,
        seconds,
        rate,
        model_rate,
        ", ".join(f"{n} {s}" for s, n in counts.items() if n),
    )
    log.info(
        "%d of %d mask(s) need review (quality_score below %.4f); wrote %s",
        review,
        segmented,
        seg.scoring.review_below,
        output / shard.csv_name(),
    )
    summary = {
        "predicted": segmented,
        "needs_review": review,
        "failures": failures,
        "refused": counts["refused"],
        "counts": counts,
        "seconds": seconds,
        "images_per_s": rate,
        "model_images_per_s": model_rate,
        "image_size": seg.image_size,
        "precision": seg.precision,
        "threshold": seg.threshold,
        "network_threads": network_threads(cfg, seg),
    }
    scores = [r for r in rows if r.get("dice") not in (None, "")]
    if scores:
        dice = np.array([float(r["dice"]) for r in scores])
        summary.update(
            truth_images=len(scores),
            dice_mean=float(dice.mean()),
            dice_sd=float(dice.std(ddof=1)) if len(dice) > 1 else 0.0,
            iou_mean=float(np.mean([float(r["iou"]) for r in scores])),
            hd95_px_mean=float(np.mean([float(r["hd95_px"]) for r in scores])),
        )
        log.info(
            "against truth=%s at native resolution (%d images): Dice %.4f ± %.4f, IoU %.4f, HD95 "
            "%.1f px",
            cfg.truth,
            len(scores),
            summary["dice_mean"],
            summary["dice_sd"],
            summary["iou_mean"],
            summary["hd95_px_mean"],
        )
    if (output / REVIEW_CSV).is_file():  # a reviewed folder predicted again: what was decided
        try:
            summary["review"] = review_counts(output)
            log.info(describe(summary["review"]))
        except LungsegError as err:
            log.warning("%s not counted: %s", REVIEW_CSV, err)
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("hydra", None)
    manifest = {
        "lungseg_version": __version__,
        "host": socket.gethostname(),
        "started": started,
        "shard": f"{shard.index}/{shard.count}" if shard.count > 1 else None,
        "model": {"sources": sources, "sha256": model, "description": seg.metadata},
        "device": str(seg.device),
        "precision": seg.precision,
        "backend": str(seg.backend),
        "network_threads": summary["network_threads"],
        "settings": settings,
        "counts": counts,
        "films": len(rows),
        "run_now": run,
        "timings": {
            "seconds": round(seconds, 3),
            "images_per_s": round(rate, 3),
            "model_images_per_s": round(model_rate, 3),
        },
    }
    write_text(output / shard.run_name(), json.dumps(manifest, indent=2, default=str) + "\n")
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point: predict, then fail (exit 2) listing every input that could not be read, or
    exit 3 when the input gate refused a film (its row in predictions.csv says why)."""
    summary = predict(cfg)
    if cfg.get("merge"):
        print(
            f"merged {len(summary['shards'])} shards: {summary['films']} films "
            f"({', '.join(f'{n} {s}' for s, n in summary['counts'].items() if n)}) -> {cfg.output}"
        )
        return
    if summary["failures"]:
        raise DataError(
            f"{len(summary['failures'])} input(s) failed and were skipped "
            f"({summary['predicted']} others were segmented):",
            summary["failures"],
        )
    if summary["refused"]:
        print(
            f"error: {summary['refused']} film(s) refused by the input gate; predictions.csv says "
            "why "
            "(status, status_reason)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_REFUSED)


cli = command_line(main)

if __name__ == "__main__":
    cli()
