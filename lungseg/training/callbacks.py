"""Training-loop extensions of our own: the TensorBoard prediction sheet, best-metric tracking, a
stop on NaN/inf, precise BatchNorm statistics, random state and the model's description in
checkpoints, and atomic checkpoint writes."""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lungseg.artifacts.checkpoint import non_finite_tensors
from lungseg.artifacts.description import (
    DESCRIPTION_KEY,
    ModelDescription,
    data_fingerprint,
    git_commit,
    now,
)
from lungseg.atomic import save_torch
from lungseg.data.datamodule import process_rank, train_share
from lungseg.data.layout import SPLITS, find_pairs
from lungseg.errors import LungsegError
from lungseg.inference.overlay import overlay, to_uint8

log = logging.getLogger(__name__)


class TrainingDivergedError(LungsegError):
    """The loss or the weights became NaN or infinite."""


def prediction_sheet(
    images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor, threshold: float = 0.5
) -> torch.Tensor:
    """One row per image: input, true mask, predicted mask, overlay (green hit, red false positive,
    blue missed); returns an RGB (3, H*n, W*4) tensor."""
    rows = []
    for image, truth, prob in zip(images, masks, probs, strict=True):
        pred = (prob >= threshold).float()
        coloured = overlay(to_uint8(image[0].numpy()), pred[0].numpy(), truth[0].numpy())
        tiles = [
            image.expand(3, -1, -1),
            truth.expand(3, -1, -1),
            pred.expand(3, -1, -1),
            torch.from_numpy(coloured).permute(2, 0, 1).float() / 255,
        ]
        rows.append(torch.cat(tiles, dim=2))
    return torch.cat(rows, dim=1)


class PredictionGrid(L.Callback):
    """After each validation epoch, log input / truth / prediction / overlay of fixed validation
    images."""

    def __init__(self, n_images: int = 4) -> None:
        self.n_images = n_images

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if (
            trainer.sanity_checking
            or not loggers
            or trainer.datamodule is None
            or not trainer.is_global_zero
        ):
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


class EpochLog(L.Callback):
    """One log line per epoch (losses, val Dice, learning rate, time) when the output is not a
    terminal, where the progress bar shows nothing: a run written to a file or a CI log still shows
    its progress."""

    def __init__(self, always: bool = False) -> None:
        self.always = always
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not (self.always or not sys.stdout.isatty()):
            return
        metrics = trainer.callback_metrics
        parts = [
            f"{k} {float(metrics[k]):.4f}"
            for k in ("train/loss", "val/loss", "val/dice")
            if k in metrics
        ]
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        log.info(
            "epoch %d/%d: %s, lr %.3g (%.1f s)",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            ", ".join(parts),
            lr,
            time.perf_counter() - self._start,
        )


