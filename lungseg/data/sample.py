"""Built-in sample data: deterministic synthetic chest-radiograph phantoms with exact lung masks.

The project cannot ship real X-rays, so ``write_sample_dataset`` draws a small set in the Kaggle
layout (``<root>/ChestXray/{train,val,test}/{image,mask}/``): a soft-tissue torso, two dark lung
fields with organic outlines (the left one smaller, with a cardiac notch), ribs and clavicles, a
bright mediastinum, heart and diaphragm, low-frequency shading, noise and per-image contrast. Masks
are the two lung fields as drawn, saved as JPEG like the real dataset. Run ``python -m
lungseg.data.sample [root]``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from lungseg.atomic import atomic_dir, output_lock, write_bytes
from lungseg.data.layout import DATASET_DIR, IMAGE_DIR, MASK_DIR, SPLITS, image_name, mask_name

log = logging.getLogger(__name__)

JPEG_QUALITY = 90
LUNG_FRACTION = (0.17, 0.42)  # phantoms whose lungs cover a fraction outside this are redrawn


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float32 image (sigma in pixels)."""
    return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def smooth_field(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    """Low-frequency random field in [-1, 1]: a coarse grid of noise resized smoothly."""
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


def lung_outline(
    rng: np.random.Generator, cx: float, top: float, width: float, height: float, lateral: int
) -> np.ndarray:
    """Polygon of one lung field: a Fourier-deformed ellipse, narrow at the apex, dome-shaped
    base."""
    theta = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    k = np.arange(2, 6)[:, None]
    amp = rng.uniform(-0.07, 0.07, (4, 1)) / k
    r = 1 + (amp * np.cos(k * theta + rng.uniform(0, 2 * np.pi, (4, 1)))).sum(0)
    x, y = r * np.cos(theta), r * np.sin(theta)  # x > 0 is lateral, y > 0 is down
    x = x * (0.45 + 0.55 * np.sqrt(np.clip((y + 1) / 2, 0, 1)))  # narrow apex, wide base
    dome = rng.uniform(0.1, 0.25)
    y = np.minimum(y, 0.8 + 0.25 * x - dome * (1 - x**2))  # diaphragm dome, deep costophrenic angle
    points = np.stack([cx + lateral * x * width / 2, top + (y + 1) / 2 * height], axis=1)
    return np.round(points).astype(np.int32)


def draw_lungs(rng: np.random.Generator, s: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Mask (0/1) of both lungs with the cardiac notch, and the heart centre and radius it used."""
    gap, width = rng.uniform(0.03, 0.06) * s, rng.uniform(0.3, 0.37) * s
    top, height = rng.uniform(0.07, 0.15) * s, rng.uniform(0.55, 0.72) * s
    mid = s / 2 + rng.normal(0, 0.015) * s
    mask = np.zeros((s, s), np.uint8)
    # patient's right, image left
    right = lung_outline(rng, mid - gap - width / 2, top, width, height, -1)
    left = lung_outline(
        rng, mid + gap + 0.45 * width, top + 0.02 * s, 0.9 * width, 0.95 * height, 1
    )
    cv2.fillPoly(mask, [right, left], 1)
    hx, hy = mid + rng.uniform(0.04, 0.08) * s, top + height * rng.uniform(0.72, 0.8)
    hr = rng.uniform(0.13, 0.17) * s
    axes = (int(hr * 1.15), int(hr * 0.85))
    cv2.ellipse(mask, (int(hx), int(hy)), axes, rng.uniform(-35, -15), 0, 360, 0, -1)
    return mask, (hx, hy, hr)


def draw_torso(rng: np.random.Generator, s: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Soft-edged body outline (0..1): a superellipse with shoulders narrowing into the neck."""
    half = rng.uniform(0.4, 0.46) * s * (0.45 + 0.55 / (1 + np.exp(-(yy - 0.07 * s) / (0.03 * s))))
    dx, dy = (xx - s / 2 - rng.normal(0, 0.01) * s) / half, (yy - 0.65 * s) / (0.8 * s)
    dist = np.abs(dx) ** 2.5 + np.abs(dy) ** 2.5
    return _blur((dist <= 1).astype(np.float32), 0.02 * s)


def draw_ribs(rng: np.random.Generator, s: int) -> np.ndarray:
    """Rib-like curved bright stripes (posterior ribs arching down laterally, faint anterior
    ones)."""
    ribs = np.zeros((s, s), np.float32)
    u = np.linspace(0, 1, 40)
    n = rng.integers(9, 12)
    for i, y0 in enumerate(np.linspace(0.02, 0.56, n) * s + rng.normal(0, 0.008 * s, n)):
        thick = max(2, int(rng.uniform(0.018, 0.026) * s))
        for side in (-1, 1):
            steep = (0.22 + 0.1 * i / n) * s
            xs = s / 2 + side * (0.03 * s + u * 0.44 * s)
            posterior = np.stack([xs, y0 - 0.03 * s * u + steep * (0.4 * u + 0.6 * u**2)], 1)
            anterior = np.stack([xs[10:], y0 + 0.12 * s + 0.14 * s * (1 - u[10:]) ** 2], 1)
            for pts, val in ((posterior, 1.0), (anterior, 0.35)):
                pts = np.round(pts).astype(np.int32)[None]
                cv2.polylines(ribs, pts, False, val, thick, cv2.LINE_AA)
                cv2.polylines(ribs, pts, False, 0.6 * val, max(1, thick - 3), cv2.LINE_AA)
    for side in (-1, 1):  # clavicles
        xs = s / 2 + side * (0.05 * s + u * 0.3 * s)
        pts = np.stack([xs, (0.1 + rng.uniform(-0.02, 0.02)) * s - 0.05 * s * np.sin(np.pi * u)], 1)
        cv2.polylines(
            ribs, np.round(pts).astype(np.int32)[None], False, 1.0, int(0.03 * s), cv2.LINE_AA
        )
    return _blur(ribs, 0.006 * s)


def draw_vessels(rng: np.random.Generator, s: int, lungs: np.ndarray) -> np.ndarray:
    """Faint branching vessel markings and hilar shadows fanning out from each lung's medial
    side."""
    out = np.zeros((s, s), np.float32)
    for side, half in ((-1, lungs[:, : s // 2]), (1, lungs[:, s // 2 :])):
        ys, xs = np.nonzero(half)
        hx = xs.mean() + (0 if side < 0 else s // 2) - side * 0.06 * s
        hy = ys.mean() - 0.03 * s
        cv2.circle(out, (int(hx), int(hy)), int(0.04 * s), 0.8, -1, cv2.LINE_AA)
        for _ in range(rng.integers(10, 16)):
            heading = rng.uniform(-0.5, 0.5) * np.pi + (np.pi if side < 0 else 0)
            turns = heading + rng.normal(0, 0.3, 10).cumsum()
            step = rng.uniform(0.015, 0.03) * s
            pts = np.stack(
                [hx + step * np.cos(turns).cumsum(), hy + step * np.sin(turns).cumsum()], 1
            )
            pts = np.round(pts).astype(np.int32)[None]
            cv2.polylines(out, pts[:, :4], False, 1.0, max(2, s // 128), cv2.LINE_AA)
            cv2.polylines(out, pts, False, 1.0, 1, cv2.LINE_AA)
    return _blur(out, 0.005 * s + 0.3)


def draw_mediastinum(
    rng: np.random.Generator, s: int, heart: tuple[float, float, float]
) -> np.ndarray:
    """Bright central column (spine with discs, dark trachea), the heart and the diaphragm below."""
    hx, hy, hr = heart
    y, x = np.arange(s, dtype=np.float32)[:, None], np.arange(s, dtype=np.float32)[None, :]
    band = np.exp(-(((x - s / 2) / (0.07 * s)) ** 4))
    spine = np.exp(-(((x - s / 2) / (0.035 * s)) ** 4)) * (
        0.8 + 0.2 * np.cos(y * 2 * np.pi / (0.055 * s))
    )
    trachea = np.exp(-(((x - s / 2) / (0.018 * s)) ** 2)) * (y < 0.3 * s)
    heart_blob = np.exp(-((((x - hx) / (1.1 * hr)) ** 2 + ((y - hy) / (0.9 * hr)) ** 2) ** 2))
    abdomen = 1 / (1 + np.exp(-(y - hy - rng.uniform(0.02, 0.06) * s) / (0.02 * s)))
    return 0.14 * band + 0.1 * spine - 0.12 * trachea + 0.16 * heart_blob + 0.14 * abdomen


def make_phantom(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic radiograph (uint8 HxW) and its lung mask (uint8 HxW, 0 or 255)."""
    s = size
    while True:
        lungs, heart = draw_lungs(rng, s)
        if LUNG_FRACTION[0] <= lungs.mean() <= LUNG_FRACTION[1]:
            break
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    torso = draw_torso(rng, s, yy, xx)
    soft_lungs = _blur(lungs.astype(np.float32), 0.008 * s)
    texture = _blur(rng.normal(0, 1, (s, s)).astype(np.float32), 0.01 * s)
    img = 0.05 + torso * (rng.uniform(0.5, 0.62) + draw_mediastinum(rng, s, heart))
    # less air towards the bases
    air = 1.05 - 0.3 * yy / s + 0.1 * smooth_field(rng, s) + 0.08 * texture
    img -= soft_lungs * rng.uniform(0.3, 0.4) * air
    # ribs fade below the diaphragm
    thorax = 1 / (1 + np.exp((yy - heart[1] - 0.1 * s) / (0.03 * s)))
    img += torso * thorax * (0.5 + 0.5 * soft_lungs) * rng.uniform(0.14, 0.22) * draw_ribs(rng, s)
    img += soft_lungs * rng.uniform(0.1, 0.16) * draw_vessels(rng, s, lungs)
    img *= 1 + 0.12 * smooth_field(rng, s, 3)
    img = np.clip(_blur(img.astype(np.float32), 0.003 * s + 0.3), 0, 1) ** rng.uniform(0.7, 1.4)
    img = rng.uniform(0.8, 1.15) * img + rng.uniform(-0.05, 0.08)  # exposure and contrast
    img += rng.normal(0, rng.uniform(0.015, 0.04), img.shape)
    image = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return image, lungs * np.uint8(255)


def write_phantoms(folder: Path, numbers: Iterable[int], size: int = 256, seed: int = 0) -> int:
    """Draw and write the phantoms numbered ``numbers`` into ``folder/{image,mask}``, skipping those
    already there; each file appears under its name only when complete, so an interrupted run can be
    continued. Returns how many were drawn."""
    (folder / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (folder / MASK_DIR).mkdir(exist_ok=True)
    drawn = 0
    for n in numbers:
        files = (folder / IMAGE_DIR / image_name(n), folder / MASK_DIR / mask_name(n))
        if all(f.exists() for f in files):
            continue
        image, mask = make_phantom(np.random.default_rng([seed, n]), size)
        for path, pixels, params in zip(
            files, (image, mask), ([], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]), strict=True
        ):
            ok, data = cv2.imencode(path.suffix, pixels, params)
            if not ok:
                raise OSError(f"could not encode phantom {n} for {folder}")
            write_bytes(path, data.tobytes(), durable=False, clean=False)  # drawn again if lost
        drawn += 1
    return drawn


def write_sample_dataset(
    root: str | Path,
    n_train: int = 240,
    n_val: int = 40,
    n_test: int = 40,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Write the synthetic set in the Kaggle layout under ``root`` atomically (no-op if present)."""
    root = Path(root)
    target = root / DATASET_DIR
    if target.exists():
        return root
    # two demos started at once: one writes, the other is told to wait
    with output_lock(target, "data.root"):
        if target.exists():  # written while this process waited for its turn
            return root
        with atomic_dir(target) as staged:
            start = 0
            for split, count in zip(SPLITS, (n_train, n_val, n_test), strict=True):
                write_phantoms(staged / split, range(start, start + count), size, seed)
                start += count
    return root


def ensure_sample_dataset(root: str | Path, **kwargs: int) -> Path:
    """Write the synthetic set under ``root`` if it is not there yet; return ``root``."""
    root = Path(root)
    if not (root / DATASET_DIR).exists():
        write_sample_dataset(root, **kwargs)
        log.info("wrote the synthetic sample dataset to %s", root / DATASET_DIR)
    return root


def main(argv: list[str] | None = None) -> None:
    """Command line: write the sample dataset (default ``data/sample``) and print where."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "root", nargs="?", default="data/sample", help="where to write (default data/sample)"
    )
    root = write_sample_dataset(parser.parse_args(argv).root)
    print(f"sample dataset at {root / DATASET_DIR}")


if __name__ == "__main__":
    main()
