"""An exported model run by ONNX Runtime (``lungseg.export format=onnx``, fp32 or INT8): preprocessed batches in,
probabilities out, without torch. The model's description travels in the file's metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lungseg.artifacts.description import ModelDescription
from lungseg.errors import CheckpointError, LungsegError, require_extra

INPUT_NAME, OUTPUT_NAME = "image", "probability"


def read_description(metadata: dict[str, str], path: Path) -> ModelDescription:
    """The description an export wrote into ``metadata_props`` (older exports: their ``image_size`` alone)."""
    if "lungseg_description" in metadata:
        return ModelDescription.from_dict(json.loads(metadata["lungseg_description"]))
    if "image_size" in metadata:
        return ModelDescription(image_size=int(metadata["image_size"]))
    raise CheckpointError(f"{path}: an ONNX model without lungseg's metadata (no image_size); export it with "
                          "python -m lungseg.export ckpt_path=best.ckpt format=onnx")


def require_lungseg_signature(session: object, path: Path) -> None:
    """Refuse an ONNX model that does not take lungseg's input: one float input ``image`` (N, 1, H, W) and one
    output ``probability`` of the same shape."""
    inputs, outputs = session.get_inputs(), session.get_outputs()  # type: ignore[attr-defined]
    found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
    ok = (len(inputs) == 1 and inputs[0].name == INPUT_NAME and inputs[0].type == "tensor(float)"
          and len(inputs[0].shape) == 4 and inputs[0].shape[1] == 1
          and any(o.name == OUTPUT_NAME for o in outputs))
    if not ok:
        raise CheckpointError(f"{path}: this ONNX model does not take lungseg's input (it has {found}; lungseg "
                              f"models take {INPUT_NAME} float (N, 1, H, W) and give {OUTPUT_NAME}); export one "
                              "with python -m lungseg.export")


class OnnxBackend:
    """An ONNX Runtime session on the CPU (or CUDA where asked and installed)."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        ort = require_extra("onnxruntime", "export", "Running ONNX models")
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{path}: no such ONNX model; pass model_path=<file.onnx> written by lungseg.export")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif device not in ("auto", "cpu"):
            raise LungsegError(f"device={device}: ONNX Runtime here runs on {', '.join(ort.get_available_providers())}"
                               "; use device=cpu or device=auto")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            raise CheckpointError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0]}); "
                                  "export it again with python -m lungseg.export") from None
        require_lungseg_signature(self.session, path)
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.description = read_description(metadata, path)
        self.divisor = int(metadata.get("size_divisor", 1))
        self.precision = "int8" if "quantization" in metadata else "32-true"
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.path = path

    def __str__(self) -> str:
        return f"ONNX Runtime {self.precision} ({self.session.get_providers()[0]})"

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Lung probabilities (N, 1, s, s) float32 of preprocessed images (N, 1, s, s) float32."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, np.float32)})[0]

    def logits(self, images: object) -> object:
        raise LungsegError(f"{self.path}: an ONNX model gives probabilities only; evaluate a checkpoint "
                           "(ckpt_path=) or a pretrained folder (model_path=DIR)")

    def default_workers(self) -> int:
        return 1
