"""Callbacks of our own: a TensorBoard sheet of validation predictions each epoch."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


def overlay(image: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """RGB (3, H, W) of the image with errors coloured: green true positive, red false positive, blue missed."""
    rgb = image.expand(3, -1, -1).clone() * 0.7
    tp, fp, fn = (truth * pred)[0], ((1 - truth) * pred)[0], (truth * (1 - pred))[0]
    rgb[1] += 0.3 * tp
    rgb[0] += 0.3 * fp + 0.3 * (fp > 0)
    rgb[2] += 0.3 * fn + 0.3 * (fn > 0)
    return rgb.clamp(0, 1)


def prediction_sheet(images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor,
                     threshold: float = 0.5) -> torch.Tensor:
    """One row per image: input, true mask, predicted mask, overlay; returns an RGB (3, H*n, W*4) tensor."""
    rows = []
    for image, truth, prob in zip(images, masks, probs, strict=True):
        pred = (prob >= threshold).float()
        tiles = [image.expand(3, -1, -1), truth.expand(3, -1, -1), pred.expand(3, -1, -1),
                 overlay(image, truth, pred)]
        rows.append(torch.cat(tiles, dim=2))
    return torch.cat(rows, dim=1)


class PredictionGrid(L.Callback):
    """After each validation epoch, log input / truth / prediction / overlay of fixed validation images."""

    def __init__(self, n_images: int = 4) -> None:
        self.n_images = n_images

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if trainer.sanity_checking or not loggers or trainer.datamodule is None:
            return
        dataset = trainer.datamodule.dataset("val")
        items = [dataset[i] for i in range(min(self.n_images, len(dataset)))]
        if not items:
            return
        images = torch.stack([it["image"] for it in items])
        masks = torch.stack([it["mask"] for it in items])
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            probs = torch.sigmoid(pl_module(images.to(pl_module.device)).float()).cpu()
        pl_module.train(was_training)
        sheet = prediction_sheet(images, masks, probs, pl_module.hparams.get("threshold", 0.5))
        for lg in loggers:
            lg.experiment.add_image("val/predictions", sheet, global_step=trainer.global_step)
