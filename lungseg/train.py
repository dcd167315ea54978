"""Train the U-Net: ``python -m lungseg.train +experiment=baseline`` (fit, then test the best checkpoint)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from lungseg.errors import EXIT_USER_ERROR, LungsegError

log = logging.getLogger(__name__)


def _flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The tunable part of the config as flat ``a/b: value`` pairs for TensorBoard's HParams tab."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    wanted = {k: resolved[k] for k in ("data", "model", "loss", "optimizer", "scheduler") if k in resolved}
    flat: dict[str, Any] = {"seed": cfg.seed}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in ("train_transform", "eval_transform", "_partial_", "_convert_"):
                    walk(value, f"{prefix}/{key}" if prefix else str(key))
        elif isinstance(node, (int, float, str, bool)) or node is None:
            flat[prefix] = "null" if node is None else node
        else:
            flat[prefix] = str(node)

    walk(wanted, "")
    return flat


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit on train/val, test the best checkpoint, log hparams with the final metrics; return the metrics."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = instantiate(cfg.data)
    module: L.LightningModule = instantiate(cfg.module)
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    checkpoint = next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), None)
    best = checkpoint.best_model_path if checkpoint is not None else ""
    if cfg.get("test"):
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
        confusion = module.test_confusion.compute().tolist()
        log.info("test confusion matrix (pixels; rows truth 0/1, columns predicted 0/1): %s", confusion)
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics["best/val_loss"] = float(checkpoint.best_model_score)
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(_flat_hparams(cfg), metrics={k: v for k, v in metrics.items()
                                                            if k.startswith(("test/", "best/"))})
    if best:
        log.info("best checkpoint: %s", best)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``optimized_metric`` for sweepers."""
    try:
        metrics = train(cfg)
    except LungsegError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # let the sweep record this job as failed
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    return metrics.get(cfg.get("optimized_metric") or "")


if __name__ == "__main__":
    main()
