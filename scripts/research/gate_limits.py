"""Research script, not a pipeline: produced the input gate's image limits (docs/dicom.md) at commit
ece7bdb; kept to reproduce or extend them.

Chooses the input gate's image limits (``lungseg.inference.gate.ImageLimits``) on the cxr-v7 train
and val films and tests them on held-out images: the test films, the test films under every
robustness shift (``lungseg.evaluation.robustness.SHIFTS``) and synthetic non-radiographs.

    PYTHONPATH=. python scripts/research/gate_limits.py [DATA_ROOT=/work/shared/data/cxr-v7]

Produced: the defaults of ``ImageLimits`` in lungseg/inference/gate.py and the tables of
docs/dicom.md ("The input gate"). The rule: each limit is the most extreme train/val value moved out
by ``MARGIN`` (the value itself for ``detail``, the odds p / (1 - p) for the shares), so every
training and validation film passes with room.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from lungseg.evaluation.robustness import SHIFTS
from lungseg.inference.gate import ImageLimits, check_image, image_features

MARGIN = 2.0
SHARES = ("flat", "dark_edge")


def films(root: Path, split: str) -> list[np.ndarray]:
    return [
        cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        for p in sorted((root / "ChestXray" / split / "image").iterdir())
    ]


def widen_share(p: float) -> float:
    odds = MARGIN * p / (1 - p)
    return odds / (1 + odds)


def choose(features: list[dict[str, float]]) -> dict[str, float]:
    """The limits from the train/val films' features by the margin rule."""
    values = {k: np.array([f[k] for f in features]) for k in features[0]}
    return {
        "min_detail": float(values["detail"].min() / MARGIN),
        "max_detail": float(values["detail"].max() * MARGIN),
        "max_flat": widen_share(float(values["flat"].max())),
        "max_dark_edge": widen_share(float(values["dark_edge"].max())),
    }


