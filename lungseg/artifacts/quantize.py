"""Static INT8 quantisation of an exported ONNX model: onnxruntime QDQ, per-channel int8 weights,
uint8 activations calibrated on radiographs read and preprocessed exactly as inference reads them
(``read_input`` -> ``preprocess``).

Used by ``python -m lungseg.export format=onnx quantize=int8 calibration=<dataset root or folder>``
and by the benchmark's ONNX Runtime section.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from lungseg.markdown import table

log = logging.getLogger(__name__)

# On x86 without VNNI (AVX2 only) uint8 x int8 products go through vpmaddubsw, whose int16 sums can
# saturate:
# 7-bit weights (reduce_range) avoid that, as onnxruntime advises for such CPUs; VNNI CPUs lose
# nothing by it.
SETTINGS = {
    "format": "QDQ",
    "weights": "int8, per output channel, symmetric, 7-bit range (reduce_range)",
    "activations": "uint8, per tensor, asymmetric",
    "calibration_method": "MinMax",
    "int8_ops": "Conv, MaxPool, Concat, Relu, Sigmoid",
    "fp32_ops": "the first Conv (one input channel), ConvTranspose, BatchNormalization",
}
# What runs in int8 (lungseg-predict truth= and bench measured the choice, docs/INT8.md has the
# figures):
# - the first conv stays fp32: quantised, it cost 0.004-0.006 mean test Dice and 0.13 on one film;
# it is cheap.
# - ConvTranspose and BatchNormalization stay fp32 without QDQ pairs around them: onnxruntime has no
# int8 kernel
# for either on CPU (BatchNorm follows ReLU here, so it cannot fold into a conv), so their pairs
# only cost time.
QUANTIZED_OPS = ["Conv", "MaxPool", "Concat", "Relu", "Sigmoid"]


class RadiographReader:
    """An onnxruntime CalibrationDataReader over preprocessed images, one image per call."""

    def __init__(self, images: np.ndarray, input_name: str) -> None:
        self.images, self.input_name, self.index = images, input_name, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.images):
            return None
        self.index += 1
        return {self.input_name: self.images[self.index - 1 : self.index]}

    def rewind(self) -> None:
        self.index = 0


def quantize_int8(
    fp32: Path,
    output: Path,
    images: np.ndarray,
    input_name: str,
    metadata: dict[str, str] | None = None,
) -> dict[str, object]:
    """Write ``output``, the static INT8 (QDQ) version of the ONNX model ``fp32``, calibrated on
    ``images``; it keeps ``fp32``'s metadata_props and adds ``quantization`` (JSON: the settings and
    the calibration)."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    details: dict[str, object] = {
        **SETTINGS,
        "calibration_images": len(images),
        **(metadata or {}),
        "onnxruntime": onnxruntime.__version__,
    }
    # onnxruntime's quantiser warns on the root logger about BatchNorm weights and
    quiet = logging.getLogger()
    # biases it leaves in fp32 (they follow ReLU, so they cannot fold into the conv)
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(fp32),
            str(output),
            RadiographReader(images, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=QUANTIZED_OPS,
            nodes_to_exclude=first_convs(fp32, input_name),
        )
    finally:
        quiet.setLevel(level)
    props = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    proto = onnx.load(str(output))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**props, "quantization": json.dumps(details)})
    onnx.save(proto, str(output))
    return details


def quantization_card(images: int, source: str) -> str:
    """The model card's section on an INT8 file: how it was quantised and what to expect of it."""
    rows = table([("setting", "value"), *((k.replace("_", " "), v) for k, v in SETTINGS.items())])
    return (
        "\n\n## INT8 quantisation\n\nThis file is the static INT8 version of the model "
        "(onnxruntime "
        f"quantize_static). Input and output are unchanged (float32); calibrated on {images} "
        "un-augmented "
        f"radiographs from `{source}`, preprocessed as above. Its probabilities differ slightly "
        "from the fp32 "
        "model's: export logs the largest difference and the masks' Dice on the calibration "
        "images.\n\n"
        f"{rows}\n"
    )


def first_convs(path: Path, input_name: str) -> list[str]:
    """Names of the Conv nodes that read the model's input directly."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "Conv" and input_name in n.input]


def node_counts(path: Path) -> dict[str, int]:
    """How many nodes of each op type an ONNX file holds (QuantizeLinear > 0: a quantised model)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
