"""The trained model as a thing you hand over: what a checkpoint records about itself, and the one
safe way to read it back (tensors only, known classes only, clear errors)."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from lungseg.artifacts.description import DESCRIPTION_KEY, ModelDescription
from lungseg.atomic import save_torch
from lungseg.errors import CheckpointError
from lungseg.runtime import use_channels_last

# A checkpoint's hyper-parameters name the classes to build; only these packages may be named there,
# so a foreign checkpoint cannot make us import and call arbitrary code.
ALLOWED_TARGETS = ("lungseg.", "torch.nn.", "torch.optim.")
# the network's weights in a checkpoint's state_dict (the LightningModule's ``net``)
NET_PREFIX = "net."


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


def refuse_foreign_targets(config: Mapping[str, Any], source: str | Path) -> None:
    """Refuse a config that names a class outside lungseg, torch.nn and torch.optim (it would run
    that code)."""
    foreign = [t for t in _targets(dict(config)) if not t.startswith(ALLOWED_TARGETS)]
    if foreign:
        raise CheckpointError(
            f"{source}: refused: it asks to build {', '.join(foreign)}, which is not a lungseg, "
            "torch.nn or torch.optim class"
        )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file's dict with ``weights_only=True``; refuse anything that is not a
    lungseg checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such checkpoint; pass ckpt_path=outputs/<run>/checkpoints/best.ckpt"
        )
    # zero bytes, random bytes, a cut-off file, an old-style pickle
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size
        what = (
            "an empty file"
            if size == 0
            else f"{size:,} bytes that are no PyTorch checkpoint archive"
        )
        raise CheckpointError(
            f"{path}: not a checkpoint ({what}: truncated or corrupt, or another kind of file); "
            "use another checkpoint, e.g. last.ckpt, or retrain"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    # torch's message suggests weights_only=False: never repeat that advice
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: it holds pickled Python objects, not only tensors, and loading "
            "them could run "
            "code. lungseg checkpoints load without pickle; use one written by lungseg.train"
        ) from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        zipfile.BadZipFile,
        ValueError,
        IndexError,
        KeyError,
    ) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path}: not a checkpoint (a damaged archive, truncated or corrupt: {reason}); "
            "use another checkpoint, e.g. last.ckpt, or retrain"
        ) from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if (
        not isinstance(hparams, dict)
        or "state_dict" not in ckpt
        or not isinstance(hparams.get("net"), dict)
    ):
        raise CheckpointError(
            f"{path}: not a lungseg checkpoint (no network config inside); use a checkpoint "
            "written by lungseg.train"
        )
    refuse_foreign_targets(hparams, path)
    refuse_non_finite(ckpt["state_dict"], path)
    return ckpt


def non_finite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf (parameters and buffers alike)."""
    return [
        name
        for name, t in tensors.items()
        if isinstance(t, torch.Tensor)
        and t.is_floating_point()
        and not bool(torch.isfinite(t).all())
    ]


def refuse_non_finite(state_dict: Mapping[str, Any], path: str | Path) -> None:
    """Refuse weights or statistics (BatchNorm running_var, ...) that hold NaN or inf, naming
    them."""
    bad = non_finite_tensors(state_dict)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(
            f"{path}: refused: {len(bad)} tensor(s) hold NaN or inf ({shown}): the training had "
            "diverged; use an earlier checkpoint or retrain with a lower optimizer.lr"
        )


def describe(
    ckpt: Mapping[str, Any], path: str | Path, image_size: int | None = None
) -> ModelDescription:
    """The checkpoint's description; ``image_size`` overrides it. A checkpoint written before
    lungseg recorded one needs ``image_size`` (its other fields then take their defaults)."""
    stored = ckpt.get(DESCRIPTION_KEY)
    if isinstance(stored, Mapping):
        description = ModelDescription.from_dict(stored)
        if image_size is not None:
            description = ModelDescription.from_dict(
                {**description.to_dict(), "image_size": int(image_size)}
            )
        return description
    if image_size is None:
        raise CheckpointError(
            f"{path}: written by an older lungseg, it does not record its input size; pass "
            "image_size=<the data.image_size it was trained at> (e.g. image_size=256)"
        )
    threshold = ckpt["hyper_parameters"].get("threshold", 0.5)
    return ModelDescription(image_size=int(image_size), threshold=float(threshold))


def record_test_metrics(path: str | Path, metrics: Mapping[str, float]) -> None:
    """Add a test evaluation's metrics to a checkpoint's description (rewritten atomically)."""
    ckpt = read_checkpoint(path)
    description = describe(ckpt, path)
    ckpt[DESCRIPTION_KEY] = {
        **description.to_dict(),
        "test_metrics": {k: float(v) for k, v in metrics.items()},
    }
    save_torch(ckpt, path)


@dataclass
class TrainedModel:
    """A trained network (fp32, eval mode, on the CPU) with its description and training
    hyper-parameters."""

    net: nn.Module
    description: ModelDescription
    hparams: dict[str, Any]

    @property
    def channels_last(self) -> bool:
        """The inference layout: as trained when set, channels_last for ``auto`` (faster on every
        device measured)."""
        return use_channels_last(self.hparams.get("channels_last", True), training=False)


def build_net(net_config: Mapping[str, Any], source: str | Path) -> nn.Module:
    """The network of a config that names only lungseg, torch.nn and torch.optim classes."""
    refuse_foreign_targets(net_config, source)
    try:
        return instantiate(dict(net_config))
    except Exception as err:  # Hydra wraps whatever the constructor raised
        raise CheckpointError(
            f"{source}: its network config does not match this version of lungseg "
            f"({str(err).splitlines()[0]})"
        ) from None


def load_checkpoint(path: str | Path, image_size: int | None = None) -> TrainedModel:
    """The network, description and hyper-parameters of a checkpoint (``image_size`` overrides the
    recorded one). Only the network is built (from its recorded config): no LightningModule, loss,
    metrics or optimiser."""
    ckpt = read_checkpoint(path)
    hparams, description = dict(ckpt["hyper_parameters"]), describe(ckpt, path, image_size)
    net = build_net(hparams["net"], path)
    weights = {
        k[len(NET_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(NET_PREFIX)
    }
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: does not match this version of lungseg ({str(err).splitlines()[0]})"
        ) from None
    return TrainedModel(
        net.float().to(memory_format=torch.contiguous_format).eval(), description, hparams
    )
