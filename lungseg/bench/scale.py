"""``mode=scale``, as the dataset grows (``scale.sizes``): synthetic sets in the Kaggle layout
through the real data module (setup with its decode into the cache, DataLoader epochs with the
configured workers), the memory of the process and its workers, and training steps; then one epoch
of the Kaggle set projected from them."""

from __future__ import annotations

import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lungseg.bench.process import (
    cpu_seconds,
    minor_faults,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    workers_mb,
)
from lungseg.bench.speed import _device_name
from lungseg.bench.timing import build_module, count_flops, model_variant, quiet_fit
from lungseg.data.dataset import MIB
from lungseg.data.layout import DATASET_DIR, IMAGE_DIR, MASK_DIR, image_name, mask_name
from lungseg.data.sample import write_phantoms
from lungseg.runtime import native_precision, pick_device, set_threads, usable_cores

# phantom numbers of the sets' val/test pairs, apart from train
SPLIT_NUMBERS = {"val": 10_000_000, "test": 20_000_000}


def draw_phantoms(pool: Path, numbers: list[int], size: int, seed: int, workers: int) -> int:
    """Write the phantoms ``numbers`` that ``pool`` lacks, in ``workers`` processes; how many were
    drawn."""
    chunks = [numbers[i : i + 250] for i in range(0, len(numbers), 250)]
    if workers <= 1 or len(chunks) <= 1:
        return sum(write_phantoms(pool, chunk, size, seed) for chunk in chunks)
    # spawned, not forked: OpenCV's thread pool does not survive a fork
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as executor:
        return sum(
            executor.map(
                write_phantoms,
                [pool] * len(chunks),
                chunks,
                [size] * len(chunks),
                [seed] * len(chunks),
            )
        )


def synthetic_set(
    folder: Path, n: int, val_pairs: int, size: int = 256, seed: int = 0, workers: int = 1
) -> tuple[Path, int]:
    """A set of ``n`` training pairs (and ``val_pairs`` val and test pairs) in the Kaggle layout
    under ``folder``; returns its root and how many phantoms had to be drawn. The phantoms are drawn
    once into one pool that grows as needed (a 17,000 set reuses the 4,000 of a smaller one) and
    each set is hard links into it, built in a temp folder and renamed into place, so an interrupted
    run leaves no partial set."""
    pool = folder / f"phantoms-{size}px-seed{seed}"
    splits = {"train": list(range(n))}
    splits.update({split: list(range(k, k + val_pairs)) for split, k in SPLIT_NUMBERS.items()})
    root = folder / f"set-{n}-{val_pairs}-{size}px-seed{seed}"
    if (root / DATASET_DIR).is_dir():
        return root, 0
    drawn = draw_phantoms(
        pool, [k for numbers in splits.values() for k in numbers], size, seed, workers
    )
    partial = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=folder))
    for split, numbers in splits.items():
        for sub, name in ((IMAGE_DIR, image_name), (MASK_DIR, mask_name)):
            target = partial / DATASET_DIR / split / sub
            target.mkdir(parents=True)
            for k in numbers:
                try:
                    os.link(pool / sub / name(k), target / name(k))
                except OSError:  # a file system without hard links
                    (target / name(k)).write_bytes((pool / sub / name(k)).read_bytes())
    root.mkdir(parents=True, exist_ok=True)
    os.replace(partial / DATASET_DIR, root / DATASET_DIR)
    partial.rmdir()
    return root, drawn


