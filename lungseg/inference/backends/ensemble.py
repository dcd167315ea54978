"""Several trained models as one: their probabilities averaged (a seed ensemble, or PyTorch and ONNX
members)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lungseg.artifacts.description import ModelDescription
from lungseg.errors import LungsegError


class EnsembleBackend:
    """The mean of its members' probabilities. Members must share the input size (the model input is
    prepared once); the description is the first member's, with every member's listed under
    ``ensemble``."""

    name = "ensemble"

    def __init__(self, members: Sequence[Any], sources: Sequence[str]) -> None:
        if not members:
            raise LungsegError("an ensemble needs at least one model")
        for what, fix in (
            ("image_size", "use models trained at one data.image_size"),
            ("intensity", "use models trained by one lungseg version (>= 0.3: window)"),
        ):
            if len({getattr(m.description, what) for m in members}) > 1:
                listed = ", ".join(
                    f"{s} ({getattr(m.description, what)})"
                    for s, m in zip(sources, members, strict=True)
                )
                raise LungsegError(
                    f"ensemble members differ in their input's {what} ({listed}); {fix} (the model "
                    "input is prepared once for all members)"
                )
        self.members = list(members)
        first = members[0].description
        self.description = ModelDescription.from_dict(
            {
                **first.to_dict(),
                "ensemble": [
                    {"source": str(s), **m.description.to_dict()}
                    for s, m in zip(sources, members, strict=True)
                ],
            }
        )
        self.precision = "/".join(dict.fromkeys(m.precision for m in members))
        self.divisor = max(m.divisor for m in members)
        self.device = members[0].device

    def __str__(self) -> str:
        return f"ensemble of {len(self.members)}: " + ", ".join(str(m) for m in self.members)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """The members' mean lung probability, float32 (N, 1, s, s)."""
        return np.mean([m.probabilities(images) for m in self.members], axis=0, dtype=np.float32)

    def logits(self, images: Any) -> Any:
        """The logit of the mean probability (so evaluation's loss and curves score the ensemble's
        output)."""
        import torch

        probs = torch.stack([torch.sigmoid(m.logits(images)) for m in self.members]).mean(0)
        return torch.logit(probs.clamp(1e-7, 1 - 1e-7))

    def default_workers(self) -> int:
        return max(m.default_workers() for m in self.members)
