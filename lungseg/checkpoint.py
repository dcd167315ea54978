"""The one way to load a trained model: safely (tensors only, known classes only) and with clear errors."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lungseg.errors import CheckpointError
from lungseg.module import LungSegModule

# A checkpoint's hyper-parameters name the classes to build; only these packages may be named there,
# so a foreign checkpoint cannot make us import and call arbitrary code.
ALLOWED_TARGETS = ("lungseg.", "torch.nn.", "torch.optim.")


def _targets(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield str(value)
            else:
                yield from _targets(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _targets(value)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file's dict with ``weights_only=True``; refuse anything that is not a lungseg checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass ckpt_path=outputs/<run>/checkpoints/best.ckpt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused: it holds pickled Python objects, not only tensors ({str(err).splitlines()[0]}). "
            "lungseg checkpoints load without pickle; use one written by lungseg.train"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{path}: cannot read checkpoint (truncated or corrupt: {str(err).splitlines()[0]}); "
            "use another checkpoint, e.g. last.ckpt, or retrain"
        ) from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in ckpt or not isinstance(hparams.get("net"), dict):
        raise CheckpointError(f"{path}: not a lungseg checkpoint (no network config inside); "
                              "use a checkpoint written by lungseg.train")
    foreign = [t for t in _targets(hparams) if not t.startswith(ALLOWED_TARGETS)]
    if foreign:
        raise CheckpointError(f"{path}: refused: it asks to build {', '.join(foreign)}, which is not a lungseg, "
                              "torch.nn or torch.optim class")
    return ckpt


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> LungSegModule:
    """Rebuild the trained LungSegModule from a checkpoint alone, in eval mode."""
    ckpt = read_checkpoint(path)
    try:
        module = LungSegModule(**ckpt["hyper_parameters"])
        module.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: does not match this version of lungseg ({str(err).splitlines()[0]})") from None
    return module.to(map_location).eval()