class BestMetrics(L.Callback):
    """The best value over the run of some validation metrics (``best/val_dice`` ...), kept across
    resumes."""

    def __init__(self, track: dict[str, str] | None = None) -> None:
        self.track = dict(track or {"val/dice": "max", "val/loss": "min"})
        self.best: dict[str, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name, mode in self.track.items():
            value = trainer.callback_metrics.get(name)
            if value is None or not math.isfinite(float(value)):
                continue
            old = self.best.get(name)
            if old is None or (float(value) > old if mode == "max" else float(value) < old):
                self.best[name] = float(value)

    def results(self) -> dict[str, float]:
        """``{"best/val_dice": ..., ...}`` for the metrics seen so far."""
        return {"best/" + name.replace("/", "_"): value for name, value in self.best.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", {}))


class PreciseBatchNorm(L.Callback):
    """Before each validation in fit, recompute every BatchNorm's running statistics on training
    images as evaluation sees them: un-augmented, with the input noise and dropout off (Wu &
    Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

    The running averages gathered during training describe *noisy* inputs: GaussianNoise(0.05)
    before the first convolution inflates its variance, so eval-mode BatchNorm mis-scales every
    later layer (what that costs: docs/training.md). Deterministic (no random draws: one fixed-seed
    sample, shuffled so a folder grouped by source still gives mixed batches). Under DDP each rank
    runs its share of the sample and the statistics are averaged over all ranks (all-reduce), so
    they are identical on every rank. The checkpoints keep the recomputed statistics.
    """

    def __init__(self, max_images: int = 512) -> None:
        self.max_images = max_images

    @torch.no_grad()
    def recompute(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reset the statistics and average them exactly (momentum None) over up to ``max_images``
        train images."""
        norms = [
            m for m in pl_module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        dataset = trainer.datamodule.dataset("train")
        if not norms or len(dataset) == 0:
            return
        modes = {m: m.training for m in pl_module.modules()}
        momenta = [m.momentum for m in norms]
        pl_module.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        n = min(len(dataset), self.max_images)
        rank, world = process_rank()
        # the first of this rank's training share (the items it has decoded and cached): together,
        if n >= world:
            # over the ranks, the first n of the one fixed random order of the training items
            picks = train_share(len(dataset), rank, world)[: len(range(rank, n, world))].tolist()
        else:
            picks = train_share(len(dataset), 0, 1)[:n].tolist()
        batch_size = trainer.datamodule.batch_size
        try:
            with trainer.precision_plugin.forward_context():
                for start in range(0, len(picks), batch_size):
                    items = [
                        dataset.item(i, augment=False) for i in picks[start : start + batch_size]
                    ]
                    pl_module(torch.stack([it["image"] for it in items]).to(pl_module.device))
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            for m, training in modes.items():
                m.train(training)
        if world > 1:  # the mean of the ranks' statistics, the same on every rank
            for m in norms:
                for stat in (m.running_mean, m.running_var):
                    torch.distributed.all_reduce(stat)
                    stat /= world

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.recompute(trainer, pl_module)


class StopOnNonFinite(L.Callback):
    """Stop with a clear error when the loss or the weights turn NaN/inf, before any checkpoint of
    that state.

    The loss is checked on the device (no host sync per step): a run of consecutive non-finite
    losses is counted there and read every ``check_every`` steps (on CPU, every step), at each epoch
    end and before every checkpoint is written. Under ``16-mixed`` the gradient scaler skips an
    overflowing step by design, so up to ``fp16_skips`` consecutive ones are let through; elsewhere
    the first stops the run. Every checkpoint is checked, parameters and buffers (BatchNorm
    statistics) alike, before it is written.
    """

    def __init__(self, check_every: int = 50, fp16_skips: int = 10) -> None:
        self.check_every, self.fp16_skips = check_every, fp16_skips
        # consecutive non-finite losses, on the loss's device
        self._streak: torch.Tensor | None = None
        self._last = float("nan")

    def _allowed(self, trainer: L.Trainer) -> int:
        return self.fp16_skips if str(trainer.precision).startswith("16") else 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = ~torch.isfinite(loss.detach()).all()
        streak = (
            self._streak
            if self._streak is not None and self._streak.device == loss.device
            else torch.zeros((), dtype=torch.int64, device=loss.device)
        )
        self._streak = torch.where(bad, streak + 1, torch.zeros_like(streak))
        if loss.device.type == "cpu" or (trainer.global_step + 1) % self.check_every == 0:
            self._check_streak(trainer, loss)

    def _check_streak(self, trainer: L.Trainer, loss: torch.Tensor | None = None) -> None:
        streak = int(self._streak) if self._streak is not None else 0  # the one host sync
        if loss is not None and streak:
            self._last = float(loss.detach())
        too_many = streak > self._allowed(trainer)
        # every rank stops together
        if trainer.strategy.reduce_boolean_decision(too_many, all=False):
            what = (
                f"the training loss was {self._last:g} for {streak} step(s) in a row"
                if too_many
                else "another rank's loss is NaN/inf"
            )
            self._fail(trainer, what)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_streak(trainer)
        bad = non_finite_tensors(
            dict(pl_module.named_parameters()) | dict(pl_module.named_buffers())
        )
        if bad:
            self._fail(trainer, f"weights or statistics are NaN/inf ({', '.join(bad[:3])})")
        val_loss = trainer.callback_metrics.get("val/loss")
        if val_loss is not None and not math.isfinite(float(val_loss)):
            self._fail(trainer, f"val/loss is {float(val_loss):g}")

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._check_streak(trainer)
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:  # raising here stops the write: no checkpoint ever holds NaN/inf
            self._fail(trainer, f"weights or statistics are NaN/inf ({', '.join(bad[:3])})")

    @staticmethod
    def _fail(trainer: L.Trainer, what: str) -> None:
        saved = [c.last_model_path or c.best_model_path for c in trainer.checkpoint_callbacks]
        saved = [p for p in saved if p]
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        where = (
            f"the last good checkpoint is {saved[-1]}"
            if saved
            else "no checkpoint had been written yet"
        )
        raise TrainingDivergedError(
            f"training diverged at epoch {trainer.current_epoch}, step {trainer.global_step}: "
            f"{what}. "
            f"Nothing of this state was saved; {where}. Lower optimizer.lr (now {lr:g}) and train "
            "again, "
            "or check the data with python -m lungseg.data.check"
        )


def _rng_states() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA generator states as plain values (checkpoints load
    tensors-only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


class ExactResume(L.Callback):
    """Keep in each checkpoint what Lightning leaves out, so a resumed run continues as if never
    stopped.

    The global random generators (else a resume shuffles, adds noise and drops out differently), and
    the ReduceLROnPlateau step still due: checkpoints are written in ``on_train_epoch_end``, plateau
    schedulers step after it, and Lightning skips that step on resume (the monitored value is not in
    the checkpoint).
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._due: dict[str, float] | None = None
        self._epoch = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": _rng_states()}
        trainer = self._trainer
        if trainer is not None:
            progress = trainer.fit_loop.epoch_progress.current
            # saved at epoch end, before the plateau step
            if progress.processed > progress.completed:
                metrics = trainer.callback_metrics
                state["plateau_due"] = {
                    c.monitor: float(metrics[c.monitor])
                    for c in trainer.lr_scheduler_configs
                    if c.reduce_on_plateau and c.monitor in metrics
                }
                state["epoch"] = trainer.current_epoch
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rng = state_dict["rng"]
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self._due = state_dict.get("plateau_due")
        self._epoch = int(state_dict.get("epoch", 0))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due, self._due = self._due, None
        for config in trainer.lr_scheduler_configs if due else []:
            if (
                config.reduce_on_plateau
                and config.interval == "epoch"
                and config.monitor in due
                and (self._epoch + 1) % config.frequency == 0
            ):
                config.scheduler.step(due[config.monitor])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint to a temporary file beside it, flush it to disk, then rename it into
    place.

    A kill while saving leaves the previous ``last.ckpt`` whole (rename is atomic on one file
    system).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):  # remote storage: fsspec's own transaction
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        save_torch(checkpoint, path)


class DescribeModel(L.Callback):
    """Write the model's self-description (``lungseg.artifacts.checkpoint.ModelDescription``) into
    every checkpoint: input size, preprocessing, threshold, training precision, the run config, code
    version, data fingerprint, metrics."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self._data: dict[str, Any] | None = None
        self._commit = git_commit()

    def _fingerprint(self, trainer: L.Trainer) -> dict[str, Any]:
        """The training data's fingerprint, computed once (the splits the run uses, its train subset
        included)."""
        if self._data is None:
            datamodule = trainer.datamodule
            root = Path(datamodule.root)
            pairs = {
                split: datamodule.datasets[split].pairs
                if split in datamodule.datasets
                else find_pairs(root, split)[0]
                for split in SPLITS
            }
            files = {
                split: [(p.image, p.mask) for p in split_pairs]
                for split, split_pairs in pairs.items()
            }
            self._data = {**data_fingerprint(root, files), "train_subset": datamodule.train_subset}
        return self._data

    def describe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ModelDescription:
        """The description of the model as it is now."""
        metrics = trainer.callback_metrics
        best = next((c for c in trainer.callbacks if isinstance(c, BestMetrics)), None)
        return ModelDescription(
            image_size=int(trainer.datamodule.image_size),
            threshold=float(pl_module.hparams.get("threshold", 0.5)),
            precision=str(trainer.precision),
            config=self.config,
            data=self._fingerprint(trainer),
            val_metrics={
                k: float(v) for k, v in metrics.items() if k.startswith("val/") and v.numel() == 1
            },
            best_metrics=best.results() if best is not None else {},
            git_commit=self._commit,
            created=now(),
        )

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[DESCRIPTION_KEY] = self.describe(trainer, pl_module).to_dict()
