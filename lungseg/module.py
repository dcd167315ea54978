"""LungSegModule: the U-Net, its loss (BCE on logits + Keras-style L2 on conv kernels), optimiser and metrics."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanMetric

from lungseg.metrics.pixels import confusion_matrix, flatten, per_image_overlap, pixel_metrics

STAGES = ("train", "val", "test")


def _plain(cfg: Any) -> Any:
    """DictConfig -> plain dict (checkpoints then hold only primitives and load with weights_only)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def conv_kernels(net: nn.Module) -> list[torch.Tensor]:
    """The weight tensors that Keras' ``kernel_regularizer`` covers: conv kernels, not biases or BatchNorm."""
    return [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


class LungSegModule(L.LightningModule):
    """Trains ``net`` on image/mask batches and logs pooled pixel metrics under ``train/``, ``val/``, ``test/``.

    Every argument is a plain config (``_target_`` dicts), saved with the checkpoint, so a
    checkpoint alone rebuilds the model: ``LungSegModule.load_from_checkpoint(path)``.
    """

    def __init__(
        self,
        net: dict,
        optimizer: dict,
        loss: dict,
        scheduler: dict | None = None,
        kernel_l2: float = 0.01,
        threshold: float = 0.5,
        channels_last: bool = True,
        monitor: str = "val/loss",
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {"net": _plain(net), "optimizer": _plain(optimizer), "loss": _plain(loss),
             "scheduler": _plain(scheduler), "kernel_l2": kernel_l2, "threshold": threshold,
             "channels_last": channels_last, "monitor": monitor, "compile": compile}
        )
        self.net: nn.Module = instantiate(self.hparams.net)
        self.loss_fn: nn.Module = instantiate(self.hparams.loss)
        # ModuleDict keys cannot be "train" (nn.Module.train), hence the "_metrics" suffix.
        self.metrics = nn.ModuleDict({f"{s}_metrics": pixel_metrics(f"{s}/", threshold) for s in STAGES})
        # The epoch loss as a metric: its sum and count are summed over DDP ranks, so the mean is over every image
        # exactly (Lightning's sync_dist would average the ranks' means, wrong when they hold different counts).
        self.losses = nn.ModuleDict({f"{s}_loss": MeanMetric() for s in STAGES})
        # The mean of per-image Dice (val/test): every image weighs the same, small lungs as much as large ones.
        self.dice_per_image = nn.ModuleDict({f"{s}_dice": MeanMetric() for s in ("val", "test")})
        self.test_confusion = confusion_matrix(threshold)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        # torch.compile'd forward kept outside the module tree, so checkpoints keep the plain net's keys
        object.__setattr__(self, "_run_net", torch.compile(self.net) if compile else self.net)

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 1, H, W) in [0, 1] -> logits (N, 1, H, W)."""
        return self._run_net(self._layout(images))

    def forward_with_aux(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the net's deep-supervision logits (coarse to fine; none without aux heads)."""
        return self.net.forward_with_aux(self._layout(images))

    def deep_supervised(self, loss: torch.Tensor, aux: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        """The main loss (weight 1) and each aux head's loss on its logits upsampled to the mask, weighted
        1/2 at the finest aux level, 1/4 at the next, ...; the weights normalised to sum 1 (as nnU-Net)."""
        weights = [0.5 ** (len(aux) - i) for i in range(len(aux))]  # aux is deepest first
        for w, a in zip(weights, aux, strict=True):
            up = F.interpolate(a.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
            loss = loss + w * self.loss_fn(up, masks)
        return loss / (1.0 + sum(weights))

    def l2_penalty(self) -> torch.Tensor:
        """Keras ``regularizers.L2(l)``: ``l * sum(w**2)`` over conv kernels, added to the training loss."""
        return self.hparams.kernel_l2 * sum(w.float().pow(2).sum() for w in conv_kernels(self.net))

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        aux: list[torch.Tensor] = []
        if stage == "train" and getattr(self.net, "deep_supervision", False):
            logits, aux = self.forward_with_aux(batch["image"])
        else:
            logits = self(batch["image"])
        loss = self.loss_fn(logits.float(), batch["mask"])
        probs = torch.sigmoid(logits.float())
        preds, target = flatten(probs, batch["mask"])
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(preds, target)
        if stage == "test":
            self.test_confusion.update(preds, target)
        n = batch["image"].shape[0]
        epoch_loss = self.losses[f"{stage}_loss"]
        epoch_loss.update(loss.detach(), weight=n)
        self.log(f"{stage}/loss", epoch_loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=n)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=n)
        if stage != "train":
            per_image = self.dice_per_image[f"{stage}_dice"]
            per_image.update(per_image_overlap(probs, batch["mask"], self.hparams.threshold)["dice"])
            self.log(f"{stage}/dice_per_image", per_image, on_step=False, on_epoch=True, batch_size=n)
        if aux:  # train/loss stays the main head's, comparable with val/loss; the objective adds the aux heads
            loss = self.deep_supervised(loss, aux, batch["mask"])
            self.log("train/supervised_loss", loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if self.hparams.kernel_l2:
            penalty = self.l2_penalty()
            self.log("train/l2", penalty, on_step=False, on_epoch=True, batch_size=batch["image"].shape[0],
                     sync_dist=True)
            loss = loss + penalty
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        # A plateau schedule reads the monitored val metric, so it steps only on epochs that validate
        # (trainer.check_val_every_n_epoch): its patience counts validations, as Keras' does.
        every = self.trainer.check_val_every_n_epoch if self._trainer is not None else 1
        plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": self.hparams.monitor, "interval": "epoch",
                                 "frequency": (every or 1) if plateau else 1}}