def timed_steps(
    cfg: DictConfig, datamodule: L.LightningDataModule, steps: int, warmup: int = 2
) -> tuple[float, float]:
    """Images/s of ``steps`` training steps of a real ``Trainer.fit`` (loading included, as
    configured), after ``warmup`` untimed ones; and what its DataLoader workers held at the end
    (:func:`workers_mb`)."""

    class StepTimer(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if trainer.global_step == warmup:
                self.start = time.perf_counter()
            elif trainer.global_step == warmup + steps:
                self.seconds = time.perf_counter() - self.start
                self.workers = workers_mb()

    timer = StepTimer()
    # no LR schedule: it would wait for a validation loss that these steps never compute
    module = instantiate(cfg.module, scheduler=None)
    quiet_fit(
        cfg, timer, module, datamodule, max_steps=warmup + steps, max_epochs=-1, limit_val_batches=0
    )
    return steps * cfg.batch_size / timer.seconds, timer.workers


def scale_row(cfg: DictConfig, root: Path, n: int) -> dict[str, Any]:
    """One dataset size: the data module's setup (pairing, then every file decoded once into the
    cache), DataLoader epochs, memory, training steps. Runs in a fresh process of its own
    (:func:`isolated`)."""
    # a spawned process: the data module's lines on stdout, as in the parent
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    set_threads(cfg.get("threads"))
    L.seed_everything(cfg.seed, verbose=False)
    base = rss_mb()
    reset_peak_rss()
    datamodule = instantiate(cfg.data, root=str(root), synthesize=False)
    start = time.perf_counter()
    datamodule.setup("fit")
    setup_s = time.perf_counter() - start
    loader = datamodule.train_dataloader()
    epochs, cpu, faults = [], [], []
    for _ in range(cfg.scale.epochs):
        start, start_cpu, start_faults = time.perf_counter(), cpu_seconds(), minor_faults()
        seen = sum(batch["image"].shape[0] for batch in loader)
        epochs.append(time.perf_counter() - start)
        cpu.append(cpu_seconds() - start_cpu)
        faults.append(minor_faults() - start_faults)
    workers = workers_mb()  # the persistent workers, still there after the last epoch
    data_peak = peak_rss_mb() + workers
    del loader  # its workers stop
    train_img_s, train_workers = (
        timed_steps(cfg, datamodule, int(cfg.scale.train_steps))
        if cfg.scale.train_steps
        else (float("nan"), 0.0)
    )
    peak = max(data_peak, peak_rss_mb() + train_workers)
    cache = datamodule.dataset("train").cache
    row = {
        "n_images": n,
        "data_epoch_s": statistics.median(epochs[1:] or epochs),
        "data_first_epoch_s": epochs[0],
        "data_epochs_s": epochs,
        "data_epoch_cpu_s": statistics.median(cpu[1:] or cpu),
        "data_epochs_cpu_s": cpu,
        "setup_s": setup_s,
        "data_faults_per_image": statistics.median(faults[1:] or faults) / n,
        "data_epochs_faults": faults,
        "decode_img_s": (n + len(datamodule.dataset("val"))) / setup_s,
        "cached_images": cache.filled_count(),
        "cache_mb": cache.nbytes / MIB,
        "peak_rss_mb": peak,
        "data_peak_rss_mb": data_peak,
        "workers_mb": workers,
        "base_rss_mb": base,
        "train_img_s": train_img_s,
        "workers": datamodule.num_workers,
        "images_per_epoch": seen,
    }
    row["data_ms_per_image"] = 1e3 * row["data_epoch_s"] / n
    row["data_cpu_ms_per_image"] = 1e3 * row["data_epoch_cpu_s"] / n
    row["overhead_mb"] = row["peak_rss_mb"] - row["cache_mb"]
    return row


def _with_start_method(method: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with ``method`` as the default way to start processes (a spawned process
    defaults to spawn)."""
    multiprocessing.set_start_method(method, force=True)
    return fn(*args)


def isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh spawned process: each size's memory starts from the same base, free
    of what an earlier size left in the allocator. Its DataLoader workers start as this process's
    would (forked on Linux)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as executor:
        return executor.submit(
            _with_start_method, multiprocessing.get_start_method(), fn, *args
        ).result()


def project(
    cfg: DictConfig, rows: list[dict[str, Any]], gflop: dict[str, float], infer_img_s: float
) -> dict[str, Any]:
    """One epoch of the Kaggle set (training pass, precise BatchNorm sample, validation) from the
    largest size's figures on this machine, and on a GPU estimated from FLOPs at an assumed share of
    its peak."""
    p, last = cfg.scale.project, rows[-1]
    evaluated = p.val_pairs + p.precise_bn_images  # forward passes only
    this = p.train_pairs / last["train_img_s"] + evaluated / infer_img_s
    rate = p.gpu_tflops * 1e12 * p.gpu_utilisation
    gpu_model = (p.train_pairs * gflop["train"] + evaluated * gflop["infer"]) * 1e9 / rate
    # the data pipeline's CPU time per image measured here (load on this machine stretches its wall
    # time, not its
    # CPU time), spread over the GPU host's workers, one core each
    gpu_data = p.train_pairs * last["data_epoch_cpu_s"] / last["n_images"] / p.gpu_workers
    return {
        "train_pairs": p.train_pairs,
        "val_pairs": p.val_pairs,
        "precise_bn_images": p.precise_bn_images,
        "this_machine_epoch_s": this,
        "first_epoch_decode_s": (p.train_pairs + p.val_pairs) / last["decode_img_s"],
        "gpu": p.gpu,
        "gpu_tflops": p.gpu_tflops,
        "gpu_utilisation": p.gpu_utilisation,
        "gpu_workers": p.gpu_workers,
        "gpu_model_s": gpu_model,
        "gpu_data_s": gpu_data,
        "gpu_epoch_s": max(gpu_model, gpu_data),
    }


def run_scale(cfg: DictConfig) -> dict[str, Any]:
    """``mode=scale``: a row per size of ``scale.sizes``, and the projection."""
    set_threads(cfg.get("threads"))
    L.seed_everything(cfg.seed)
    device = pick_device(str(cfg.device))
    folder = Path(cfg.scale.folder or Path(tempfile.gettempdir()) / "lungseg-scale")
    folder.mkdir(parents=True, exist_ok=True)
    workers = int(cfg.scale.generate_workers or usable_cores())
    # for the spawned process: no Hydra there
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    rows = []
    for n in sorted(int(k) for k in cfg.scale.sizes):
        start = time.perf_counter()
        root, drawn = synthetic_set(
            folder, n, int(cfg.scale.val_pairs), int(cfg.scale.source_px), int(cfg.seed), workers
        )
        generate_s = time.perf_counter() - start
        print(
            f"scale {n}: set ready in {generate_s:.0f} s ({drawn} phantoms drawn) at {root}",
            flush=True,
        )
        rows.append(
            {
                **isolated(scale_row, plain, root, n),
                "phantoms_drawn": drawn,
                "generate_s": generate_s,
            }
        )
        rows[-1]["data_cost_vs_smallest"] = (
            rows[-1]["data_ms_per_image"] / rows[0]["data_ms_per_image"]
        )
        rows[-1]["data_cpu_vs_smallest"] = (
            rows[-1]["data_cpu_ms_per_image"] / rows[0]["data_cpu_ms_per_image"]
        )
        print(_scale_row(rows[-1]), flush=True)
    default_dtype = {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(
        native_precision(device.type), "fp32"
    )
    probe = build_module(cfg, channels_last=False)
    size = cfg.data.image_size
    gflop = {
        "train": count_flops(probe, size, train=True) / 1e9,
        "infer": count_flops(probe, size, train=False) / 1e9,
    }
    infer = model_variant(cfg, device, default_dtype, cfg.module.channels_last, False, train=False)
    return {
        "scale": rows,
        "projection": project(cfg, rows, gflop, infer),
        "infer_img_s": infer,
        "gflop_per_image": gflop,
        "settings": {
            "device": str(device),
            "device_name": _device_name(device),
            "dtype": default_dtype,
            "image_size": size,
            "source_px": int(cfg.scale.source_px),
            "batch_size": cfg.batch_size,
            "threads": torch.get_num_threads(),
            "cores": usable_cores(),
            "cache_mb_setting": float(cfg.data.cache_mb),
            "folder": str(folder),
            "memory": "peak resident set size of the fresh process that measured the size (VmHWM) "
            "plus its DataLoader workers' proportional set size without shared memory",
        },
    }


def _scale_row(r: dict[str, Any]) -> str:
    return (
        f"{r['n_images']:>7} images: setup {r['setup_s']:6.1f} s ({r['decode_img_s']:6.0f} img/s "
        "decoded), "
        f"epoch {r['data_first_epoch_s']:6.2f} s first, {r['data_epoch_s']:6.2f} s later "
        f"({r['data_ms_per_image']:.3f} ms/image, x{r['data_cost_vs_smallest']:.2f}; CPU "
        f"{r['data_cpu_ms_per_image']:.3f} ms/image, x{r['data_cpu_vs_smallest']:.2f}; "
        f"{r['data_faults_per_image']:.1f} page faults/image), cache "
        f"{r['cached_images']} images {r['cache_mb']:,.0f} MiB, peak {r['peak_rss_mb']:,.0f} MiB "
        f"(data {r['data_peak_rss_mb']:,.0f}, before {r['base_rss_mb']:,.0f}), train "
        f"{r['train_img_s']:.2f} img/s"
    )


def scale_report(result: dict[str, Any]) -> str:
    """The summary printed at the end of ``mode=scale``."""
    s, p = result["settings"], result["projection"]
    lines = [
        f"device {s['device']} ({s['device_name']}), {s['threads']} threads, {s['image_size']} px, "
        f"batch {s['batch_size']}, data.cache_mb={s['cache_mb_setting']:g}"
    ]
    lines += [_scale_row(r) for r in result["scale"]]
    lines += [
        f"one Kaggle epoch ({p['train_pairs']} train + {p['precise_bn_images']} precise-BN + "
        f"{p['val_pairs']} "
        f"val images): {p['this_machine_epoch_s'] / 60:.0f} min here; about "
        f"{p['gpu_epoch_s']:.1f} s on one "
        f"{p['gpu']} at {p['gpu_utilisation']:.0%} of {p['gpu_tflops']:g} TFLOP/s (model "
        f"{p['gpu_model_s']:.1f} s, data {p['gpu_data_s']:.1f} s over {p['gpu_workers']} "
        "workers); first epoch "
        f"also decodes: {p['first_epoch_decode_s']:.0f} s at this machine's rate"
    ]
    return "\n".join(lines)
