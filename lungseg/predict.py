"""Segment radiographs: ``python -m lungseg.predict ckpt_path=best.ckpt input=/scans/ output=/masks/``."""

from __future__ import annotations

import csv
import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lungseg.checkpoint import load_module
from lungseg.config import CONFIG_DIR
from lungseg.data.datamodule import default_num_workers, limit_opencv_threads
from lungseg.data.images import preprocess, read_mask
from lungseg.data.layout import pair_files
from lungseg.errors import DataError, LungsegError, exit_on_user_error
from lungseg.inference import autocast, model_image_size, pick_device, resolve_precision
from lungseg.inputs import InputFile, find_inputs, read_input
from lungseg.metrics import dice_iou, mask_counts
from lungseg.postprocess import QualityLimits, finish_mask
from lungseg.surface import surface_distances

log = logging.getLogger(__name__)

WRITERS = 2  # threads that upsample, clean and encode outputs while the model runs (OpenCV releases the GIL)
CSV_COLUMNS = ("input", "mask", "height", "width", "lung_fraction", "area_image_left_px", "area_image_right_px",
               "large_components", "quality")
TRUTH_COLUMNS = ("truth", "dice", "iou", "hd95_px")  # with truth=: the written mask against the reference mask


class InputDataset(Dataset):
    """Inputs as model-ready tensors plus their original grayscale; an unreadable file yields its error instead."""

    def __init__(self, files: list[InputFile], image_size: int) -> None:
        self.files, self.image_size = files, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            gray = read_input(self.files[index].path)
        except DataError as err:
            return {"index": index, "error": str(err)}
        return {"index": index, "gray": gray, "image": torch.from_numpy(preprocess(gray, self.image_size))[None]}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable items into one batch; keep the errors of the others."""
    ok = [it for it in items if "error" not in it]
    return {"index": [it["index"] for it in ok], "gray": [it["gray"] for it in ok],
            "image": torch.stack([it["image"] for it in ok]) if ok else None,
            "errors": [(it["index"], it["error"]) for it in items if "error" in it]}


@torch.inference_mode()
def predict_probs(model: nn.Module, images: torch.Tensor, tta_flip: bool = False) -> torch.Tensor:
    """Probabilities (N, 1, H, W) in fp32; with ``tta_flip`` averaged with the mirrored image's prediction."""
    probs = torch.sigmoid(model(images).float())
    if tta_flip:
        probs = (probs + torch.sigmoid(model(images.flip(-1)).float()).flip(-1)) / 2
    return probs


def output_paths(output: Path, key: str, cfg: DictConfig) -> dict[str, Path]:
    """Where one input's files go: masks/<key>.png, overlays/<key>.png, probabilities/<key>.png."""
    kinds = ["masks"] + (["overlays"] if cfg.overlays else []) + (["probabilities"] if cfg.save_probabilities else [])
    return {kind: output / kind / f"{key}.png" for kind in kinds}


def overlay(gray: np.ndarray, mask: np.ndarray, max_size: int | None = None) -> np.ndarray:
    """BGR image with the lungs tinted green and outlined in yellow, its longest side at most ``max_size``."""
    scale = max_size / max(gray.shape) if max_size else 1.0
    if scale < 1:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    dim = cv2.convertScaleAbs(gray, alpha=0.65)
    tinted = cv2.merge([dim, cv2.convertScaleAbs(gray, alpha=0.65, beta=0.35 * 255), dim])  # 35 % green
    cv2.copyTo(tinted, mask, bgr)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(bgr, contours, -1, (0, 255, 255), max(1, round(max(mask.shape) / 400)))
    return bgr


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a PNG (any path, Unicode included), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    data.tofile(path)


def compare(final: np.ndarray, truth_path: Path) -> dict[str, Any]:
    """Dice, IoU and HD95 (px) of a final mask against a reference mask file at the same (native) resolution."""
    truth = read_mask(truth_path) > 0
    if truth.shape != final.shape:
        raise DataError(f"{truth_path}: reference mask is {truth.shape[1]}x{truth.shape[0]} but its radiograph is "
                        f"{final.shape[1]}x{final.shape[0]}; truth= needs masks at the inputs' resolution")
    pred = final > 0
    dice, iou = dice_iou(*mask_counts(pred, truth))
    return {"truth": str(truth_path), "dice": round(dice, 6), "iou": round(iou, 6),
            "hd95_px": round(surface_distances(pred, truth).hd95, 3)}


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


def write_outputs(gray: np.ndarray, prob: np.ndarray, paths: dict[str, Path], cfg: DictConfig,
                  truth: Path | None = None) -> dict[str, Any]:
    """Upsample the probabilities to the input's size, threshold, clean, write the files; return the CSV measures
    (and, given a reference mask ``truth``, the written mask's Dice, IoU and HD95 against it)."""
    h, w = gray.shape
    prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) if prob.shape != (h, w) else prob
    raw = (prob >= cfg.threshold).astype(np.uint8)
    final, stats = finish_mask(raw, cfg.postprocess, QualityLimits(**cfg.quality))
    write_png(paths["masks"], final * 255)
    if "overlays" in paths:
        write_png(paths["overlays"], overlay(gray, final, cfg.overlay_size))
    if "probabilities" in paths:
        write_png(paths["probabilities"], np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8))
    return {**stats, **compare(final, truth)} if truth is not None else stats


