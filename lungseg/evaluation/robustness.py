"""How a model holds up on other scanners and processing chains: every image of a split segmented
clean and under realistic acquisition and processing shifts at three severities each (geometry:
rotation, zoom-out, off-centre crop; intensity: gamma, contrast, brightness, blur, noise, JPEG, low
resolution; film: collimation borders, burnt-in text, inverted grey levels), the mask moved along
where the shift moves the anatomy. Per-image Dice of each against the (moved) truth gives a table
and one number: the mean Dice over all shifts as a fraction of the clean Dice. A left-right mirror
is reported apart (chest anatomy is not symmetric, so it is not a nuisance to ignore).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lungseg.data.images import read_mask
from lungseg.data.layout import find_pairs, require_root
from lungseg.errors import DataError
from lungseg.inference.inputs import read_input
from lungseg.inference.segmenter import LungSegmenter
from lungseg.markdown import table
from lungseg.metrics import mask_dice

Shift = Callable[
    [np.ndarray, np.ndarray, float, np.random.Generator], tuple[np.ndarray, np.ndarray]
]


def _warp(gray: np.ndarray, mask: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same affine move of image (linear, black fill: outside the detector) and mask
    (nearest)."""
    h, w = gray.shape
    return (
        cv2.warpAffine(gray, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0),
        cv2.warpAffine(mask, matrix, (w, h), flags=cv2.INTER_NEAREST, borderValue=0),
    )


def rotation(gray: np.ndarray, mask: np.ndarray, degrees: float, rng: np.random.Generator) -> tuple:
    h, w = gray.shape
    return _warp(
        gray, mask, cv2.getRotationMatrix2D((w / 2, h / 2), degrees * rng.choice([-1, 1]), 1.0)
    )


def zoom_out(gray: np.ndarray, mask: np.ndarray, scale: float, rng: np.random.Generator) -> tuple:
    h, w = gray.shape
    return _warp(gray, mask, cv2.getRotationMatrix2D((w / 2, h / 2), 0, scale))


def offcentre_crop(
    gray: np.ndarray, mask: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple:
    h, w = gray.shape
    dy, dx = int(h * fraction), int(w * fraction)
    top, left = int(rng.integers(0, dy + 1)), int(rng.integers(0, dx + 1))
    return gray[top : h - dy + top, left : w - dx + left], mask[
        top : h - dy + top, left : w - dx + left
    ]


def _lut(gray: np.ndarray, mask: np.ndarray, f: Callable[[np.ndarray], np.ndarray]) -> tuple:
    table = np.clip(np.round(f(np.arange(256, dtype=np.float64))), 0, 255).astype(np.uint8)
    return cv2.LUT(gray, table), mask


def gamma(gray: np.ndarray, mask: np.ndarray, value: float, rng: np.random.Generator) -> tuple:
    return _lut(gray, mask, lambda x: 255 * (x / 255) ** value)


def contrast(gray: np.ndarray, mask: np.ndarray, factor: float, rng: np.random.Generator) -> tuple:
    return _lut(gray, mask, lambda x: 128 + (x - 128) * factor)


def brightness(
    gray: np.ndarray, mask: np.ndarray, offset: float, rng: np.random.Generator
) -> tuple:
    return _lut(gray, mask, lambda x: x + offset)


def blur(
    gray: np.ndarray, mask: np.ndarray, sigma_per_256: float, rng: np.random.Generator
) -> tuple:
    sigma = sigma_per_256 * max(gray.shape) / 256
    k = 2 * int(np.ceil(3 * sigma)) + 1  # at least 3 x 3, whatever the image size
    return cv2.GaussianBlur(gray, (k, k), sigma), mask


def noise(gray: np.ndarray, mask: np.ndarray, sd: float, rng: np.random.Generator) -> tuple:
    return np.clip(gray + rng.normal(0, sd, gray.shape), 0, 255).astype(np.uint8), mask


def jpeg(gray: np.ndarray, mask: np.ndarray, quality: float, rng: np.random.Generator) -> tuple:
    _, data = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE), mask


