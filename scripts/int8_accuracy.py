"""Per-image Dice against the truth at native resolution: PyTorch fp32 (LungSegmenter) and ONNX files run by
onnxruntime (an fp32 export, its INT8 version, ...) on the original-resolution test films.

    python scripts/int8_accuracy.py best.ckpt lung_fp32.onnx lung_int8.onnx [--data ../shared/data/cxr-v7]

Every model runs on the one road, LungSegmenter (ONNX files through its ONNX Runtime backend): read_input ->
preprocess at the model's size -> network -> cv2.resize INTER_LINEAR to the film's size -> threshold (no
post-processing).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from lungseg.data.images import read_mask
from lungseg.inference.inputs import read_input
from lungseg.inference.segmenter import LungSegmenter
from lungseg.metrics import dice_iou, mask_counts

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-v7"


def test_pairs(data: Path) -> list[tuple[Path, Path]]:
    """(film, mask) of orig/test: cxrimage_N <-> cxrmask_N."""
    masks = {re.sub(r"\D", "", p.stem): p for p in (data / "orig" / "test" / "mask").iterdir()}
    films = sorted((data / "orig" / "test" / "image").iterdir(), key=lambda p: int(re.sub(r"\D", "", p.stem)))
    return [(f, masks[re.sub(r"\D", "", f.stem)]) for f in films]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("onnx", type=Path, nargs="*")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    pairs = test_pairs(args.data)
    models = {"PyTorch fp32": LungSegmenter.from_checkpoint(args.ckpt, "cpu", precision="32", postprocess=False),
              **{p.name: LungSegmenter.from_onnx(p, "cpu", threads=args.threads, postprocess=False)
                 for p in args.onnx}}
    dice: dict[str, list[float]] = {name: [] for name in models}
    for film, mask_path in pairs:
        gray, truth = read_input(film), read_mask(mask_path) > 0
        for name, seg in models.items():
            dice[name].append(dice_iou(*mask_counts(seg.predict(gray), truth))[0])
    reference = np.array(dice["PyTorch fp32"])
    print(f"{len(pairs)} test films at native resolution ({args.data / 'orig' / 'test'})")
    print("| model | mean per-image Dice | min | vs PyTorch fp32 | largest per-image change |\n|---|---|---|---|---|")
    for name, values in dice.items():
        v = np.array(values)
        print(f"| {name} | {v.mean():.4f} | {v.min():.4f} | {v.mean() - reference.mean():+.4f} | "
              f"{np.abs(v - reference).max():.4f} |")


if __name__ == "__main__":
    main()
