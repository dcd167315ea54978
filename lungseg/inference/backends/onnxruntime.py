"""An exported model run by ONNX Runtime (``lungseg.export format=onnx``, fp32 or INT8):
preprocessed batches in, probabilities out, without torch. The model's description travels in the
file's metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lungseg.artifacts.contract import INPUT_NAME, OUTPUT_NAME, read_description, signature_problem
from lungseg.errors import CheckpointError, LungsegError, require_extra
from lungseg.runtime import usable_cores


def onnx_session(path: Path, device: str = "cpu", threads: int | None = None) -> object:
    """An ONNX Runtime session of a lungseg model file: ``threads`` intra-op threads (default: this
    process's usable cores), one inter-op thread, on the CPU or CUDA (``device=auto`` takes CUDA
    where installed). A file that is no readable ONNX model or does not take lungseg's input is one
    line."""
    ort = require_extra("onnxruntime", "export", "Running ONNX models")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = int(threads or usable_cores()), 1
    providers = ["CPUExecutionProvider"]
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    elif device not in ("auto", "cpu"):
        raise LungsegError(
            f"device={device}: ONNX Runtime here runs on {', '.join(ort.get_available_providers())}"
            "; use device=cpu or device=auto"
        )
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
        raise CheckpointError(
            f"{path}: not a readable ONNX model ({str(err).splitlines()[0]}); "
            "export it again with python -m lungseg.export"
        ) from None
    problem = signature_problem(
        [(i.name, i.type, list(i.shape)) for i in session.get_inputs()],
        [o.name for o in session.get_outputs()],
    )
    if problem:
        raise CheckpointError(f"{path}: {problem.replace('this model', 'this ONNX model', 1)}")
    return session


class OnnxBackend:
    """An ONNX Runtime session on the CPU (or CUDA where asked and installed)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        # before anything else is looked at
        require_extra("onnxruntime", "export", "Running ONNX models")
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"{path}: no such ONNX model; pass model_path=<file.onnx> written by lungseg.export"
            )
        self.session = onnx_session(path, device, threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.description = read_description(metadata, path)
        self.divisor = int(metadata.get("size_divisor", 1))
        self.precision = "int8" if "quantization" in metadata else "32-true"
        self.device = (
            "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        )
        self.path = path

    def __str__(self) -> str:
        return f"ONNX Runtime {self.precision} ({self.session.get_providers()[0]})"

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Lung probabilities (N, 1, s, s) float32 of preprocessed images (N, 1, s, s) float32."""
        return self.session.run(
            [OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, np.float32)}
        )[0]

    def logits(self, images: object) -> object:
        raise LungsegError(
            f"{self.path}: an ONNX model gives probabilities only; evaluate a checkpoint "
            "(ckpt_path=) or a pretrained folder (model_path=DIR)"
        )

    def default_workers(self) -> int:
        return 1