def low_resolution(
    gray: np.ndarray, mask: np.ndarray, factor: float, rng: np.random.Generator
) -> tuple:
    h, w = gray.shape
    small = cv2.resize(
        gray, (max(2, int(w / factor)), max(2, int(h / factor))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), mask


def collimation(
    gray: np.ndarray, mask: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple:
    """Black collimator shutters over the film's edges (the anatomy under them is gone from the
    truth too)."""
    h, w = gray.shape
    out, moved = gray.copy(), mask.copy()
    for side in ("top", "bottom", "left", "right"):
        n = int((h if side in ("top", "bottom") else w) * fraction * rng.uniform(0.5, 1.0))
        region = {
            "top": np.s_[:n, :],
            "bottom": np.s_[h - n :, :],
            "left": np.s_[:, :n],
            "right": np.s_[:, w - n :],
        }
        if n:
            out[region[side]] = 0
            moved[region[side]] = 0
    return out, moved


def burnt_in_text(
    gray: np.ndarray, mask: np.ndarray, lines: float, rng: np.random.Generator
) -> tuple:
    """White annotation text (patient id, side marker, date) burnt into the pixels; the lungs are
    unchanged."""
    out = gray.copy()
    h, w = gray.shape
    scale = max(h, w) / 512
    for k in range(int(lines)):
        text = ["R", "PA ERECT", "ID 0042-1187", "2026-11-30 17:04", "PORTABLE", "L"][k % 6]
        origin = (int(rng.uniform(0.02, 0.7) * w), int(rng.uniform(0.05, 0.98) * h))
        cv2.putText(
            out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 1.2 * scale, 255, max(1, int(3 * scale))
        )
    return out, mask


def inverted(gray: np.ndarray, mask: np.ndarray, _: float, rng: np.random.Generator) -> tuple:
    """A MONOCHROME1 film read as MONOCHROME2: bone dark, air bright."""
    return 255 - gray, mask


def mirror(gray: np.ndarray, mask: np.ndarray, _: float, rng: np.random.Generator) -> tuple:
    return np.ascontiguousarray(gray[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])


# name -> (shift, its three severities, mild to strong)
SHIFTS: dict[str, tuple[Shift, tuple[float, ...]]] = {
    "rotation_deg": (rotation, (5, 10, 20)),
    "zoom_out": (zoom_out, (0.9, 0.8, 0.65)),
    "offcentre_crop": (offcentre_crop, (0.1, 0.2, 0.3)),
    "gamma": (gamma, (0.7, 1.5, 2.2)),
    "contrast": (contrast, (0.75, 0.5, 0.3)),
    "brightness": (brightness, (25, 50, 80)),
    "blur": (blur, (0.75, 1.5, 3.0)),
    "noise": (noise, (5, 12, 25)),
    "jpeg_quality": (jpeg, (50, 20, 8)),
    "low_resolution": (low_resolution, (2, 4, 8)),
    "collimation": (collimation, (0.05, 0.1, 0.2)),
    "burnt_in_text": (burnt_in_text, (2, 4, 6)),
    "inverted": (inverted, (1,)),
}
APART = {"mirror": (mirror, (1,))}  # reported separately: not a nuisance


def score_shifts(
    seg: LungSegmenter,
    pairs: list[tuple[np.ndarray, np.ndarray, str]],
    seed: int = 0,
    shifts: dict[str, tuple[Shift, tuple[float, ...]]] | None = None,
) -> list[dict[str, Any]]:
    """One row per image, shift and severity (severity 0: clean): the Dice of the model's mask
    against the truth moved along with the image. Each (image, shift, severity) draws its own seeded
    randomness."""
    shifts = {**SHIFTS, **APART} if shifts is None else shifts
    rows = []
    for i, (gray, truth, name) in enumerate(pairs):
        rows.append(
            {
                "image": name,
                "shift": "clean",
                "severity": 0,
                "level": "",
                "dice": mask_dice(seg.predict(gray), truth),
            }
        )
        for s, (shift_name, (shift, levels)) in enumerate(shifts.items()):
            for severity, level in enumerate(levels, start=1):
                moved, moved_truth = shift(
                    gray, truth, level, np.random.default_rng([seed, i, s, severity])
                )
                rows.append(
                    {
                        "image": name,
                        "shift": shift_name,
                        "severity": severity,
                        "level": level,
                        "dice": mask_dice(seg.predict(moved), moved_truth),
                    }
                )
    return rows


def summarise_shifts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean Dice per shift and severity, the clean Dice, and the robustness number: the mean Dice
    over every shift and severity (the mirror apart) as a fraction of the clean Dice."""
    table: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        table[row["shift"]][row["severity"]].append(row["dice"])
    means = {
        shift: {sev: float(np.mean(v)) for sev, v in by.items()} for shift, by in table.items()
    }
    clean = means.pop("clean")[0]
    shifted = [r["dice"] for r in rows if r["shift"] not in ("clean", *APART)]
    return {
        "clean_dice": clean,
        "mean_shifted_dice": float(np.mean(shifted)) if shifted else float("nan"),
        "robustness": float(np.mean(shifted)) / clean if shifted and clean else float("nan"),
        "per_shift": means,
        "n_images": sum(r["shift"] == "clean" for r in rows),
    }


def shift_table(summary: dict[str, Any]) -> str:
    """The table: one row per shift, mean per-image Dice at each severity."""
    rows = [
        [
            shift,
            ", ".join(str(x) for x in {**SHIFTS, **APART}.get(shift, (None, ()))[1]),
            *(f"{by[s]:.4f}" if s in by else "" for s in (1, 2, 3)),
        ]
        for shift, by in summary["per_shift"].items()
    ]
    return (
        f"Clean mean per-image Dice {summary['clean_dice']:.4f} on {summary['n_images']} images; "
        "mean over all "
        f"shifts {summary['mean_shifted_dice']:.4f}: robustness {summary['robustness']:.3f} "
        "(mirror apart).\n\n"
        + table([["shift", "levels", "severity 1", "severity 2", "severity 3"], *rows])
        + "\n"
    )


def load_split(
    root: str | Path, split: str, intensity: str = "window"
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """The split's radiographs (as predict reads them for a model with this intensity rule) and
    their masks, at the files' own resolution."""
    root = require_root(Path(root))
    pairs, problems = find_pairs(root, split)
    if problems:
        raise DataError(f"dataset at {root} has {len(problems)} problem(s):", problems)
    out = []
    for pair in pairs:
        gray, mask = read_input(pair.image, intensity), read_mask(pair.mask)
        if gray.shape != mask.shape:
            raise DataError(
                f"{pair.image}: image is {gray.shape[1]}x{gray.shape[0]} but its mask is "
                f"{mask.shape[1]}x{mask.shape[0]}"
            )
        out.append((gray, mask, pair.image.name))
    return out
