"""What runs the network: PyTorch (checkpoints, pretrained folders), ONNX Runtime and OpenVINO
(exported files, no torch), and an ensemble of any; :func:`load_backend` picks one by the model's
path, by name, or by timing (``backend=auto``, ``choice``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lungseg.artifacts.description import ModelDescription


class Backend(Protocol):
    """What runs the network: preprocessed batches in, probabilities out, and the model's
    description."""

    name: str  # "torch", "onnxruntime", "openvino" or "ensemble"
    description: ModelDescription
    precision: str
    divisor: int
    device: Any  # where it runs: a torch.device, or "cpu"/"cuda" for ONNX Runtime and OpenVINO

    def probabilities(self, images: np.ndarray) -> np.ndarray: ...

    def logits(self, images: Any) -> Any: ...

    def default_workers(self) -> int: ...


def model_sources(setting: Any) -> list[str]:
    """A model setting as a list of sources: one path or Hub id, or a list of them (an ensemble)."""
    return [str(setting)] if isinstance(setting, (str, Path)) else [str(s) for s in setting]


BACKENDS = ("torch", "onnxruntime", "openvino", "auto")


def load_backend(
    source: str | Path,
    device: str = "auto",
    precision: str | None = "auto",
    image_size: int | None = None,
    threads: int | None = None,
    backend: str | None = None,
) -> Backend:
    """The backend of one model. ``backend`` None: by its path (``.onnx`` -> ONNX Runtime, ``.xml``
    -> OpenVINO, any other file -> a checkpoint, else a pretrained folder or Hub id: PyTorch);
    ``torch``, ``onnxruntime`` or ``openvino`` as named (OpenVINO converts a checkpoint in memory);
    ``auto``: the fastest installed one for this model and host (``choice``), timed once and cached.
    Torch is imported only for checkpoints and folders."""
    from lungseg.errors import LungsegError
    from lungseg.inference.backends.choice import backends_for

    if backend == "auto":
        from lungseg.inference.backends.choice import choose_backend

        settings = {
            "device": device,
            "precision": precision,
            "threads": threads,
            "image_size": image_size,
        }
        return choose_backend(
            source,
            lambda name: load_backend(source, device, precision, image_size, threads, name),
            settings,
        )
    if backend is not None and backend not in BACKENDS:
        raise LungsegError(
            f"backend={backend}: use {', '.join(BACKENDS)}, or leave it unset (by the model's file)"
        )
    path = Path(str(source)).expanduser()
    runs = backends_for(source)
    backend = backend or runs[0]
    if backend not in runs:
        fix = (
            "export the checkpoint first: python -m lungseg.export format=onnx"
            if backend == "onnxruntime"
            else "torch runs checkpoints and pretrained folders"
        )
        raise LungsegError(
            f"backend={backend} cannot run {source}; use "
            f"backend={' or '.join(runs)} or auto ({fix})"
        )
    if backend == "onnxruntime":
        from lungseg.inference.backends.onnxruntime import OnnxBackend

        return OnnxBackend(path, device, threads)
    if backend == "openvino":
        from lungseg.artifacts.openvino import SUFFIXES, convert_source
        from lungseg.inference.backends.openvino import OpenVinoBackend

        if path.suffix.lower() in SUFFIXES:
            return OpenVinoBackend(path, device, threads, precision)
        return OpenVinoBackend(
            convert_source(source, image_size), device, threads, precision, where=str(source)
        )
    from lungseg.artifacts.checkpoint import load_checkpoint
    from lungseg.artifacts.pretrained import load_pretrained
    from lungseg.inference.backends.pytorch import TorchBackend

    if path.is_file() or path.suffix.lower() == ".ckpt":
        return TorchBackend(load_checkpoint(path, image_size), device, precision)
    return TorchBackend(load_pretrained(source), device, precision)
