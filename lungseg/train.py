"""Train the U-Net: ``python -m lungseg.train +experiment=baseline`` (fit, then test the best
checkpoint)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lungseg.artifacts.checkpoint import read_checkpoint, record_test_metrics
from lungseg.atomic import named_write_errors, output_lock
from lungseg.config import CONFIG_DIR, command_line, hydra_config, in_multirun
from lungseg.console import quiet
from lungseg.errors import EXIT_USER_ERROR, user_message
from lungseg.runs import RESULT_FILE
from lungseg.runtime import set_threads, usable_cores
from lungseg.settings import check_train
from lungseg.training.callbacks import BestMetrics, DescribeModel
from lungseg.training.records import promote, read_record, record_path, write_json
from lungseg.training.resume import check_resume
from lungseg.training.tensorboard_hparams import end_session, start_session

log = logging.getLogger(__name__)


def job_threads(cfg: DictConfig) -> int | None:
    """Torch threads: ``threads=``, else the cores shared out when a launcher runs ``n_jobs`` jobs
    side by side."""
    if cfg.get("threads"):
        return int(cfg.threads)
    hydra_cfg = hydra_config()
    n_jobs = hydra_cfg.launcher.get("n_jobs") if hydra_cfg is not None and in_multirun() else None
    if not n_jobs:
        return None
    cores = usable_cores()
    n_jobs = cores + 1 + n_jobs if n_jobs < 0 else n_jobs  # joblib: -1 = one job per core
    return max(1, cores // max(1, min(n_jobs, cores)))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit on train/val, test the best checkpoint, log hparams with the final metrics; return the
    metrics."""
    start = time.time()
    check_train(cfg)
    if torch.cuda.is_available():
        # TF32 matmuls for whatever runs in fp32 on Ampere and newer
        torch.set_float32_matmul_precision("high")
    threads = job_threads(cfg)
    if threads:
        set_threads(threads)
        log.info("torch threads: %d", threads)
    # a missing, torn or differently configured checkpoint is one clear message
    if cfg.get("ckpt_path"):
        check_resume(
            read_checkpoint(cfg.ckpt_path),
            cfg.ckpt_path,
            OmegaConf.to_container(cfg, resolve=True),
            bool(cfg.get("resume", {}).get("allow_changes")),
        )
    L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    # before any work
    datamodule.check_splits(("train", "val", "test") if cfg.get("test") else ("train", "val"))
    module: L.LightningModule = instantiate(cfg.module)
    # real FLOPs
    module.example_input_array = torch.zeros(1, 1, datamodule.image_size, datamodule.image_size)
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c]
    # every checkpoint describes itself
    callbacks.append(DescribeModel(OmegaConf.to_container(cfg, resolve=True)))
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    boards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    # HParams tab: knobs now (a failed run shows too), comparison metrics at the end
    for board in boards:
        start_session(board, cfg)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    checkpoint = next(
        (c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), None
    )
    best = checkpoint.best_model_path if checkpoint is not None else ""
    if cfg.get("test"):
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
        confusion = module.test_confusion.compute().tolist()
        log.info(
            "test confusion matrix (pixels; rows truth 0/1, columns predicted 0/1): %s", confusion
        )
        if best and trainer.is_global_zero:
            record_test_metrics(best, {k: v for k, v in metrics.items() if k.startswith("test/")})
    for tracker in (c for c in callbacks if isinstance(c, BestMetrics)):
        metrics.update(tracker.results())  # best over the whole run, resumes included
    metrics["epochs"] = float(trainer.current_epoch)
    for board in boards:
        end_session(board, metrics, wall_s=time.time() - start)
    if best:
        log.info("best checkpoint: %s", best)
    return metrics


def _record(cfg: DictConfig, record: Path, **fields: Any) -> None:
    """Write the run's record (rank 0 only): status, times, metrics; the sweep summary reads
    ``result.json``."""
    if rank_zero_only.rank != 0:
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    hydra_cfg = hydra_config()
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg is not None else []
    write_json(
        record,
        {
            "overrides": overrides,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "resumed_from": cfg.get("ckpt_path"),
            **fields,
        },
    )


def _link_resume(cfg: DictConfig) -> None:
    """A resume written into a new folder gets a ``resumed_from`` link to the run it continues."""
    ckpt = Path(cfg.ckpt_path).resolve()
    origin, run = ckpt.parent.parent, Path(cfg.paths.output_dir).resolve()
    if rank_zero_only.rank == 0 and origin != run and not (run / "resumed_from").exists():
        (run / "resumed_from").symlink_to(origin, target_is_directory=True)
    log.info("resuming %s into %s", ckpt, run)


def _earlier_wall_s(cfg: DictConfig) -> float:
    """Wall time already spent in this folder by the run a resume continues (0 for a fresh run)."""
    if not cfg.get("ckpt_path"):
        return 0.0
    try:
        return float(read_record(Path(cfg.paths.output_dir) / RESULT_FILE).get("wall_s") or 0.0)
    except (ValueError, TypeError):
        return 0.0


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``optimized_metric`` for sweepers (None for a failed job of a
    multirun)."""
    quiet()
    run = Path(cfg.paths.output_dir)
    holder = rank_zero_only.rank == 0  # DDP's other ranks share rank 0's folder and lock
    with output_lock(run, "hydra.run.dir", inside=True) if holder else contextlib.nullcontext():
        return _main(cfg)


def _main(cfg: DictConfig) -> float | None:
    """:func:`main` while it holds the run folder's lock: the run's record around :func:`train`."""
    start, earlier = time.time(), _earlier_wall_s(cfg)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    record = record_path(Path(cfg.paths.output_dir), started)
    _record(cfg, record, status="running", started=started)
    try:
        if cfg.get("ckpt_path"):
            _link_resume(cfg)
        # a write that failed without naming its file: the run's
        with named_write_errors(cfg.paths.output_dir):
            metrics = train(cfg)
    except Exception as err:
        wall_s = round(earlier + time.time() - start, 1)
        _record(
            cfg,
            record,
            status="failed",
            started=started,
            wall_s=wall_s,
            error=f"{type(err).__name__}: {err}",
        )
        if in_multirun():  # the failure is in the job folder; returning lets the other jobs run
            log.error(
                "job failed: %s: %s", type(err).__name__, err, exc_info=user_message(err) is None
            )
            # Optuna records None as a failed trial (NaN would make optuna 2.x abort the study)
            return None
        message = user_message(err)
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        raise
    value = metrics.get(cfg.get("optimized_metric") or "")
    _record(
        cfg,
        record,
        status="finished",
        started=started,
        wall_s=round(earlier + time.time() - start, 1),
        epochs=int(metrics["epochs"]),
        optimized_metric=cfg.get("optimized_metric"),
        value=value,
        metrics={k: v for k, v in metrics.items() if k.startswith(("best/", "test/", "val/"))},
    )
    if rank_zero_only.rank == 0:
        promote(record)
    return value


cli = command_line(main)


if __name__ == "__main__":
    cli()