def ct_slice(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An axial chest CT slice in a soft-tissue window: body ellipse on black, two dark lungs,
    spine, table."""
    ct = np.zeros((h, w), np.uint8)
    cx, cy = w // 2 + int(rng.integers(-w // 20, w // 20)), h // 2
    ax, ay = int(w * rng.uniform(0.36, 0.44)), int(h * rng.uniform(0.26, 0.34))
    cv2.ellipse(ct, (cx, cy), (ax, ay), 0, 0, 360, 170, -1)
    cv2.ellipse(ct, (cx, cy), (ax - w // 50, ay - h // 50), 0, 0, 360, 110, -1)
    for s in (-1, 1):
        centre, axes = (cx + s * int(ax * 0.45), cy - ay // 10), (int(ax * 0.35), int(ay * 0.65))
        cv2.ellipse(ct, centre, axes, 0, 0, 360, 25, -1)
    cv2.circle(ct, (cx, cy + int(ay * 0.7)), w // 20, 240, -1)
    cv2.rectangle(ct, (w // 6, cy + ay + h // 30), (5 * w // 6, cy + ay + h // 20), 90, -1)
    return np.clip(ct + rng.normal(0, 6, ct.shape), 0, 255).astype(np.uint8)


def text_page(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A scanned page: dark text lines on white (a report, a request form)."""
    page = np.full((int(h * 1.41), w), int(rng.integers(225, 250)), np.uint8)
    for i in range(int(page.shape[0] / (w / 18))):
        words = " ".join(
            "".join(rng.choice(list("abcdefghij"), int(rng.integers(2, 9)))) for _ in range(6)
        )
        cv2.putText(
            page,
            words,
            (w // 16, int((i + 1.5) * w / 18)),
            cv2.FONT_HERSHEY_SIMPLEX,
            w / 900,
            20,
            max(1, w // 400),
        )
    return page


def pink_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """1/f noise: the power spectrum of natural scenes, with no anatomy."""
    spectrum = np.fft.fft2(rng.normal(size=(h, w)))
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    field = np.real(np.fft.ifft2(spectrum / np.maximum(np.hypot(fy, fx), 1 / max(h, w))))
    return cv2.normalize(field, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def colour_photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour regions with texture (BGR): what a camera photograph of a scene looks like to
    the gate."""
    coarse = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    base = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def gradient(kind: str) -> Callable[[np.random.Generator, int, int], np.ndarray]:
    def make(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        yy, xx = np.mgrid[:h, :w] / max(h, w)
        field = {"horizontal": xx, "vertical": yy, "radial": np.hypot(yy - 0.5, xx - 0.5)}[kind]
        return cv2.normalize(field, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)

    return make


NON_RADIOGRAPHS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "uniform noise": lambda rng, h, w: rng.integers(0, 256, (h, w)).astype(np.uint8),
    "gaussian noise": lambda rng, h, w: np.clip(rng.normal(128, 40, (h, w)), 0, 255).astype(
        np.uint8
    ),
    "pink noise": pink_noise,
    "horizontal gradient": gradient("horizontal"),
    "vertical gradient": gradient("vertical"),
    "radial gradient": gradient("radial"),
    "blank": lambda rng, h, w: np.full((h, w), int(rng.integers(0, 256)), np.uint8),
    "CT slice": ct_slice,
    "text page": text_page,
    "colour photo": colour_photo,
    "colour photo as grey": lambda rng, h, w: cv2.cvtColor(
        colour_photo(rng, h, w), cv2.COLOR_BGR2GRAY
    ),
    "panorama strip": lambda rng, h, w: cv2.resize(HELD_OUT[0], (w * 3, h)),  # a film stretched 3:1
}
HELD_OUT: list[np.ndarray] = []  # the test films, once read


def rates(images: list[np.ndarray], limits: ImageLimits) -> str:
    """ "ok / flagged / refused" counts and what flagged or refused them (feature: films)."""
    verdicts = [check_image(image, limits) for image in images]
    counts = " / ".join(
        str(sum(v.status == s for v in verdicts)) for s in ("ok", "flagged", "refused")
    )
    causes = Counter(
        part.split()[0]
        for v in verdicts
        if v.flagged
        for part in v.reason.removeprefix("unlike a chest radiograph: ").split(", ")
    )
    causes.update(colour=sum(v.refused for v in verdicts))
    causes = +causes  # drop the zero counts
    return f"{counts} | {', '.join(f'{k} {n}' for k, n in sorted(causes.items())) or '-'}"


def main(root: Path) -> None:
    train_val = films(root, "train") + films(root, "val")
    features = [image_features(f) for f in train_val]
    chosen = choose(features)
    print(f"## Limits chosen on train + val ({len(train_val)} films), margin {MARGIN:.1f}")
    for key in ("detail", "flat", "dark_edge"):
        values = np.array([f[key] for f in features])
        print(
            f"- {key}: train/val {values.min():.3f} .. {values.max():.3f} (median "
            f"{np.median(values):.3f})"
        )
    print("- limits:", {k: round(v, 3) for k, v in chosen.items()})
    limits = ImageLimits(**{k: round(v, 3) for k, v in chosen.items()})
    shipped = ImageLimits()
    if asdict(limits) != asdict(shipped):
        print(f"!! lungseg.inference.gate.ImageLimits differs: {asdict(shipped)}")
    test = films(root, "test")
    HELD_OUT.extend(test)
    print("\n## Held out: ok / flagged / refused")
    print("| images | n | ok / flagged / refused | by |\n| --- | --- | --- | --- |")
    print(f"| train + val (chosen on) | {len(train_val)} | {rates(train_val, limits)} |")
    print(f"| test | {len(test)} | {rates(test, limits)} |")
    for name, (shift, levels) in SHIFTS.items():
        for level in levels:
            rng = np.random.default_rng(0)
            shifted = [shift(f, np.zeros(f.shape[:2], np.uint8), level, rng)[0] for f in test]
            print(f"| test, {name} {level} | {len(shifted)} | {rates(shifted, limits)} |")
    rng = np.random.default_rng(2026)
    for name, make in NON_RADIOGRAPHS.items():
        sizes = zip(rng.integers(256, 1024, 10), rng.uniform(0.8, 1.25, 10), strict=True)
        images = [make(rng, int(s), int(s * a)) for s, a in sizes]
        print(f"| {name} | {len(images)} | {rates(images, limits)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/cxr-v7"))
