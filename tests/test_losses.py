"""BCE + soft Dice and the cosine schedule: hand-checked values, through the composed config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn import functional as F

from lungseg.losses import BCEDiceLoss, soft_dice_loss
from lungseg.runs import events_dir
from lungseg.train import train
from tests.helpers import TINY


def test_soft_dice_on_hand_worked_masks() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1  # 8 lung pixels
    perfect = (target * 2 - 1) * 50  # logits that saturate to the target
    assert soft_dice_loss(perfect, target, smooth=0).item() == pytest.approx(0.0, abs=1e-6)
    half = torch.zeros(1, 1, 4, 4)  # p = 0.5 everywhere: Dice = 2*4 / (8 + 8) = 0.5
    assert soft_dice_loss(half, target, smooth=0).item() == pytest.approx(0.5)


def test_bce_dice_combines_its_parts() -> None:
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    assert BCEDiceLoss(dice_weight=0.0)(logits, target).item() == pytest.approx(bce.item())
    both = BCEDiceLoss(bce_weight=1.0, dice_weight=0.5)(logits, target)
    assert both.item() == pytest.approx(bce.item() + 0.5 * soft_dice_loss(logits, target).item())
    logits.requires_grad_(True)
    BCEDiceLoss()(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def _by_hand(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> float:
    """Mean BCE over pixels + dice_weight * (1 - (2 sum(p t) + 1) / (sum p + sum t + 1)) averaged
    over images."""
    p = torch.sigmoid(logits.double()).flatten(1)
    t = target.double().flatten(1)
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    dice = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return float(bce + dice_weight * (1 - dice).mean())


def test_loss_bce_dice_in_the_config_builds_a_module_that_uses_it(compose_cfg) -> None:
    # p = sigmoid(ln 3, 0, -ln 3, 0) = (3/4, 1/2, 1/4, 1/2) on truth (1, 1, 0, 0):
    # BCE = (2 ln(4/3) + 2 ln 2) / 4 = ln(8/3) / 2; soft Dice (smooth 1) = (2 * 5/4 + 1) / (2 + 2 +
    # 1) = 0.7.
    logits = torch.tensor([[[[math.log(3), 0.0], [-math.log(3), 0.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    bce = math.log(8 / 3) / 2
    assert instantiate(compose_cfg(*TINY).module).loss_fn(logits, target).item() == pytest.approx(
        bce
    )
    module = instantiate(compose_cfg(*TINY, "loss=bce_dice").module)
    assert module.loss_fn(logits, target).item() == pytest.approx(bce + 0.3)
    half = instantiate(compose_cfg(*TINY, "loss=bce_dice", "loss.dice_weight=0.5").module)
    assert half.loss_fn(logits, target).item() == pytest.approx(bce + 0.15)

    # ... and the training step computes it on the network's logits (eval mode: no noise or dropout
    # to draw).
    module = instantiate(compose_cfg(*TINY, "loss=bce_dice", "module.kernel_l2=0").module).eval()
    g = torch.Generator().manual_seed(0)
    images, masks = (
        torch.rand(3, 1, 16, 16, generator=g),
        (torch.rand(3, 1, 16, 16, generator=g) > 0.6).float(),
    )
    batch = {"image": images, "mask": masks}
    with torch.no_grad():
        logits = module(batch["image"])
        objective = module.training_step(batch, 0).item()
    assert objective == pytest.approx(_by_hand(logits, batch["mask"]), rel=1e-5)
    # the Dice term
    assert objective - F.binary_cross_entropy_with_logits(logits, batch["mask"]).item() > 0.1


def _lr_by_epoch(run: Path) -> list[float]:
    events = EventAccumulator(str(events_dir(run / "tensorboard")), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars("lr-Adam")]


def test_scheduler_cosine_anneals_the_lr_once_per_epoch_over_max_epochs(
    compose_cfg, tiny_dataset: Path, tmp_path: Path
) -> None:
    # CosineAnnealingLR(T_max = max_epochs, eta_min = 1e-6), stepped at each epoch's end: epoch e
    # trains at eta_min + (lr - eta_min) * (1 + cos(pi * e / T_max)) / 2. (With loss=bce_dice: the
    # two knobs train together.)
    lr, epochs, eta_min = 1e-2, 4, 1e-6
    cfg = compose_cfg(
        f"data.root={tiny_dataset}",
        *TINY,
        "loss=bce_dice",
        "scheduler=cosine",
        f"optimizer.lr={lr}",
        f"trainer.max_epochs={epochs}",
        "test=false",
        "~callbacks.early_stopping",
        "~callbacks.prediction_grid",
    )
    assert cfg.scheduler.T_max == epochs
    train(cfg)
    expected = [
        eta_min + (lr - eta_min) * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)
    ]
    assert _lr_by_epoch(tmp_path / "run") == pytest.approx(expected, rel=1e-6)
