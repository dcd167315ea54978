"""Timing the network: the median of repeated steps, the matmul peak of a dtype, FLOPs, and a
training or inference step of the real model in a given dtype and memory layout."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from lungseg.training.module import LungSegModule

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """Achieved FLOP/s of an n x n matmul in ``dtype``: the practical peak to compare against."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    seconds = median_seconds(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2 * n**3 / seconds


def build_module(cfg: DictConfig, channels_last: bool) -> LungSegModule:
    """The project's real LungSegModule from the composed training config."""
    return instantiate(cfg.module, channels_last=channels_last)


def count_flops(module: LungSegModule, size: int, train: bool) -> float:
    """FLOP per image of a forward (and backward when ``train``) pass."""
    module.train(train)
    x = torch.rand(1, 1, size, size)
    with FlopCounterMode(display=False) as counter:
        if train:
            module(x).float().sum().backward()
        else:
            with torch.no_grad():
                module(x)
    module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def model_variant(
    cfg: DictConfig,
    device: torch.device,
    dtype: str,
    channels_last: bool,
    compile: bool,
    train: bool,
) -> float:
    """Images/s of a training step (forward, loss, backward, Adam) or of inference, on synthetic
    tensors."""
    module = build_module(cfg, channels_last).to(device).train(train)
    net = torch.compile(module) if compile else module
    size, batch = cfg.data.image_size, cfg.batch_size
    images = torch.rand(batch, 1, size, size, device=device)
    masks = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    optimizer = module.configure_optimizers()["optimizer"]
    autocast = torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32")

    def step() -> None:
        if train:
            with autocast:
                logits = net(images)
            module.loss_fn(logits.float(), masks).backward()
            module.on_before_optimizer_step(optimizer)  # + the L2 term's gradient, as in a fit
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast:
                torch.sigmoid(net(images).float())

    warmup = cfg.warmup + (2 if compile else 0)
    return batch / median_seconds(step, device, warmup, cfg.repeats)


def quiet_fit(cfg: DictConfig, callback: Any, module: Any, datamodule: Any, **limits: Any) -> None:
    """A real ``Trainer.fit`` of the configured trainer with ``callback`` only: no logger,
    checkpoints, progress bar, summary or sanity check, in a temporary folder; ``limits`` are the
    trainer's (max_steps, limit_val_batches...)."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = instantiate(
            cfg.trainer,
            callbacks=[callback],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=tmp,
            **limits,
        )
        trainer.fit(module, datamodule=datamodule)