def _require(cfg: DictConfig, *names: str) -> None:
    missing = [n for n in names if cfg.get(n) in (None, "")]
    if missing:
        raise LungsegError("missing setting(s): " + ", ".join(f"{n}=" for n in missing) +
                           "; e.g. python -m lungseg.predict ckpt_path=best.ckpt input=/scans/ output=/masks/")


def _batches(loader: DataLoader, progress: bool, total: int) -> Iterator[dict[str, Any]]:
    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task("predicting", total=total)
        for batch in loader:
            yield batch
            bar.advance(task, len(batch["index"]) + len(batch["errors"]))


def plan_outputs(cfg: DictConfig, output: Path) -> tuple[list[InputFile], list[dict[str, Path]]]:
    """The inputs (none from inside ``output``) and their output paths; refuse to overwrite unless asked."""
    inside = output.resolve()
    files = [f for f in find_inputs(cfg.input, cfg.get("pattern")) if inside not in f.path.resolve().parents]
    if not files:
        raise DataError(f"input={cfg.input}: every radiograph found lies inside output={output}; choose another")
    paths = [output_paths(output, f.key, cfg) for f in files]
    existing = [p for ps in paths for p in ps.values() if p.exists()]
    existing += [output / "predictions.csv"] if (output / "predictions.csv").exists() else []
    if existing and not cfg.overwrite:
        raise LungsegError(f"output={output}: {len(existing)} output file(s) already exist (e.g. {existing[0]}); "
                           "pass overwrite=true to replace them, or choose another output=")
    return files, paths


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Segment every input, write masks/overlays/predictions.csv; return counts, failures and images/s."""
    _require(cfg, "ckpt_path", "input", "output")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    output = Path(cfg.output).expanduser()
    files, paths = plan_outputs(cfg, output)
    truths = reference_masks(cfg, files)
    device = pick_device(str(cfg.device))
    module = load_module(cfg.ckpt_path, map_location=device)
    size = model_image_size(cfg.ckpt_path, cfg.get("image_size"), getattr(module.net, "divisor", 1))
    precision = resolve_precision(device, cfg.precision)
    workers = default_num_workers() if cfg.num_workers == "auto" else int(cfg.num_workers)
    limit_opencv_threads(workers)
    loader = DataLoader(InputDataset(files, size), batch_size=int(cfg.batch_size), num_workers=workers,
                        collate_fn=collate, pin_memory=device.type == "cuda")
    log.info("%d input(s) -> %s (model %d px, batch %d, %s, precision %s, post-processing %s, flip TTA %s)",
             len(files), output, size, cfg.batch_size, device, precision, cfg.postprocess, cfg.tta_flip)

    failures: list[str] = []
    scores: list[dict[str, Any]] = []
    output.mkdir(parents=True, exist_ok=True)
    start, model_s, done = time.perf_counter(), 0.0, 0
    with (output / "predictions.csv").open("w", newline="") as csv_file, ThreadPoolExecutor(WRITERS) as writer:
        rows = csv.DictWriter(csv_file, fieldnames=CSV_COLUMNS + (TRUTH_COLUMNS if truths else ()))
        rows.writeheader()
        pending: deque[tuple[int, Future]] = deque()

        def drain(keep: int) -> None:
            nonlocal done
            while len(pending) > keep:
                i, future = pending.popleft()
                try:
                    stats = future.result()
                except DataError as err:  # a reference mask that cannot be compared (names its file)
                    failures.append(str(err))
                    continue
                except (OSError, LungsegError, cv2.error) as err:
                    failures.append(f"{files[i].path}: cannot write outputs ({err}); check output= is writable")
                    continue
                rows.writerow({"input": str(files[i].path), "mask": paths[i]["masks"].relative_to(output).as_posix(),
                               **stats})
                if "dice" in stats:
                    scores.append(stats)
                done += 1

        for batch in _batches(loader, cfg.progress, len(files)):
            failures += [msg for _, msg in batch["errors"]]
            if batch["image"] is None:
                continue
            tick = time.perf_counter()
            with autocast(device, precision):
                probs = predict_probs(module, batch["image"].to(device, non_blocking=True), cfg.tta_flip)
            probs = probs[:, 0].cpu().numpy()
            model_s += time.perf_counter() - tick
            for i, gray, prob in zip(batch["index"], batch["gray"], probs, strict=True):
                pending.append((i, writer.submit(write_outputs, gray, prob, paths[i], cfg, truths.get(files[i].path))))
            drain(keep=len(batch["index"]))  # the writer works on this batch while the model runs the next
        drain(keep=0)
    seconds = time.perf_counter() - start
    log.info("predicted %d image(s) in %.1f s: %.2f images/s end to end, %.1f images/s in the model",
             done, seconds, done / seconds, done / model_s if model_s else 0.0)
    log.info("wrote %s", output / "predictions.csv")
    summary = {"predicted": done, "failures": failures, "seconds": seconds, "images_per_s": done / seconds,
               "image_size": size, "precision": precision}
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


if __name__ == "__main__":
    main()
