"""The trained model as a thing you hand over: what a checkpoint records about itself, and the one safe way to
read it back (tensors only, known classes only, clear errors)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import subprocess
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from huggingface_hub.errors import HfHubHTTPError
from hydra.utils import instantiate
from torch import nn

import lungseg
from lungseg.atomic import atomic_open
from lungseg.errors import CheckpointError
from lungseg.module import LungSegModule

DESCRIPTION_KEY = "lungseg"  # the checkpoint's self-description lives under this key
FORMAT = 1
# The input contract of every lungseg model (lungseg.data.images.preprocess): how pixels become the model input.
PREPROCESSING = {
    "grayscale": "colour -> ITU-R 601 luminance (alpha dropped); 16-bit and float stretched from their own "
                 "min..max to 0..255; 8-bit as is",
    "resize": "image_size x image_size, cv2.INTER_AREA when shrinking, cv2.INTER_LINEAR when growing",
    "scale": "uint8 / 255 -> float32 in [0, 1], shape (N, 1, H, W)",
    "output": "one logit per pixel (sigmoid -> lung probability), upsampled bilinearly to the input's size, "
              "then thresholded",
}
# A checkpoint's hyper-parameters name the classes to build; only these packages may be named there,
# so a foreign checkpoint cannot make us import and call arbitrary code.
ALLOWED_TARGETS = ("lungseg.", "torch.nn.", "torch.optim.")
MAX_ATTRIBUTION = 20_000  # characters of the data's ATTRIBUTION file kept with the model (licence, sources)


@dataclass(frozen=True)
class ModelDescription:
    """Everything needed to use a trained model, stored inside its checkpoint and every export."""

    image_size: int
    threshold: float = 0.5
    precision: str = "32-true"                    # the training precision, in Lightning's words
    preprocessing: dict[str, str] = field(default_factory=lambda: dict(PREPROCESSING))
    config: dict[str, Any] = field(default_factory=dict)   # the full resolved run config
    data: dict[str, Any] = field(default_factory=dict)     # fingerprint of the training data
    val_metrics: dict[str, float] = field(default_factory=dict)   # this checkpoint's own val scores
    best_metrics: dict[str, float] = field(default_factory=dict)  # best over the run so far
    test_metrics: dict[str, float] = field(default_factory=dict)  # filled when the model is evaluated
    lungseg_version: str = lungseg.__version__
    git_commit: str | None = None
    created: str = ""
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (the checkpoint loads with ``weights_only=True``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelDescription:
        """Rebuild from :meth:`to_dict`; unknown keys (a newer writer) are ignored."""
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        return cls(**known)


def git_commit(folder: Path | None = None) -> str | None:
    """The commit of the lungseg source tree (``+dirty`` with uncommitted changes); None outside a git checkout."""
    folder = folder or Path(lungseg.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def data_fingerprint(root: Path, files: Mapping[str, list[tuple[Path, Path]]]) -> dict[str, Any]:
    """Root name, pairs per split, a SHA-256 of the sorted relative file list (which files, not their bytes) and
    the text of the root's ATTRIBUTION file (licence, sources) when it has one."""
    digest = hashlib.sha256()
    for split in sorted(files):
        for image, mask in sorted(files[split]):
            for path in (image, mask):
                rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
                digest.update(f"{split}\t{rel.as_posix()}\n".encode())
    attribution = next((p for p in sorted(root.glob("ATTRIBUTION*")) if p.is_file()), None)
    return {"root_name": root.name, "counts": {s: len(p) for s, p in sorted(files.items())},
            "files_sha256": digest.hexdigest(),
            "attribution": attribution.read_text(errors="replace")[:MAX_ATTRIBUTION] if attribution else None}


