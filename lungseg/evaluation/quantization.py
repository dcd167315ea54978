"""INT8 through OpenVINO's own tooling, with accuracy control: NNCF post-training quantisation of
the float model, calibrated on radiographs through the project's preprocessing
(``lungseg.inference.inputs.calibration_images``), then checked on the val films: mean per-film Dice
of the thresholded masks (LungSegmenter's upsampling and threshold, no post-processing) against
their reference masks, INT8 against the fp32 model. NNCF's ``quantize_with_accuracy_control``
returns operations to float until its own check passes; the export then measures the result itself
and refuses to write it when the mean Dice drops more than ``max_dice_drop``.

Used by ``python -m lungseg.export format=openvino quantize=int8 calibration=<data root>``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from lungseg.artifacts.contract import OUTPUT_NAME
from lungseg.artifacts.description import ModelDescription
from lungseg.artifacts.openvino import read_metadata, write_metadata
from lungseg.cpu import cpu_has_native_bf16
from lungseg.data.images import preprocess, read_mask
from lungseg.data.layout import find_pairs
from lungseg.errors import DataError, LungsegError, require_extra
from lungseg.inference.backends.openvino import OpenVinoBackend
from lungseg.inference.inputs import read_input
from lungseg.inference.segmenter import LungSegmenter
from lungseg.metrics import dice_iou, mask_counts

log = logging.getLogger(__name__)

VALIDATION_SPLIT = "val"  # the films the accuracy bound is checked on: never the test split
BATCH = 8


@dataclass
class Film:
    """A val film as the model reads it, with its reference mask at the film's size."""

    path: Path
    gray: np.ndarray  # uint8 (H, W), by the model's intensity rule
    image: np.ndarray  # float32 (1, s, s): the model input
    truth: np.ndarray  # bool (H, W)


def validation_root(cfg: DictConfig) -> Path:
    """Where the val films come from: ``validation=``, else the ``calibration=`` dataset root."""
    return Path(cfg.get("validation") or cfg.calibration).expanduser()


def validation_films(root: Path, description: ModelDescription) -> list[Film]:
    """Every film of ``root``'s val split with its mask, read and preprocessed as inference does."""
    pairs, problems = find_pairs(root, VALIDATION_SPLIT)
    if not pairs:
        why = problems[0] if problems else "no pairs"
        raise DataError(
            f"validation={root}: INT8 export checks its accuracy on a val split with "
            f"masks and found none ({why}); pass calibration= or validation= a dataset "
            "root with a val split"
        )
    films = []
    for pair in pairs:
        gray, truth = read_input(pair.image, description.intensity), read_mask(pair.mask) > 0
        if truth.shape != gray.shape:
            raise DataError(
                f"{pair.mask}: {truth.shape[1]}x{truth.shape[0]}, but its film is "
                f"{gray.shape[1]}x{gray.shape[0]}; the accuracy check needs masks at "
                "the films' size"
            )
        films.append(Film(pair.image, gray, preprocess(gray, description.image_size)[None], truth))
    return films


class CompiledModel:
    """A compiled candidate of NNCF's accuracy control as a lungseg backend (probabilities only)."""

    def __init__(self, compiled: Any, description: ModelDescription, divisor: int) -> None:
        self.compiled, self.description, self.divisor = compiled, description, divisor
        self.precision, self.device = "int8", "cpu"
        self.output = next(o for o in compiled.outputs if OUTPUT_NAME in o.get_names())

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.compiled({0: np.ascontiguousarray(images, np.float32)})[self.output]

    def default_workers(self) -> int:
        return 1


def film_dice(backend: Any, films: list[Film]) -> list[float]:
    """Per-film Dice of the backend's thresholded masks (upsampled to each film, not
    post-processed) against the reference masks, through LungSegmenter's road."""
    seg = LungSegmenter(backend, postprocess=False, polarity="as_read")
    scores = []
    for start in range(0, len(films), BATCH):
        batch = films[start : start + BATCH]
        probs = seg.probabilities(np.stack([f.image for f in batch]))
        for film, prob in zip(batch, probs, strict=True):
            mask = seg.finish(film.gray, prob[0]).mask
            scores.append(dice_iou(*mask_counts(mask, film.truth))[0])
    return scores


def checked_precisions() -> list[str]:
    """The precisions of the float operations an INT8 model is checked in: fp32, and bf16 where
    this CPU runs it natively (``precision=auto`` picks it there for bf16-trained models)."""
    return ["32-true"] + (["bf16-mixed"] if cpu_has_native_bf16() else [])


