"""Export a trained model: ``python -m lungseg.export ckpt_path=best.ckpt
format=onnx|torch_export|pretrained``.

``onnx`` and ``torch_export`` take ``image``: float32 (N, 1, H, W), the radiograph preprocessed as
the model's description says (``lungseg.artifacts.checkpoint.PREPROCESSING``: 8-bit grayscale / 255
at the training size) and return ``probability``: float32 (N, 1, H, W) in [0, 1]. N is dynamic; H
and W too (multiples of 2**depth). The ONNX file carries the model's description and card in its
metadata; each file gets its model card beside it (``<name>.README.md``). ``pretrained`` writes the
Hugging Face folder (config.json, model.safetensors, README.md) that
``LungSegmenter.from_pretrained`` loads.

``format=onnx quantize=int8 calibration=<dataset root or folder>`` writes a static INT8 model
instead (QDQ, per-channel weights; ``lungseg.artifacts.quantize``), calibrated on
``calibration_images`` radiographs; same input, output and metadata.

``format=openvino`` writes the OpenVINO IR (``.xml`` + ``.bin``) of the same graph, the description
and card in its ``rt_info`` (``lungseg.artifacts.openvino``); with ``quantize=int8`` NNCF's INT8,
refused when its mean val Dice drops more than ``max_dice_drop``
(``lungseg.evaluation.quantization``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from lungseg.artifacts.checkpoint import TrainedModel, load_checkpoint
from lungseg.artifacts.contract import INPUT_NAME, OUTPUT_NAME
from lungseg.artifacts.exports import (
    ProbabilityModel,
    export_metadata,
    export_onnx,
    export_program,
    run_program,
)
from lungseg.artifacts.model_card import model_card
from lungseg.artifacts.pretrained import save_pretrained
from lungseg.artifacts.quantize import quantization_card, quantize_int8
from lungseg.atomic import (
    named_write_errors,
    output_lock,
    remove_stale,
    replace_dir,
    temp_path,
    write_text,
)
from lungseg.config import CONFIG_DIR, command_line
from lungseg.errors import LungsegError, exit_on_user_error
from lungseg.inference.backends.onnxruntime import onnx_session
from lungseg.inference.backends.pytorch import TorchBackend
from lungseg.inference.inputs import calibration_files, calibration_images
from lungseg.inference.segmenter import LungSegmenter
from lungseg.metrics import mask_dice
from lungseg.settings import refuse_existing, writable_dir

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torch_export": ".pt2", "pretrained": "", "openvino": ".xml"}


def run_exported(path: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities from an exported file (ONNX Runtime for .onnx, OpenVINO for .xml in fp32,
    torch.export.load for .pt2)."""
    if path.suffix == ".xml":
        from lungseg.inference.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(path, "cpu", precision="32-true").probabilities(images)
    if path.suffix == ".onnx":
        return onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: images.astype(np.float32)})[0]
    return run_program(path, torch.from_numpy(images)).numpy()


def verify(model: TrainedModel, output: Path, size: int) -> float:
    """Largest difference between the exported model's probabilities and LungSegmenter's in fp32 on
    random images (for a pretrained folder: the folder loaded back, through the same predictor)."""
    images = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    expected = LungSegmenter(TorchBackend(model, "cpu", "32-true")).probabilities(images.numpy())
    if output.is_dir():
        got = LungSegmenter.from_pretrained(output, "cpu", precision="32-true").probabilities(
            images.numpy()
        )
    else:
        got = run_exported(output, images.numpy())
    return float(np.abs(got - expected).max())


def verify_int8(model: TrainedModel, output: Path, images: np.ndarray) -> tuple[float, float]:
    """Largest probability difference between the INT8 file and LungSegmenter in fp32 on
    real-looking ``images`` (the calibration radiographs; random noise says little about
    quantisation), and the Dice of their masks."""
    expected = LungSegmenter(TorchBackend(model, "cpu", "32-true")).probabilities(images)
    got = run_exported(output, images)
    return float(np.abs(got - expected).max()), mask_dice(
        got >= model.description.threshold, expected >= model.description.threshold
    )


def write_openvino(
    cfg: DictConfig,
    model: TrainedModel,
    metadata: dict[str, str],
    staged: Path,
    calibration: np.ndarray | None,
) -> tuple[str, dict[str, object]]:
    """Write the IR ``staged`` (+ ``.bin``): fp32, or with ``calibration`` images NNCF INT8 checked
    on the val films (``lungseg.evaluation.quantization``, refused past ``max_dice_drop``). Returns
    the card written into it and the quantisation's details (empty for fp32)."""
    from lungseg.artifacts.openvino import save_ir, to_openvino, write_metadata

    converted = to_openvino(model, metadata, int(cfg.opset), bool(cfg.dynamic_size))
    card, details = metadata["model_card"], {}
    if calibration is not None:
        from lungseg.evaluation.quantization import quantization_card as checked_card
        from lungseg.evaluation.quantization import quantize_checked, validation_root

        converted, details = quantize_checked(
            converted,
            calibration,
            validation_root(cfg),
            model.description,
            max_dice_drop=float(cfg.max_dice_drop),
            restore_iterations=int(cfg.accuracy_control_iterations),
            calibration_source=Path(cfg.calibration).name,
            threads=cfg.get("threads"),
        )
        card += checked_card(details)
        write_metadata(
            converted,
            {
                "model_card": card,
                "quantization": json.dumps(details),
                "calibration_source": Path(cfg.calibration).name,
            },
        )
    save_ir(converted, staged)
    return card, details