def now() -> str:
    """Local time as an ISO string, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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
    """Refuse a config that names a class outside lungseg, torch.nn and torch.optim (it would run that code)."""
    foreign = [t for t in _targets(dict(config)) if not t.startswith(ALLOWED_TARGETS)]
    if foreign:
        raise CheckpointError(f"{source}: refused: it asks to build {', '.join(foreign)}, which is not a lungseg, "
                              "torch.nn or torch.optim class")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file's dict with ``weights_only=True``; refuse anything that is not a lungseg checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass ckpt_path=outputs/<run>/checkpoints/best.ckpt")
    if not zipfile.is_zipfile(path):  # zero bytes, random bytes, a cut-off file, an old-style pickle
        size = path.stat().st_size
        what = "an empty file" if size == 0 else f"{size:,} bytes that are no PyTorch checkpoint archive"
        raise CheckpointError(f"{path}: not a checkpoint ({what}: truncated or corrupt, or another kind of file); "
                              "use another checkpoint, e.g. last.ckpt, or retrain")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False: never repeat that advice
        raise CheckpointError(
            f"{path}: refused: it holds pickled Python objects, not only tensors, and loading them could run "
            "code. lungseg checkpoints load without pickle; use one written by lungseg.train") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, IndexError, KeyError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path}: not a checkpoint (a damaged archive, truncated or corrupt: {reason}); "
                              "use another checkpoint, e.g. last.ckpt, or retrain") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in ckpt or not isinstance(hparams.get("net"), dict):
        raise CheckpointError(f"{path}: not a lungseg checkpoint (no network config inside); "
                              "use a checkpoint written by lungseg.train")
    refuse_foreign_targets(hparams, path)
    refuse_non_finite(ckpt["state_dict"], path)
    return ckpt


def non_finite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf (parameters and buffers alike)."""
    return [name for name, t in tensors.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def refuse_non_finite(state_dict: Mapping[str, Any], path: str | Path) -> None:
    """Refuse weights or statistics (BatchNorm running_var, ...) that hold NaN or inf, naming them."""
    bad = non_finite_tensors(state_dict)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(f"{path}: refused: {len(bad)} tensor(s) hold NaN or inf ({shown}): the training had "
                              "diverged; use an earlier checkpoint or retrain with a lower optimizer.lr")


def describe(ckpt: Mapping[str, Any], path: str | Path, image_size: int | None = None) -> ModelDescription:
    """The checkpoint's description; ``image_size`` overrides it. A checkpoint written before lungseg recorded one
    needs ``image_size`` (its other fields then take their defaults)."""
    stored = ckpt.get(DESCRIPTION_KEY)
    if isinstance(stored, Mapping):
        description = ModelDescription.from_dict(stored)
        if image_size is not None:
            description = ModelDescription.from_dict({**description.to_dict(), "image_size": int(image_size)})
        return description
    if image_size is None:
        raise CheckpointError(f"{path}: written by an older lungseg, it does not record its input size; pass "
                              "image_size=<the data.image_size it was trained at> (e.g. image_size=256)")
    threshold = ckpt["hyper_parameters"].get("threshold", 0.5)
    return ModelDescription(image_size=int(image_size), threshold=float(threshold))


def record_test_metrics(path: str | Path, metrics: Mapping[str, float]) -> None:
    """Add a test evaluation's metrics to a checkpoint's description (rewritten atomically)."""
    ckpt = read_checkpoint(path)
    description = describe(ckpt, path)
    ckpt[DESCRIPTION_KEY] = {**description.to_dict(), "test_metrics": {k: float(v) for k, v in metrics.items()}}
    with atomic_open(path) as f:
        torch.save(ckpt, f)


@dataclass
class TrainedModel:
    """A trained network (fp32, eval mode, on the CPU) with its description and training hyper-parameters."""

    net: nn.Module
    description: ModelDescription
    hparams: dict[str, Any]

    @property
    def channels_last(self) -> bool:
        return bool(self.hparams.get("channels_last", True))


def build_net(net_config: Mapping[str, Any], source: str | Path) -> nn.Module:
    """The network of a config that names only lungseg, torch.nn and torch.optim classes."""
    refuse_foreign_targets(net_config, source)
    try:
        return instantiate(dict(net_config))
    except Exception as err:  # Hydra wraps whatever the constructor raised
        raise CheckpointError(f"{source}: its network config does not match this version of lungseg "
                              f"({str(err).splitlines()[0]})") from None


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> LungSegModule:
    """Rebuild the trained LungSegModule from a checkpoint alone, in eval mode."""
    return _module(read_checkpoint(path), path).to(map_location).eval()


def _module(ckpt: Mapping[str, Any], path: str | Path) -> LungSegModule:
    try:
        module = LungSegModule(**ckpt["hyper_parameters"])
        module.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: does not match this version of lungseg ({str(err).splitlines()[0]})") from None
    return module


def load_checkpoint(path: str | Path, image_size: int | None = None) -> TrainedModel:
    """The network, description and hyper-parameters of a checkpoint (``image_size`` overrides the recorded one)."""
    ckpt = read_checkpoint(path)
    module, description = _module(ckpt, path), describe(ckpt, path, image_size)
    return TrainedModel(module.net.float().to(memory_format=torch.contiguous_format).eval(), description,
                        dict(module.hparams))


class PretrainedLungModel(nn.Module, PyTorchModelHubMixin, library_name="lungseg",
                          tags=["image-segmentation", "chest-x-ray", "lung"]):
    """The folder format of ``huggingface_hub``'s PyTorchModelHubMixin: ``config.json`` (the network config, its
    memory format and the model's description), ``model.safetensors`` (weights only) and a ``README.md`` card."""

    def __init__(self, net: dict, channels_last: bool = True, description: dict | None = None) -> None:
        super().__init__()
        self.net_config = dict(net)
        self.net = build_net(net, "config.json")
        self.channels_last = channels_last
        self.description = description or {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        from lungseg.model_card import model_card

        return ModelCard(model_card(ModelDescription.from_dict(self.description)))

    @classmethod
    def _load_as_pickle(cls, *args: Any, **kwargs: Any) -> PretrainedLungModel:
        raise CheckpointError("refused: the model has no model.safetensors; lungseg loads weights without pickle")


def save_pretrained(model: TrainedModel, folder: str | Path) -> Path:
    """Write ``model`` as a pretrained folder (config.json, model.safetensors, README.md); returns the folder."""
    folder = Path(folder)
    pretrained = PretrainedLungModel(dict(model.hparams["net"]), model.channels_last, model.description.to_dict())
    pretrained.net.load_state_dict(model.net.state_dict())
    pretrained.save_pretrained(folder)
    return folder


def load_pretrained(source: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
                    local_files_only: bool = False) -> TrainedModel:
    """A pretrained folder, or a Hugging Face Hub id (``user/model``) downloaded into the Hub cache."""
    source = str(Path(source).expanduser()) if Path(source).expanduser().exists() else str(source)
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise CheckpointError(f"{source}: not a lungseg pretrained folder (no config.json); write one with "
                              "python -m lungseg.export ckpt_path=best.ckpt format=pretrained output=DIR")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the mixin prints where it loads from
            pretrained = PretrainedLungModel.from_pretrained(source, revision=revision, cache_dir=cache_dir,
                                                             local_files_only=local_files_only, strict=True)
    except (OSError, ValueError, HfHubHTTPError) as err:
        raise CheckpointError(f"{source}: cannot load this pretrained model ({str(err).splitlines()[0]}); pass a "
                              "folder written by lungseg.export format=pretrained or a Hub id holding one") from None
    except RuntimeError as err:  # strict loading: the weights do not fit the config
        raise CheckpointError(f"{source}: model.safetensors does not match config.json "
                              f"({str(err).splitlines()[0]})") from None
    if not pretrained.description.get("image_size"):
        raise CheckpointError(f"{source}: config.json has no description.image_size; re-export it with lungseg")
    description = ModelDescription.from_dict(pretrained.description)
    net = pretrained.net.float().to(memory_format=torch.contiguous_format).eval()
    return TrainedModel(net, description, {"net": pretrained.net_config, "channels_last": pretrained.channels_last,
                                           "threshold": description.threshold})
