"""The trained model as a thing you hand over: what a checkpoint records about itself, and the one safe way to
read it back (tensors only, known classes only, clear errors)."""

from __future__ import annotations

import contextlib
import io
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from huggingface_hub.errors import HfHubHTTPError
from hydra.utils import instantiate
from safetensors import SafetensorError
from torch import nn

from lungseg.artifacts.description import DESCRIPTION_KEY, ModelDescription
from lungseg.artifacts.store import file_sha256, installed_model
from lungseg.atomic import save_torch, write_text
from lungseg.errors import CheckpointError
from lungseg.runtime import use_channels_last
from lungseg.training.module import LungSegModule

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
    save_torch(ckpt, path)


@dataclass
class TrainedModel:
    """A trained network (fp32, eval mode, on the CPU) with its description and training hyper-parameters."""

    net: nn.Module
    description: ModelDescription
    hparams: dict[str, Any]

    @property
    def channels_last(self) -> bool:
        """The inference layout: as trained when set, channels_last for ``auto`` (faster on every device measured)."""
        return use_channels_last(self.hparams.get("channels_last", True), training=False)


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
        from lungseg.artifacts.model_card import model_card

        return ModelCard(model_card(ModelDescription.from_dict(self.description)))

    def _save_pretrained(self, save_directory: Path) -> None:
        """The weights, then the model card recording their SHA-256 (``lungseg-model install`` checks it).
        Written here, after the weights: the mixin writes its own card only where none exists yet, and a card
        left from an earlier save would name other weights."""
        from lungseg.artifacts.model_card import WEIGHTS_FILE, model_card

        super()._save_pretrained(save_directory)
        card = model_card(ModelDescription.from_dict(self.description), file_sha256(save_directory / WEIGHTS_FILE))
        write_text(save_directory / "README.md", card)

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
    """A pretrained folder, a model installed by ``lungseg-model install`` (its bare name, checked against the
    SHA-256 its card records), or a Hugging Face Hub id (``user/model``) downloaded into the Hub cache."""
    source = str(Path(source).expanduser()) if Path(source).expanduser().exists() else str(source)
    source = str(installed_model(source) or source)
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise CheckpointError(f"{source}: not a lungseg pretrained folder (no config.json); write one with "
                              "python -m lungseg.export ckpt_path=best.ckpt format=pretrained output=DIR")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the mixin prints where it loads from
            pretrained = PretrainedLungModel.from_pretrained(source, revision=revision, cache_dir=cache_dir,
                                                             local_files_only=local_files_only, strict=True)
    except (OSError, ValueError, HfHubHTTPError) as err:
        raise CheckpointError(f"{source}: cannot load this pretrained model ({str(err).splitlines()[0]}); pass a "
                              "folder written by lungseg.export format=pretrained, the name of a model installed by "
                              "lungseg-model install, or a Hub id holding one") from None
    except SafetensorError as err:  # a truncated or corrupt weights file
        raise CheckpointError(f"{Path(source) / 'model.safetensors'}: not a readable weights file (truncated or "
                              f"corrupt: {str(err).splitlines()[0]}); export the folder again") from None
    except RuntimeError as err:  # strict loading: the weights do not fit the config
        raise CheckpointError(f"{source}: model.safetensors does not match config.json "
                              f"({str(err).splitlines()[0]})") from None
    if not pretrained.description.get("image_size"):
        raise CheckpointError(f"{source}: config.json has no description.image_size; re-export it with lungseg")
    description = ModelDescription.from_dict(pretrained.description)
    net = pretrained.net.float().to(memory_format=torch.contiguous_format).eval()
    return TrainedModel(net, description, {"net": pretrained.net_config, "channels_last": pretrained.channels_last,
                                           "threshold": description.threshold})
