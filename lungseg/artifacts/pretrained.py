"""Pretrained folders, the model as a thing you hand over: ``config.json`` (the network config and
the model's description), ``model.safetensors`` (weights only, no pickle) and a ``README.md`` card
that records the weights' SHA-256. Written by ``save_pretrained``, read by ``load_pretrained`` (a
folder, a Hub id, or the bare name of a model in the local store), installed for offline use by
``install`` (``lungseg-model install``).

The store is ``$LUNGSEG_HOME/models/<name>`` (``LUNGSEG_HOME`` defaults to ``~/.cache/lungseg``).
The hash guards against a damaged or altered weights file; whoever can rewrite the card can rewrite
the hash, so install models from a source you trust.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from huggingface_hub.errors import HfHubHTTPError
from safetensors import SafetensorError
from torch import nn

from lungseg.artifacts.checkpoint import TrainedModel, build_net
from lungseg.artifacts.description import ModelDescription
from lungseg.artifacts.model_card import WEIGHTS_FILE
from lungseg.artifacts.store import (
    EXPORT_HINT,
    check_name,
    file_sha256,
    installed_model,
    stage_folder,
    store_dir,
    verify_folder,
)
from lungseg.atomic import atomic_dir, output_lock, write_text
from lungseg.errors import CheckpointError, LungsegError


def install(source: str | Path, name: str | None = None, force: bool = False) -> Path:
    """Install a pretrained folder or a zip of one as ``name`` (default: the folder's or the zip's
    name): staged beside the store, checked (hash, then a load), then renamed into place whole.
    Returns the installed folder."""
    source = Path(source).expanduser()
    if not (source.is_dir() or (source.is_file() and zipfile.is_zipfile(source))):
        raise LungsegError(
            f"{source}: no such folder or zip; pass a folder written by "
            f"{EXPORT_HINT} or a zip of one"
        )
    name = check_name(name or (source.name if source.is_dir() else source.stem))
    target = store_dir() / name
    if target.exists() and not force:
        raise LungsegError(f"{name}: already installed at {target}; pass --force to replace it")
    with output_lock(target, "name"), atomic_dir(target) as staging:
        staging.rmdir()  # stage_folder makes it again from the source's files
        verify_folder(staging, stage_folder(source, staging))
        load_pretrained(staging)  # the config builds and the weights fit it, before any swap
    return target


class PretrainedLungModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="lungseg",
    tags=["image-segmentation", "chest-x-ray", "lung"],
):
    """The folder format of ``huggingface_hub``'s PyTorchModelHubMixin: ``config.json`` (the network
    config, its memory format and the model's description), ``model.safetensors`` (weights only) and
    a ``README.md`` card."""

    def __init__(
        self, net: dict, channels_last: bool = True, description: dict | None = None
    ) -> None:
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
        """The weights, then the model card recording their SHA-256 (``lungseg-model install``
        checks it). Written here, after the weights: the mixin writes its own card only where none
        exists yet, and a card left from an earlier save would name other weights."""
        from lungseg.artifacts.model_card import model_card

        super()._save_pretrained(save_directory)
        card = model_card(
            ModelDescription.from_dict(self.description), file_sha256(save_directory / WEIGHTS_FILE)
        )
        write_text(save_directory / "README.md", card)

    @classmethod
    def _load_as_pickle(cls, *args: Any, **kwargs: Any) -> PretrainedLungModel:
        raise CheckpointError(
            "refused: the model has no model.safetensors; lungseg loads weights without pickle"
        )


def save_pretrained(model: TrainedModel, folder: str | Path) -> Path:
    """Write ``model`` as a pretrained folder (config.json, model.safetensors, README.md); returns
    the folder."""
    folder = Path(folder)
    pretrained = PretrainedLungModel(
        dict(model.hparams["net"]), model.channels_last, model.description.to_dict()
    )
    pretrained.net.load_state_dict(model.net.state_dict())
    pretrained.save_pretrained(folder)
    return folder


def load_pretrained(
    source: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> TrainedModel:
    """A pretrained folder, a model installed by ``lungseg-model install`` (its bare name, checked
    against the SHA-256 its card records), or a Hugging Face Hub id (``user/model``) downloaded into
    the Hub cache."""
    source = str(Path(source).expanduser()) if Path(source).expanduser().exists() else str(source)
    source = str(installed_model(source) or source)
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise CheckpointError(
            f"{source}: not a lungseg pretrained folder (no config.json); write one with "
            "python -m lungseg.export ckpt_path=best.ckpt format=pretrained output=DIR"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the mixin prints where it loads from
            pretrained = PretrainedLungModel.from_pretrained(
                source,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                strict=True,
            )
    except (OSError, ValueError, HfHubHTTPError) as err:
        raise CheckpointError(
            f"{source}: cannot load this pretrained model ({str(err).splitlines()[0]}); pass a "
            "folder written by lungseg.export format=pretrained, the name of a model installed by "
            "lungseg-model install, or a Hub id holding one"
        ) from None
    except SafetensorError as err:  # a truncated or corrupt weights file
        raise CheckpointError(
            f"{Path(source) / 'model.safetensors'}: not a readable weights file (truncated or "
            f"corrupt: {str(err).splitlines()[0]}); export the folder again"
        ) from None
    except RuntimeError as err:  # strict loading: the weights do not fit the config
        raise CheckpointError(
            f"{source}: model.safetensors does not match config.json ({str(err).splitlines()[0]})"
        ) from None
    if not pretrained.description.get("image_size"):
        raise CheckpointError(
            f"{source}: config.json has no description.image_size; re-export it with lungseg"
        )
    description = ModelDescription.from_dict(pretrained.description)
    net = pretrained.net.float().to(memory_format=torch.contiguous_format).eval()
    return TrainedModel(
        net,
        description,
        {
            "net": pretrained.net_config,
            "channels_last": pretrained.channels_last,
            "threshold": description.threshold,
        },
    )
