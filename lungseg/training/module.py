"""LungSegModule: the U-Net, its loss (BCE on logits + Keras-style L2 on conv kernels), optimiser
and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanMetric

from lungseg.artifacts.checkpoint import read_checkpoint
from lungseg.errors import CheckpointError
from lungseg.metrics.pixels import confusion_matrix, flatten, per_image_overlap, pixel_metrics
from lungseg.runtime import accelerator_device_type, use_channels_last

STAGES = ("train", "val", "test")


def _plain(cfg: Any) -> Any:
    """DictConfig -> plain dict (checkpoints then hold only primitives and load with
    weights_only)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def conv_kernels(net: nn.Module) -> list[torch.Tensor]:
    """The weight tensors that Keras' ``kernel_regularizer`` covers: conv kernels, not biases or
    BatchNorm."""
    return [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def match_state_layout(optimizer: torch.optim.Optimizer) -> int:
    """Give every optimiser state tensor its parameter's memory format; how many were converted.
    torch's fused CPU Adam reads state and gradients as laid out like the parameter and silently
    updates the wrong elements otherwise (a checkpoint trained channels_last, resumed in NCHW)."""
    converted = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (
                    torch.is_tensor(value)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
                    converted += 1
    return converted


class LungSegModule(L.LightningModule):
    """Trains ``net`` on image/mask batches and logs pooled pixel metrics under ``train/``,
    ``val/``, ``test/``.

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
        channels_last: bool | str = "auto",
        monitor: str = "val/loss",
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {
                "net": _plain(net),
                "optimizer": _plain(optimizer),
                "loss": _plain(loss),
                "scheduler": _plain(scheduler),
                "kernel_l2": kernel_l2,
                "threshold": threshold,
                "channels_last": channels_last,
                "monitor": monitor,
                "compile": compile,
            }
        )
        self.net: nn.Module = instantiate(self.hparams.net)
        self.loss_fn: nn.Module = instantiate(self.hparams.loss)
        # ModuleDict keys cannot be "train" (nn.Module.train), hence the "_metrics" suffix.
        self.metrics = nn.ModuleDict(
            {f"{s}_metrics": pixel_metrics(f"{s}/", threshold) for s in STAGES}
        )
        # The epoch loss as a metric: its sum and count are summed over DDP ranks, so the mean is
        # over every image exactly (Lightning's sync_dist would average the ranks' means, wrong when
        # they hold different counts).
        self.losses = nn.ModuleDict({f"{s}_loss": MeanMetric() for s in STAGES})
        # The mean of per-image Dice (val/test): every image weighs the same, small lungs as much as
        # large ones.
        self.dice_per_image = nn.ModuleDict({f"{s}_dice": MeanMetric() for s in ("val", "test")})
        self.test_confusion = confusion_matrix(threshold)
        # the layout for training here (setup() redecides it for the Trainer's device and stage)
        self._channels_last = False
        self._set_layout(use_channels_last(channels_last, accelerator_device_type("auto")))
        # torch.compile'd forward kept outside the module tree, so checkpoints keep the plain net's
        # keys
        object.__setattr__(self, "_run_net", torch.compile(self.net) if compile else self.net)

    def _set_layout(self, channels_last: bool) -> None:
        if channels_last != self._channels_last:
            self.net.to(
                memory_format=torch.channels_last if channels_last else torch.contiguous_format
            )
            self._channels_last = channels_last

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return (
            images.contiguous(memory_format=torch.channels_last) if self._channels_last else images
        )

    def setup(self, stage: str) -> None:
        """Lay the network out for the Trainer's device and stage (``channels_last: auto``: NCHW to
        train on a CPU without AVX-512, channels_last elsewhere;
        ``lungseg.runtime.use_channels_last``)."""
        self._set_layout(
            use_channels_last(
                self.hparams.channels_last,
                self.trainer.strategy.root_device.type,
                training=stage == "fit",
            )
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 1, H, W) in [0, 1] -> logits (N, 1, H, W)."""
        return self._run_net(self._layout(images))

    def forward_with_aux(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the net's deep-supervision logits (coarse to fine; none without aux heads)."""
        return self.net.forward_with_aux(self._layout(images))

    def deep_supervised(
        self, loss: torch.Tensor, aux: list[torch.Tensor], masks: torch.Tensor
    ) -> torch.Tensor:
        """The main loss (weight 1) and each aux head's loss on its logits upsampled to the mask,
        weighted 1/2 at the finest aux level, 1/4 at the next, ...; the weights normalised to sum 1
        (as nnU-Net)."""
        weights = [0.5 ** (len(aux) - i) for i in range(len(aux))]  # aux is deepest first
        for w, a in zip(weights, aux, strict=True):
            up = F.interpolate(
                a.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False
            )
            loss = loss + w * self.loss_fn(up, masks)
        return loss / (1.0 + sum(weights))

    def l2_penalty(self) -> torch.Tensor:
        """Keras ``regularizers.L2(l)``: ``l * sum(w**2)`` over conv kernels, added to the training
        loss."""
        return self.hparams.kernel_l2 * sum(w.float().pow(2).sum() for w in conv_kernels(self.net))

    def add_l2_gradient(self, scale: float = 1.0) -> None:
        """Add the gradient of :meth:`l2_penalty`, ``2 * kernel_l2 * w``, to each conv kernel's
        gradient (times ``scale`` while a GradScaler's gradients are still scaled): what
        backpropagating the term would add, as one pass per kernel instead of an autograd graph over
        every kernel."""
        alpha = 2 * self.hparams.kernel_l2 * scale
        with torch.no_grad():
            for w in conv_kernels(self.net):
                if w.grad is None:
                    w.grad = w * alpha
                else:
                    w.grad.add_(w, alpha=alpha)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The L2 term's gradient, added where Lightning has the whole step's gradients (after
        accumulation and the DDP all-reduce, before clipping), so the optimiser sees exactly what
        backpropagating the term gives."""
        if self.hparams.kernel_l2:
            self.add_l2_gradient(self._grad_scale(optimizer))

    def _grad_scale(self, optimizer: torch.optim.Optimizer) -> float:
        """The factor the gradients still carry in :meth:`on_before_optimizer_step`: a GradScaler's
        scale where the optimiser unscales them itself in its step (fused Adam under 16-mixed), else
        1."""
        scaler = (
            getattr(self.trainer.precision_plugin, "scaler", None)
            if self._trainer is not None
            else None
        )
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            return float(scaler.get_scale())
        return 1.0

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
        self.log(
            f"{stage}/loss",
            epoch_loss,
            on_step=False,
            on_epoch=True,
            prog_bar=stage != "test",
            batch_size=n,
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=n)
        if stage != "train":
            per_image = self.dice_per_image[f"{stage}_dice"]
            per_image.update(
                per_image_overlap(probs, batch["mask"], self.hparams.threshold)["dice"]
            )
            self.log(
                f"{stage}/dice_per_image", per_image, on_step=False, on_epoch=True, batch_size=n
            )
        # train/loss stays the main head's, comparable with val/loss; the objective adds the aux
        # heads
        if aux:
            loss = self.deep_supervised(loss, aux, batch["mask"])
            self.log(
                "train/supervised_loss",
                loss,
                on_step=False,
                on_epoch=True,
                batch_size=n,
                sync_dist=True,
            )
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if self.hparams.kernel_l2:
            # The returned loss is the Keras objective's value, BCE + L2; the L2 term's gradient is
            # added by on_before_optimizer_step, so its value is computed here without an autograd
            # graph.
            with torch.no_grad():
                penalty = self.l2_penalty()
            self.log(
                "train/l2",
                penalty,
                on_step=False,
                on_epoch=True,
                batch_size=batch["image"].shape[0],
                sync_dist=True,
            )
            loss = loss + penalty
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_start(self) -> None:
        """Optimiser state restored from a checkpoint takes the parameters' memory format (see
        :func:`match_state_layout`)."""
        for optimizer in self.trainer.optimizers:
            match_state_layout(optimizer)

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        # A plateau schedule reads the monitored val metric, so it steps only on epochs that
        # validate (trainer.check_val_every_n_epoch): its patience counts validations, as Keras'
        # does.
        every = self.trainer.check_val_every_n_epoch if self._trainer is not None else 1
        plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": self.hparams.monitor,
                "interval": "epoch",
                "frequency": (every or 1) if plateau else 1,
            },
        }


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> LungSegModule:
    """Rebuild the trained LungSegModule (loss, metrics and all) from a checkpoint alone, in eval
    mode: for training's tools and tests; inference builds only the network
    (``lungseg.artifacts.checkpoint``)."""
    ckpt = read_checkpoint(path)
    try:
        module = LungSegModule(**ckpt["hyper_parameters"])
        module.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError, KeyError) as err:
        raise CheckpointError(
            f"{path}: does not match this version of lungseg ({str(err).splitlines()[0]})"
        ) from None
    return module.to(map_location).eval()
