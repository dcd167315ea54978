"""What runs the network: PyTorch (checkpoints, pretrained folders), ONNX Runtime (exported files, no torch), and an
ensemble of either; :func:`load_backend` picks one by the model's path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lungseg.artifacts.description import ModelDescription


class Backend(Protocol):
    """What runs the network: preprocessed batches in, probabilities out, and the model's description."""

    description: ModelDescription
    precision: str
    divisor: int
    device: Any  # where it runs: a torch.device, or "cpu"/"cuda" for ONNX Runtime

    def probabilities(self, images: np.ndarray) -> np.ndarray: ...

    def logits(self, images: Any) -> Any: ...

    def default_workers(self) -> int: ...


def model_sources(setting: Any) -> list[str]:
    """A model setting as a list of sources: one path or Hub id, or a list of them (an ensemble)."""
    return [str(setting)] if isinstance(setting, (str, Path)) else [str(s) for s in setting]


def load_backend(source: str | Path, device: str = "auto", precision: str | None = "auto",
                 image_size: int | None = None, threads: int | None = None) -> Backend:
    """The backend of one model, chosen by its path: ``.onnx`` -> ONNX Runtime, any other file -> a checkpoint,
    else a pretrained folder or Hub id (PyTorch). Torch is imported only for the PyTorch ones."""
    path = Path(str(source)).expanduser()
    if path.suffix.lower() == ".onnx":
        from lungseg.inference.backends.onnxruntime import OnnxBackend

        return OnnxBackend(path, device, threads)
    from lungseg.artifacts.checkpoint import load_checkpoint
    from lungseg.artifacts.pretrained import load_pretrained
    from lungseg.inference.backends.pytorch import TorchBackend

    if path.is_file() or path.suffix.lower() == ".ckpt":
        return TorchBackend(load_checkpoint(path, image_size), device, precision)
    return TorchBackend(load_pretrained(source), device, precision)