def quantize(
    nncf: Any,
    model: Any,
    images: np.ndarray,
    films: list[Film],
    description: ModelDescription,
    max_dice_drop: float,
    restore_iterations: int,
) -> tuple[Any, str]:
    """NNCF's INT8 of ``model`` (with accuracy control when it may restore operations), and how."""
    calibration = nncf.Dataset([x[None] for x in images])  # one (1, 1, s, s) image per item
    options = {"subset_size": len(images), "target_device": nncf.TargetDevice.CPU}
    if restore_iterations <= 0 or max_dice_drop < 0:
        return nncf.quantize(model, calibration, **options), "nncf.quantize"
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    divisor = int(read_metadata(model).get("size_divisor", 1))

    def validate(compiled: Any, indices: Any) -> tuple[float, list[float]]:
        candidate = CompiledModel(compiled, description, divisor)
        scores = film_dice(candidate, [films[i] for i in indices])
        return float(np.mean(scores)), scores

    restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=restore_iterations)
    quantized = nncf.quantize_with_accuracy_control(
        model,
        calibration,
        nncf.Dataset(list(range(len(films)))),
        validate,
        max_drop=max_dice_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        advanced_accuracy_restorer_parameters=restorer,
        **options,
    )
    return quantized, "nncf.quantize_with_accuracy_control"


def quantize_checked(
    model: Any,
    calibration: np.ndarray,
    validation: Path,
    description: ModelDescription,
    max_dice_drop: float = 0.002,
    restore_iterations: int = 8,
    calibration_source: str = "",
    threads: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The INT8 version of the float OpenVINO ``model``, calibrated on ``calibration`` (N, 1, s, s)
    preprocessed radiographs, and what was measured. Raises a one-line LungsegError when its mean
    val Dice is more than ``max_dice_drop`` below the fp32 model's. ``restore_iterations``: how
    many operations NNCF's accuracy control may return to float (0: plain ``nncf.quantize``)."""
    nncf = require_extra("nncf", "openvino", "INT8 export through OpenVINO")
    metadata = read_metadata(model)
    films = validation_films(validation, description)
    images = np.asarray(calibration, np.float32)
    reference = film_dice(OpenVinoBackend(model, "cpu", threads, "32-true"), films)
    start = time.perf_counter()
    quantized, method = quantize(
        nncf, model, images, films, description, max_dice_drop, restore_iterations
    )
    seconds = time.perf_counter() - start
    write_metadata(quantized, metadata)  # the description and card, whatever NNCF kept
    got = {
        p: film_dice(OpenVinoBackend(quantized, "cpu", threads, p), films)
        for p in checked_precisions()
    }
    float_dice = float(np.mean(reference))
    int8_dice = {p: float(np.mean(s)) for p, s in got.items()}
    worst = min(int8_dice, key=lambda p: int8_dice[p])
    drop = float_dice - int8_dice[worst]
    film_drops = [r - s for scores in got.values() for r, s in zip(reference, scores, strict=True)]
    details = {
        "tool": f"NNCF {nncf.__version__}",
        "method": method,
        "target_device": "CPU",
        "calibration_images": len(images),
        "calibration_source": calibration_source,
        "validation_films": len(films),
        "validation_source": validation.name,
        "fp32_mean_dice": round(float_dice, 6),
        "int8_mean_dice": {p: round(d, 6) for p, d in int8_dice.items()},
        "mean_dice_drop": round(drop, 6),
        "max_dice_drop": max_dice_drop,
        "largest_film_drop": round(max(film_drops), 6),
        "fake_quantize_ops": sum(
            op.get_type_name() == "FakeQuantize" for op in quantized.get_ops()
        ),
        "quantize_s": round(seconds, 1),
    }
    if drop > max_dice_drop:
        floats = f"float operations {worst}, " if len(got) > 1 else ""
        raise LungsegError(
            f"INT8 refused: its mean Dice on the {len(films)} val films of {validation} is "
            f"{int8_dice[worst]:.4f} ({floats}{method}) against {float_dice:.4f} for the fp32 "
            f"model, a drop of {drop:.4f}, more than max_dice_drop={max_dice_drop:g}; nothing was "
            "written (allow more with max_dice_drop=, calibrate on more films with "
            "calibration_images=, or keep the fp32 model)"
        )
    log.info(
        "INT8 (%s, %.0f s): mean Dice on %d val films %s against %.4f for fp32: drop %.4f <= %g",
        method,
        seconds,
        len(films),
        ", ".join(f"{d:.4f} ({p})" for p, d in int8_dice.items()),
        float_dice,
        drop,
        max_dice_drop,
    )
    return quantized, details


def quantization_card(details: dict[str, Any]) -> str:
    """The model card's section on an NNCF INT8 IR: how it was quantised and checked."""
    int8 = ", ".join(
        f"{d:.4f} with {p} float operations" for p, d in details["int8_mean_dice"].items()
    )
    return (
        f"\n\n## INT8 quantisation (OpenVINO)\n\nThis IR is the INT8 version of the model: "
        f"{details['tool']} post-training quantisation ({details['method']}), calibrated on "
        f"{details['calibration_images']} un-augmented radiographs from "
        f"`{details['calibration_source']}` preprocessed as above. Input and output are "
        f"unchanged (float32). Checked on the {details['validation_films']} val films of "
        f"`{details['validation_source']}` (per-film Dice of the thresholded masks, no "
        f"post-processing): mean {details['fp32_mean_dice']:.4f} for the fp32 model, {int8}; "
        f"the export refuses a drop above {details['max_dice_drop']:g}.\n"
    )
