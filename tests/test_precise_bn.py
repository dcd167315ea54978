"""PreciseBatchNorm: BatchNorm statistics recomputed on clean training images before each
validation."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from lungseg.data.datamodule import LungDataModule
from lungseg.models.unet import UNet
from lungseg.training.callbacks import PreciseBatchNorm
from lungseg.training.module import LungSegModule
from tests.helpers import LOSS, OPT


def _setup(tiny_dataset: Path) -> tuple[LungSegModule, SimpleNamespace]:
    torch.manual_seed(0)
    net = {
        "_target_": "lungseg.models.unet.UNet",
        "base_filters": 4,
        "depth": 2,
        "noise_std": 0.5,
        "dropout": 0.3,
    }
    module = LungSegModule(net=net, optimizer=OPT, loss=LOSS)
    dm = LungDataModule(str(tiny_dataset), image_size=32, batch_size=4)
    dm.setup("fit")
    trainer = SimpleNamespace(
        datamodule=dm, precision_plugin=SimpleNamespace(forward_context=nullcontext)
    )
    return module, trainer


def _norms(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def _scramble(module: LungSegModule, seed: int) -> None:
    """Fill the running statistics the way training does: noisy inputs in train mode."""
    torch.manual_seed(seed)
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(torch.rand(4, 1, 32, 32) * (1 + seed))


def test_statistics_are_those_of_clean_images_whatever_came_before(tiny_dataset: Path) -> None:
    module, trainer = _setup(tiny_dataset)
    assert isinstance(module.net, UNet)
    other = copy.deepcopy(module)
    _scramble(module, 1)
    _scramble(other, 2)
    assert not torch.equal(_norms(module)[0].running_mean, _norms(other)[0].running_mean)

    callback = PreciseBatchNorm()
    callback.recompute(trainer, module)
    callback.recompute(trainer, other)
    for a, b in zip(_norms(module), _norms(other), strict=True):  # the past no longer matters
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(
            a.running_var, b.running_var
        )
    assert all(m.training for m in module.modules())  # modes restored (train here) ...
    assert all(m.momentum == 0.1 for m in _norms(module))  # ... and the momentum

    # The first BatchNorm sees ReLU(conv(image)) of the 8 clean train images in 2 batches of 4: its
    # statistics are the exact mean over batches of the batch mean and unbiased variance (no noise,
    # no augmentation).
    first = _norms(module)[0]
    seen: list[torch.Tensor] = []
    handle = first.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach()))
    dataset = trainer.datamodule.dataset("train")
    images = torch.stack([dataset.item(i, augment=False)["image"] for i in range(len(dataset))])
    module.eval()
    with torch.no_grad():
        for batch in images.split(4):
            module(batch)
    handle.remove()
    means = torch.stack([x.mean((0, 2, 3)) for x in seen])
    variances = torch.stack([x.var((0, 2, 3), unbiased=True) for x in seen])
    torch.testing.assert_close(first.running_mean, means.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first.running_var, variances.mean(0), rtol=1e-4, atol=1e-5)


def test_runs_only_before_validation_in_fit(tiny_dataset: Path) -> None:
    module, trainer = _setup(tiny_dataset)
    _scramble(module, 1)
    before = _norms(module)[0].running_mean.clone()
    callback = PreciseBatchNorm()
    for fn, sanity in (("validate", False), ("fit", True)):
        trainer.state, trainer.sanity_checking = SimpleNamespace(fn=fn), sanity
        callback.on_validation_epoch_start(trainer, module)
        assert torch.equal(_norms(module)[0].running_mean, before)
    trainer.state, trainer.sanity_checking = SimpleNamespace(fn="fit"), False
    callback.on_validation_epoch_start(trainer, module)
    assert not torch.equal(_norms(module)[0].running_mean, before)
