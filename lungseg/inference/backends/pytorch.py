"""A trained network run by PyTorch (checkpoints and pretrained folders): preprocessed batches in,
probabilities out, on the chosen device and in the training precision where the device runs it
natively."""

from __future__ import annotations

import numpy as np
import torch

from lungseg.artifacts.checkpoint import TrainedModel
from lungseg.artifacts.description import ModelDescription
from lungseg.runtime import autocast, default_num_workers, pick_device, resolve_precision


class TorchBackend:
    """The network of a :class:`TrainedModel` in eval mode (channels_last as trained)."""

    name = "torch"

    def __init__(
        self,
        model: TrainedModel,
        device: str | torch.device = "auto",
        precision: str | None = "auto",
    ):
        self.device = device if isinstance(device, torch.device) else pick_device(str(device))
        self.description: ModelDescription = model.description
        self.precision = resolve_precision(self.device, precision, model.description.precision)
        self.channels_last = model.channels_last
        net = model.net.to(self.device).eval()
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net
        if model.hparams.get("compile"):  # trained with module.compile=true: run compiled here too
            self.net = torch.compile(self.net)
        self.divisor = int(getattr(self.net, "divisor", 1))

    def __str__(self) -> str:
        return f"PyTorch {self.precision} on {self.device}"

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1, s, s) in fp32 on the CPU of preprocessed images (N, 1, s, s) in [0, 1]."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            return self.net(images).float().cpu()

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Lung probabilities (N, 1, s, s) float32 of preprocessed images (N, 1, s, s) float32."""
        return torch.sigmoid(self.logits(torch.from_numpy(np.ascontiguousarray(images)))).numpy()

    def default_workers(self) -> int:
        """Decode threads when none are asked for: as many as DataLoader workers would be here."""
        return max(1, default_num_workers())
