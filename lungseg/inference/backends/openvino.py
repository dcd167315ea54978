"""A lungseg model run by OpenVINO on the CPU: an ONNX file (read directly, fp32 or INT8 QDQ), an IR
written by ``lungseg.export format=openvino`` (``.xml`` + ``.bin``, fp32 or NNCF INT8), or a model
converted in memory. Preprocessed batches in, probabilities out, without torch. The description and
card travel in the IR's ``rt_info`` (section ``lungseg``), as an ONNX file carries them in its
``metadata_props`` (which OpenVINO reads into section ``framework``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.artifacts.contract import INPUT_NAME, OUTPUT_NAME, read_description, signature_problem
from lungseg.artifacts.description import ModelDescription
from lungseg.artifacts.openvino import (
    SUFFIXES,
    core,
    is_int8,
    openvino,
    read_metadata,
    read_model,
)
from lungseg.cpu import cpu_has_native_bf16
from lungseg.errors import CheckpointError, LungsegError

__all__ = ["SUFFIXES", "OpenVinoBackend", "float_precision"]

# lungseg's precision names -> INFERENCE_PRECISION_HINT, for the operations that stay in float
HINTS = {"32-true": "f32", "bf16-mixed": "bf16"}
PRECISION_NAMES = {
    "32": "32-true",
    "fp32": "32-true",
    "32-true": "32-true",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
}


def require_lungseg_signature(model: Any, where: str) -> None:
    """Refuse a model that does not take lungseg's input (``artifacts.contract``), one line naming
    it."""

    def described(port: Any) -> tuple[str, str, list[int | None]]:
        names = port.get_names()
        shape = port.get_partial_shape()
        dims = (
            [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
        )
        return (
            INPUT_NAME if INPUT_NAME in names else "/".join(sorted(names)),
            port.get_element_type().get_type_name(),
            dims,
        )

    outputs = [name for port in model.outputs for name in port.get_names()]
    problem = signature_problem([described(port) for port in model.inputs], outputs)
    if problem:
        raise CheckpointError(f"{where}: {problem}")


def float_precision(setting: str | None, trained: str) -> str:
    """The precision of the operations that run in float: ``auto`` by the project's rule (the
    training precision where this CPU has it natively, else 32-true); others as asked."""
    if setting in (None, "auto"):
        return "bf16-mixed" if trained == "bf16-mixed" and cpu_has_native_bf16() else "32-true"
    name = PRECISION_NAMES.get(str(setting))
    if name is None:
        raise LungsegError(
            f"precision={setting}: OpenVINO on the CPU runs auto, 32-true or bf16-mixed (32, bf16)"
        )
    return name


class OpenVinoBackend:
    """A model compiled for OpenVINO's CPU plugin: one inference request, synchronous calls.

    ``model``: a path (.onnx or .xml) or an ``openvino.Model`` (``where`` names it in errors).
    ``precision``: the float operations' (:func:`float_precision`); an INT8 model's quantised
    operations stay int8 either way. ``threads``: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's
    default, the cores this process may use)."""

    name = "openvino"

    def __init__(
        self,
        model: str | Path | Any,
        device: str = "auto",
        threads: int | None = None,
        precision: str | None = "auto",
        where: str = "in-memory model",
    ) -> None:
        ov = openvino()
        if device not in ("auto", "cpu"):
            raise LungsegError(
                f"device={device}: lungseg's OpenVINO backend runs on the CPU; use "
                "device=cpu or device=auto (backend=torch for a GPU)"
            )
        if isinstance(model, (str, Path)):
            where, model = str(Path(model).expanduser()), read_model(model)
        require_lungseg_signature(model, where)
        metadata = read_metadata(model)
        if "lungseg_description" not in metadata and "image_size" not in metadata:
            raise CheckpointError(
                f"{where}: a model without lungseg's description (in its rt_info "
                "or metadata); export one with python -m lungseg.export"
            )
        self.description: ModelDescription = read_description(metadata, Path(where))
        self.divisor = int(metadata.get("size_divisor", 1))
        self.int8 = is_int8(model)
        asked = float_precision(precision, self.description.precision)
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": HINTS[asked],
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core().compile_model(model, "CPU", config)
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # what the plugin runs
        self.float_precision = "bf16-mixed" if got == ov.Type.bf16 else "32-true"
        self.precision = "int8" if self.int8 else self.float_precision
        self.request = self.compiled.create_infer_request()
        self.output = next(o for o in self.compiled.outputs if OUTPUT_NAME in o.get_names())
        self.device = "cpu"
        self.path, self.version = where, ov.__version__.split("-")[0]
        self.quantization = json.loads(metadata.get("quantization", "null"))

    def __str__(self) -> str:
        floats = f" (float operations {self.float_precision})" if self.int8 else ""
        return f"OpenVINO {self.version} {self.precision}{floats} on the CPU"

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Lung probabilities (N, 1, s, s) float32 of preprocessed images (N, 1, s, s) float32."""
        return self.request.infer({0: np.ascontiguousarray(images, np.float32)})[self.output]

    def logits(self, images: object) -> object:
        raise LungsegError(
            f"{self.path}: an OpenVINO model gives probabilities only; evaluate a "
            "checkpoint (ckpt_path=) or a pretrained folder (model_path=DIR)"
        )

    def default_workers(self) -> int:
        return 1
