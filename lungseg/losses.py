"""Losses beyond plain BCE: BCE + soft Dice, which weighs the lung boundary more than pixel-wise BCE
does."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) and target, per image, averaged over the batch."""
    probs = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    intersection = (probs * target).sum(1)
    dice = (2 * intersection + smooth) / (probs.sum(1) + target.sum(1) + smooth)
    return (1 - dice).mean()


class BCEDiceLoss(nn.Module):
    """``bce_weight * BCE(logits) + dice_weight * (1 - soft Dice)``; stable under mixed precision
    (fp32 inside)."""

    def __init__(
        self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0
    ) -> None:
        super().__init__()
        self.bce_weight, self.dice_weight, self.smooth = bce_weight, dice_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return self.bce_weight * bce + self.dice_weight * soft_dice_loss(
            logits, target, self.smooth
        )