def check_quantize(cfg: DictConfig) -> list[Path]:
    """Refuse a ``quantize`` setting export cannot honour; for ``int8`` the calibration radiographs
    to use."""
    quantize = cfg.get("quantize")
    if quantize is None:
        return []
    if quantize != "int8":
        raise LungsegError(f"quantize={quantize}: use null (fp32) or int8")
    if cfg.format not in ("onnx", "openvino"):
        raise LungsegError(
            f"quantize=int8 needs format=onnx (onnxruntime static quantisation) or format=openvino "
            f"(NNCF, accuracy-checked), not {cfg.format}"
        )
    if not cfg.get("calibration"):
        raise LungsegError(
            "quantize=int8 needs calibration=<a dataset root (its train split's images are used) "
            "or "
            "a folder of radiographs>: static INT8 measures activation ranges on real images"
        )
    return calibration_files(cfg.calibration, int(cfg.calibration_images))


def export(cfg: DictConfig) -> dict[str, object]:
    """Export ``ckpt_path`` to ``format`` at ``output``; with ``verify`` compare it with PyTorch on
    random images (an INT8 file: on its calibration radiographs, with the masks' Dice)."""
    if not cfg.get("ckpt_path"):
        raise LungsegError(
            "missing setting ckpt_path=; e.g. python -m lungseg.export "
            "ckpt_path=best.ckpt format=onnx"
        )
    if cfg.format not in FORMATS:
        raise LungsegError(f"format={cfg.format}: use one of {', '.join(FORMATS)}")
    if int(cfg.opset) < 17:
        raise LungsegError(
            f"opset={cfg.opset}: use 17 or newer (LayerNorm-era ops, onnxruntime >= 1.14)"
        )
    calibration = check_quantize(cfg)
    ckpt = Path(cfg.ckpt_path)
    output = Path(cfg.output) if cfg.get("output") else ckpt.with_suffix(FORMATS[cfg.format])
    if cfg.format == "pretrained" and not cfg.get("output"):
        output = ckpt.with_name(f"{ckpt.stem}-pretrained")
    refuse_existing(output, "output", bool(cfg.overwrite))
    model = load_checkpoint(ckpt, cfg.get("image_size"))
    writable_dir(output.parent, "output")
    with output_lock(output, "output"):  # one writer per exported file or folder
        # again: another export may have written it meanwhile
        refuse_existing(output, "output", bool(cfg.overwrite))
        return write_export(cfg, model, ckpt, output, calibration)


def write_export(
    cfg: DictConfig, model: TrainedModel, ckpt: Path, output: Path, calibration: list[Path]
) -> dict[str, object]:
    """Write the export to ``output`` (staged beside it, then renamed into place), its card, and
    verify it."""
    size, divisor = model.description.image_size, int(getattr(model.net, "divisor", 1))
    card = model_card(model.description)
    if calibration and cfg.format == "onnx":
        card += quantization_card(len(calibration), Path(cfg.calibration).name)
    images = (
        calibration_images(calibration, size, model.description.intensity) if calibration else None
    )
    result: dict[str, object] = {"output": output, "image_size": size}
    remove_stale(output)  # what a killed export left beside it
    work = temp_path(output)
    work.mkdir()
    try:
        with named_write_errors(output):  # a failed write that names no file: the export
            staged = work / output.name  # written whole, then renamed into place
            if cfg.format == "pretrained":
                save_pretrained(model, staged)
            elif cfg.format == "onnx":
                fp32 = work / "fp32.onnx" if calibration else staged
                export_onnx(
                    ProbabilityModel(model.net),
                    fp32,
                    size,
                    int(cfg.opset),
                    bool(cfg.dynamic_size),
                    export_metadata(model, ckpt.name, card),
                )
                if calibration:
                    quantize_int8(
                        fp32,
                        staged,
                        images,
                        INPUT_NAME,
                        {"calibration_source": Path(cfg.calibration).name},
                    )
            elif cfg.format == "openvino":
                card, details = write_openvino(
                    cfg, model, export_metadata(model, ckpt.name, card), staged, images
                )
                if details:
                    result["quantization"] = details
            else:
                export_program(
                    ProbabilityModel(model.net), staged, size, divisor, bool(cfg.dynamic_size)
                )
            if staged.is_dir():
                replace_dir(staged, output)
            else:
                if output.is_dir():
                    shutil.rmtree(output)
                if cfg.format == "openvino":  # the weights first: the .xml is what names the model
                    os.replace(staged.with_suffix(".bin"), output.with_suffix(".bin"))
                os.replace(staged, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if cfg.format != "pretrained":
        write_text(output.with_name(f"{output.name}.README.md"), card)
    if cfg.verify and calibration:
        result["max_abs_diff"], result["mask_dice"] = verify_int8(model, output, images)
        log.info(
            "INT8 and PyTorch fp32 probabilities differ by at most %.4f on the %d calibration "
            "images; their "
            "masks agree with Dice %.4f",
            result["max_abs_diff"],
            len(images),
            result["mask_dice"],
        )
    elif cfg.verify:
        result["max_abs_diff"] = verify(model, output, size)
        log.info(
            "exported and PyTorch probabilities differ by at most %.2e on random images",
            result["max_abs_diff"],
        )
    log.info(
        "wrote %s (%s%s, input %dx%d, any batch size, threshold %g; input contract in the model "
        "card)",
        output,
        cfg.format,
        " int8" if calibration else "",
        size,
        size,
        model.description.threshold,
    )
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    export(cfg)


cli = command_line(main)

if __name__ == "__main__":
    cli()
