"""BCE + soft Dice: hand-checked values, and it trains through the composed config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from lungseg.losses import BCEDiceLoss, soft_dice_loss
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


def test_bce_dice_and_cosine_train_from_config(compose_cfg, tiny_dataset: Path) -> None:
    cfg = compose_cfg(f"data.root={tiny_dataset}", *TINY, "loss=bce_dice", "scheduler=cosine",
                      "trainer.max_epochs=2", "test=false")
    assert cfg.scheduler.T_max == 2
    metrics = train(cfg)
    assert metrics["best/val_loss"] > 0 and "val/dice" in metrics
