"""Export a trained model with its sigmoid: ``python -m lungseg.export ckpt_path=best.ckpt format=onnx output=m.onnx``.

The exported model takes ``image``: float32 (N, 1, H, W), the radiograph as 8-bit grayscale divided
by 255 (``lungseg.data.images.preprocess``: luminance for colour, 16-bit stretched from its own
min..max, resized to the training size) and returns ``probability``: float32 (N, 1, H, W) in [0, 1].
N is dynamic; H and W too (multiples of 2**depth, 16 by default), though the model saw only its size.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from lungseg.checkpoint import load_module
from lungseg.config import CONFIG_DIR
from lungseg.errors import LungsegError, exit_on_user_error, require_extra
from lungseg.inference import model_image_size

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torch_export": ".pt2"}
INPUT_NAME, OUTPUT_NAME = "image", "probability"
NORMALISATION = ("float32 (N,1,H,W): 8-bit grayscale / 255 (luminance for colour, 16-bit stretched min..max), "
                 "resized to image_size x image_size (cv2 INTER_AREA when shrinking); output lung probability "
                 "(sigmoid applied), threshold 0.5")


class ProbabilityModel(nn.Module):
    """The trained network followed by its sigmoid: images (N, 1, H, W) in [0, 1] -> lung probabilities."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image))


def probability_model(ckpt_path: str | Path) -> ProbabilityModel:
    """Load a checkpoint (the one safe loader) as an fp32, eval-mode, contiguous-format ProbabilityModel."""
    net = load_module(ckpt_path).net.float().to(memory_format=torch.contiguous_format)
    return ProbabilityModel(net).eval()


def export_onnx(model: ProbabilityModel, path: Path, size: int, opset: int = 17, dynamic_size: bool = True,
                metadata: dict[str, str] | None = None) -> None:
    """Write an ONNX model with a dynamic batch (and H/W) axis and the input normalisation in its metadata."""
    onnx = require_extra("onnx", "export", "ONNX export")
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    with warnings.catch_warnings():  # the legacy exporter warns that it is legacy and that shape checks are traced
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, 1, size, size),), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"normalisation": NORMALISATION, "image_size": str(size), **(metadata or {})})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_program(model: ProbabilityModel, path: Path, size: int, divisor: int, dynamic_size: bool = True) -> None:
    """Write a ``torch.export`` program (.pt2) with a dynamic batch (and H/W, multiples of ``divisor``)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes: dict[int, object] = {0: batch}
    if dynamic_size:
        shapes[2] = divisor * torch.export.Dim("h_blocks", min=1, max=8192 // divisor)
        shapes[3] = divisor * torch.export.Dim("w_blocks", min=1, max=8192 // divisor)
    program = torch.export.export(model, (torch.rand(2, 1, size, size),), dynamic_shapes={"image": shapes})
    torch.export.save(program, str(path))


def run_exported(path: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities from an exported file (onnxruntime for .onnx, torch.export.load for .pt2)."""
    if path.suffix == ".onnx":
        ort = require_extra("onnxruntime", "export", "ONNX export")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {INPUT_NAME: images.astype(np.float32)})[0]
    with torch.inference_mode():
        return torch.export.load(str(path)).module()(torch.from_numpy(images)).numpy()


def export(cfg: DictConfig) -> dict[str, object]:
    """Export ``ckpt_path`` to ``format`` at ``output``; with ``verify`` compare it with PyTorch on random images."""
    if not cfg.get("ckpt_path"):
        raise LungsegError("missing setting ckpt_path=; e.g. python -m lungseg.export ckpt_path=best.ckpt format=onnx")
    if cfg.format not in FORMATS:
        raise LungsegError(f"format={cfg.format}: use one of {', '.join(FORMATS)}")
    if int(cfg.opset) < 17:
        raise LungsegError(f"opset={cfg.opset}: use 17 or newer (LayerNorm-era ops, onnxruntime >= 1.14)")
    ckpt = Path(cfg.ckpt_path)
    output = Path(cfg.output) if cfg.get("output") else ckpt.with_suffix(FORMATS[cfg.format])
    if output.exists() and not cfg.overwrite:
        raise LungsegError(f"output={output}: already exists; pass overwrite=true to replace it or choose another")
    model = probability_model(ckpt)
    divisor = int(getattr(model.net, "divisor", 1))
    size = model_image_size(ckpt, cfg.get("image_size"), divisor)
    output.parent.mkdir(parents=True, exist_ok=True)
    if cfg.format == "onnx":
        export_onnx(model, output, size, int(cfg.opset), bool(cfg.dynamic_size),
                    {"size_divisor": str(divisor), "source_checkpoint": ckpt.name})
    else:
        export_program(model, output, size, divisor, bool(cfg.dynamic_size))
    result: dict[str, object] = {"output": output, "image_size": size}
    if cfg.verify:
        images = torch.rand(2, 1, size, size)
        with torch.inference_mode():
            expected = model(images).numpy()
        result["max_abs_diff"] = float(np.abs(run_exported(output, images.numpy()) - expected).max())
        log.info("exported and PyTorch probabilities differ by at most %.2e on random images",
                 result["max_abs_diff"])
    log.info("wrote %s (%s, input %dx%d, any batch size; input normalisation: %s)", output, cfg.format, size, size,
             NORMALISATION)
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    export(cfg)


if __name__ == "__main__":
    main()
