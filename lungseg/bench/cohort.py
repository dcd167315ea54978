"""``python -m lungseg.bench mode=cohort cohort.model=best.ckpt``: a cohort of DICOM films through
``lungseg.predict`` end to end (read, gate, segment, write the masks, DICOM SEG, predictions.csv and
run.json) against the model alone: the same backend on one batch at the model's size, the rate
``mode=backends`` reports. Both are timed in one process, in alternating rounds (load changes hit
both alike); the medians and their ratio are reported with the target the cohort should meet
(``cohort.target``, 80 % of the model-only rate).

The cohort is synthetic DX films at a film's native size: phantoms of ``lungseg.data.sample``
(drawn at 512 px, enlarged to ``cohort.film_px``) or the radiographs of ``cohort.source`` (each
at its own size), stored as 12-bit DICOM with an imager pixel spacing, so the side split measures
in mm² as it would on a hospital's films. They are written once into ``cohort.folder`` and reused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from omegaconf import DictConfig, OmegaConf

from lungseg.config import CONFIG_DIR
from lungseg.cpu import cpu_flags, cpu_name
from lungseg.data.sample import make_phantom
from lungseg.dicom.film import write_dx
from lungseg.dicom.read import read_film
from lungseg.errors import LungsegError
from lungseg.inference.backends.choice import time_backends
from lungseg.inference.inputs import find_inputs, read_input

# phantoms are drawn at this size and enlarged: drawing at 2,000 px takes seconds each
PHANTOM_PX = 512
PIXEL_SPACING_MM = 0.143  # a typical DX detector's pixel pitch
QUIET = ("lungseg.predict", "lungseg.inference")  # predict's per-run log lines, once per round


def cohort_folder(cfg: DictConfig) -> Path:
    """Where this cohort's films are kept: one folder per (films, size or source, seed)."""
    c = cfg.cohort
    base = (
        Path(c.folder).expanduser()
        if c.get("folder")
        else Path(tempfile.gettempdir()) / "lungseg-cohort"
    )
    source = (
        hashlib.sha256(str(Path(c.source).resolve()).encode()).hexdigest()[:10]
        if c.get("source")
        else ""
    )
    what = f"source-{source}" if source else f"{c.film_px}px"
    return base / f"dx-{int(c.films)}-{what}-seed{int(cfg.seed)}"


def film_pixels(cfg: DictConfig) -> list[np.ndarray]:
    """The grey levels (uint8) the films are made from: ``cohort.source``'s radiographs, else
    phantoms."""
    c = cfg.cohort
    if c.get("source"):
        files = find_inputs(c.source)
        if not files:
            raise LungsegError(
                f"cohort.source={c.source}: no radiographs there (PNG, JPEG, BMP, TIFF, DICOM)"
            )
        return [read_input(f.path) for f in files]
    rng = np.random.default_rng(int(cfg.seed))
    size = int(c.film_px)
    if size < 64:
        raise LungsegError(f"cohort.film_px={size}: a film needs at least 64 px a side")
    return [
        cv2.resize(
            make_phantom(rng, min(size, PHANTOM_PX))[0],
            (size, size),
            interpolation=cv2.INTER_LINEAR,
        )
        for _ in range(min(int(c.films), 8))
    ]  # eight distinct phantoms, cycled


def write_cohort(cfg: DictConfig) -> Path:
    """The cohort's DICOM films (``cohort.films`` of them), written unless a complete set is
    there."""
    folder = cohort_folder(cfg)
    n = int(cfg.cohort.films)
    if n < 1:
        raise LungsegError(f"cohort.films={n}: time at least one film")
    names = [folder / f"film_{i:05d}.dcm" for i in range(n)]
    if all(p.is_file() for p in names):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    pixels = film_pixels(cfg)
    for i, path in enumerate(names):
        if not path.is_file():
            gray = pixels[i % len(pixels)]
            write_dx(
                path,
                gray.astype(np.uint16) * 16,
                PatientID=f"LS{i:05d}",
                InstanceNumber=i + 1,
                ImagerPixelSpacing=[PIXEL_SPACING_MM, PIXEL_SPACING_MM],
            )
    return folder


def predict_config(cfg: DictConfig, films: Path, output: Path) -> DictConfig:
    """``conf/predict.yaml`` with the cohort's settings: its model, the films in,
    ``cohort.output_format`` out, the bench's device, batch size and threads, and any other predict
    setting of ``cohort.predict``."""
    c = cfg.cohort
    if not c.get("model"):
        raise LungsegError(
            "mode=cohort needs a model: cohort.model=best.ckpt (or an .onnx file, an OpenVINO "
            ".xml, "
            "a pretrained folder), e.g. python -m lungseg.bench mode=cohort cohort.model=best.ckpt"
        )
    base = OmegaConf.load(CONFIG_DIR / "predict.yaml")
    for key in ("defaults", "hydra"):
        base.pop(key, None)
    settings = {
        "model_path": str(c.model),
        "input": str(films),
        "output": str(output),
        "overwrite": True,
        "output_format": list(c.output_format),
        "backend": c.get("backend"),
        "precision": c.precision,
        "device": str(cfg.device),
        "batch_size": int(cfg.batch_size),
        "threads": cfg.get("threads"),
        "progress": False,
    }
    return OmegaConf.merge(base, settings, c.get("predict") or {})


