"""Writing a trained network for other runtimes: ONNX (with the description and card in its
metadata) and a ``torch.export`` program. Each is serialised in memory and written by lungseg's
atomic writer: torch's own archive writer turns a failed disk write into an abort at exit, lungseg's
into one OSError naming the file."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from lungseg.artifacts.checkpoint import TrainedModel
from lungseg.artifacts.contract import DESCRIPTION_FIELD, INPUT_NAME, OUTPUT_NAME
from lungseg.atomic import write_bytes
from lungseg.errors import require_extra


class ProbabilityModel(nn.Module):
    """The trained network followed by its sigmoid: images (N, 1, H, W) in [0, 1] -> lung
    probabilities."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image))


def export_metadata(model: TrainedModel, source: str, card: str) -> dict[str, str]:
    """What an exported file carries beside the weights (ONNX metadata_props, OpenVINO rt_info): its
    size divisor, the checkpoint it came from, the description and the card."""
    return {
        "size_divisor": str(int(getattr(model.net, "divisor", 1))),
        "source_checkpoint": source,
        DESCRIPTION_FIELD: json.dumps(model.description.to_dict()),
        "model_card": card,
    }


def export_onnx(
    model: ProbabilityModel,
    path: Path,
    size: int,
    opset: int = 17,
    dynamic_size: bool = True,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write an ONNX model with a dynamic batch (and H/W) axis and ``metadata`` in its
    metadata_props."""
    onnx = require_extra("onnx", "export", "ONNX export")
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    buffer = io.BytesIO()
    # the legacy exporter warns that it is legacy and that shape checks are traced
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(2, 1, size, size),),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {"image_size": str(size), **(metadata or {})})
    onnx.checker.check_model(proto)
    write_bytes(path, proto.SerializeToString())


def export_program(
    model: ProbabilityModel, path: Path, size: int, divisor: int, dynamic_size: bool = True
) -> None:
    """Write a ``torch.export`` program (.pt2) with a dynamic batch (and H/W, multiples of
    ``divisor``)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes: dict[int, object] = {0: batch}
    if dynamic_size:
        shapes[2] = divisor * torch.export.Dim("h_blocks", min=1, max=8192 // divisor)
        shapes[3] = divisor * torch.export.Dim("w_blocks", min=1, max=8192 // divisor)
    program = torch.export.export(
        model, (torch.rand(2, 1, size, size),), dynamic_shapes={"image": shapes}
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    write_bytes(path, buffer.getvalue())


def run_program(path: Path, images: torch.Tensor) -> torch.Tensor:
    """Probabilities of a ``torch.export`` program (.pt2) on preprocessed images."""
    with torch.inference_mode():
        return torch.export.load(str(path)).module()(images)
