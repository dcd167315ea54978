"""Research script, not a pipeline: produced the per-stage table of docs/dicom.md ("Speed"); kept to
reproduce or extend it.

Where one DICOM film's time goes in ``lungseg.predict``, stage by stage, on one thread (torch and
OpenCV): each stage is the function predict calls, timed alone as the median of ``--repeats`` calls
after one untimed call. Stages that ``lungseg.predict`` runs beside the model in its threads are
marked; the network's share is per image at batch 8.

    python -m lungseg.bench mode=cohort cohort.model=best.ckpt cohort.films=1   # writes a film
    python scripts/research/finishing_stages.py best.ckpt \
        /tmp/lungseg-cohort/dx-1-2048px-seed0/film_00000.dcm
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lungseg.artifacts.store import file_sha256
from lungseg.data.images import preprocess, to_gray8
from lungseg.dicom.read import read_film
from lungseg.dicom.seg import write_seg
from lungseg.inference.gate import gate
from lungseg.inference.overlay import overlay
from lungseg.inference.segmenter import LungSegmenter
from lungseg.inference.sides import split_film
from lungseg.predict import write_png


def timed(call: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(median ms of ``repeats`` calls after one untimed call, the last result)."""
    result = call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[3])
    parser.add_argument("model", help="a checkpoint, ONNX file or pretrained folder")
    parser.add_argument("film", type=Path, help="a DICOM film")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--overlay-size", type=int, default=1024, help="predict's overlay_size")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    seg = LungSegmenter.load(args.model, device="cpu", threads=1)
    out = Path(tempfile.mkdtemp())
    rows: list[tuple[str, float]] = []

    def stage(name: str, call: Callable[[], Any]) -> Any:
        ms, result = timed(call, args.repeats)
        rows.append((name, ms))
        return result

    film = stage("read the header (read_film)", lambda: read_film(args.film))
    raw = stage("decode, modality and VOI LUTs (pixels)", film.pixels)
    gray = stage("window rule (to_gray8)", lambda: to_gray8(raw))
    status = stage("input gate (gate, window shared)", lambda: gate(film, raw, gray=gray))
    x = stage("resize to the model (preprocess)", lambda: preprocess(gray, seg.image_size))
    batch = np.repeat(x[None, None], 8, axis=0)
    stage("network, per image at batch 8", lambda: seg.probabilities(batch))
    rows[-1] = (rows[-1][0], rows[-1][1] / 8)
    prob = seg.probabilities(batch[:1])[0, 0]
    result = stage(
        "* upsample, threshold, clean, measure (finish)",
        lambda: seg.finish(gray, prob, status=status, source=film),
    )
    mask8 = result.mask.astype(np.uint8) * 255
    stage("* mask PNG", lambda: write_png(out / "mask.png", mask8))
    picture = stage(
        f"* overlay at {args.overlay_size} px",
        lambda: overlay(result.gray, result.mask, max_size=args.overlay_size),
    )
    stage("* overlay PNG", lambda: write_png(out / "overlay.png", picture))
    sides = stage("* patient's sides (split_film)", lambda: split_film(result.mask, film))
    stage(
        "* DICOM SEG (write_seg)",
        lambda: write_seg(
            film,
            sides.left.mask,
            sides.right.mask,
            seg.description,
            result.quality_score,
            result.needs_review,
            out / "seg.dcm",
            weights_sha256="0" * 64,
            side_source=sides.side_source,
        ),
    )
    stage("* content hash for resume (file_sha256)", lambda: file_sha256(args.film))
    width = max(len(name) for name, _ in rows)
    print(f"{args.film.name}: {film.columns} x {film.rows} px, model {seg.image_size} px, 1 thread")
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:7.1f} ms")
    print(f"{'total':<{width}}  {sum(ms for _, ms in rows):7.1f} ms (* beside the model)")


if __name__ == "__main__":
    main()