def run_cohort(cfg: DictConfig) -> dict[str, Any]:
    """Time the cohort through predict and the model alone, ``cohort.rounds`` times alternating;
    medians."""
    from lungseg.predict import predict, segmenter

    films = write_cohort(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        pcfg = predict_config(cfg, films, Path(tmp) / "out")
        seg = segmenter(pcfg)
        load_before = os.getloadavg()
        rounds: list[dict[str, float]] = []
        levels = {name: logging.getLogger(name).level for name in QUIET}
        try:
            for name in QUIET:
                logging.getLogger(name).setLevel(logging.WARNING)
            for _ in range(int(cfg.cohort.rounds)):
                start = time.perf_counter()
                summary = predict(pcfg)
                command_s = time.perf_counter() - start
                # predict gave its threads back: the model alone runs on the bench's
                model_only = time_backends(
                    {"model": seg.backend},
                    seg.image_size,
                    int(cfg.batch_size),
                    rounds=int(cfg.repeats),
                )["model"]
                rounds.append(
                    {
                        "end_to_end_img_s": summary["images_per_s"],
                        "command_img_s": sum(summary["counts"].values()) / command_s,
                        "predict_model_img_s": summary["model_images_per_s"],
                        "model_only_img_s": model_only,
                        "seconds": summary["seconds"],
                        "command_s": command_s,
                    }
                )
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
        counts = summary["counts"]
        files = [p for p in (Path(tmp) / "out").rglob("*") if p.is_file()]
        written = sum(p.stat().st_size for p in files)
        kinds = Counter(p.parent.name for p in files if p.parent != Path(tmp) / "out")
        sizes = {(f.rows, f.columns) for f in map(read_film, sorted(films.glob("*.dcm")))}
    medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    share = medians["end_to_end_img_s"] / medians["model_only_img_s"]
    return {
        "mode": "cohort",
        "rounds": rounds,
        **medians,
        "share_of_model_only": share,
        "target": float(cfg.cohort.target),
        "target_met": share >= float(cfg.cohort.target),
        "counts": counts,
        "files_written": dict(sorted(kinds.items())),
        "output_mb_per_film": written / 2**20 / max(1, len(list(films.glob("*.dcm")))),
        "host": {
            "cpu": cpu_name(),
            "flags": cpu_flags(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": {
            "model": str(cfg.cohort.model),
            "films": int(cfg.cohort.films),
            "folder": str(films),
            "film_sizes": sorted(f"{h}x{w}" for h, w in sizes),
            "source": cfg.cohort.get("source"),
            "backend": str(seg.backend),
            "precision": seg.precision,
            "image_size": seg.image_size,
            "batch_size": int(cfg.batch_size),
            "threads": cfg.get("threads"),
            "predict_network_threads": summary["network_threads"],
            "output_format": list(pcfg.output_format),
            "predict": OmegaConf.to_container(cfg.cohort.predict)
            if cfg.cohort.get("predict")
            else {},
        },
    }


def cohort_report(result: dict[str, Any]) -> str:
    """The lines printed at the end of ``mode=cohort``."""
    s, h = result["settings"], result["host"]
    loads = " / ".join(
        " ".join(f"{x:.2f}" for x in h[k]) for k in ("load_average_before", "load_average_after")
    )
    verdict = "met" if result["target_met"] else "NOT met"
    return "\n".join(
        [
            f"CPU {h['cpu']}; flags: {' '.join(h['flags']) or 'none of the speed flags'}; load "
            "average before / "
            f"after: {loads}",
            f"{s['films']} DICOM films ({', '.join(s['film_sizes'])}) -> {s['model']} via "
            f"{s['backend']}; model "
            f"{s['image_size']} px, batch {s['batch_size']}, threads {s['threads'] or 'auto'} "
            f"(the network in predict: {s['predict_network_threads'] or 'auto'}), "
            "output "
            f"{'+'.join(s['output_format'])}" + (f", {s['predict']}" if s["predict"] else ""),
            f"status: {', '.join(f'{n} {k}' for k, n in result['counts'].items() if n)}; "
            f"{result['output_mb_per_film']:.2f} MiB written per film",
            "",
            f"end to end (lungseg.predict, model loaded)  {result['end_to_end_img_s']:7.2f} img/s",
            f"  the whole command, model load included    {result['command_img_s']:7.2f} img/s",
            f"  inside the model, as predict logs it       {result['predict_model_img_s']:7.2f} "
            "img/s",
            f"model only (the backend on one batch)        {result['model_only_img_s']:7.2f} img/s",
            f"end to end / model only: {result['share_of_model_only']:.0%} (target "
            f"{result['target']:.0%}: {verdict}); "
            f"medians of {len(result['rounds'])} alternating rounds",
        ]
    )
