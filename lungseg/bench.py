"""Benchmark the real model and data pipeline: ``python -m lungseg.bench [device=cuda] [--json out.json]``.

``mode=speed`` (default), at one size: matmul peak per dtype, training step, inference, data pipeline, onnxruntime
inference (fp32 and static INT8 of the same network), end-to-end ``Trainer.fit``. Each timing has warm-up and
reports the median; FLOP/s come from torch's FLOP counter and are compared with the matmul peak of the same dtype
measured in the same run.

``mode=scale``, as the dataset grows (``scale.sizes``): synthetic sets in the Kaggle layout through the real data
module (setup with its decode into the cache, DataLoader epochs with the configured workers), the memory of the
process and its workers, and training steps; then one epoch of the Kaggle set projected from them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from lungseg.atomic import write_text
from lungseg.config import CONFIG_DIR, command_line
from lungseg.data.dataset import MIB
from lungseg.data.layout import DATASET_DIR, IMAGE_DIR, MASK_DIR, image_name, mask_name
from lungseg.data.sample import write_phantoms
from lungseg.errors import LungsegError, exit_on_user_error
from lungseg.runtime import native_precision, pick_device, set_threads, usable_cores, use_channels_last
from lungseg.training.module import LungSegModule

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-v7"
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


def model_variant(cfg: DictConfig, device: torch.device, dtype: str, channels_last: bool, compile: bool,
                  train: bool) -> float:
    """Images/s of a training step (forward, loss, backward, Adam) or of inference, on synthetic tensors."""
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


def data_pipeline(cfg: DictConfig) -> dict[str, float]:
    """Images/s of decode + resize (the cache fill) and of augmentation + collate through the real DataLoader."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    start = time.perf_counter()
    datamodule.setup("fit")
    n = len(datamodule.dataset("train"))
    decode = n / (time.perf_counter() - start)
    loader = datamodule.train_dataloader()
    epochs = []
    for _ in range(1 + cfg.repeats):  # the first epoch (worker start-up) is warm-up
        start = time.perf_counter()
        seen = sum(batch["image"].shape[0] for batch in loader)
        epochs.append(seen / (time.perf_counter() - start))
    return {"decode_img_s": decode, "augment_img_s": statistics.median(epochs[1:]), "images": n}


def onnx_inference(cfg: DictConfig, folder: Path) -> dict[str, Any]:
    """Images/s of onnxruntime (CPU) on the bench's network exported to ONNX in fp32 and statically quantised to
    INT8, calibrated on the bench data's train images; same batch, threads, warm-up and repeats as PyTorch's rows."""
    from lungseg.artifacts.contract import INPUT_NAME, OUTPUT_NAME
    from lungseg.artifacts.exports import ProbabilityModel, export_onnx
    from lungseg.artifacts.quantize import node_counts, quantize_int8
    from lungseg.inference.backends.onnxruntime import onnx_session
    from lungseg.inference.inputs import calibration_files, calibration_images

    size, batch = cfg.data.image_size, cfg.batch_size
    fp32, int8 = folder / "bench_fp32.onnx", folder / "bench_int8.onnx"
    export_onnx(ProbabilityModel(build_module(cfg, channels_last=False).net.eval()), fp32, size)
    files = calibration_files(cfg.data.root, int(cfg.onnx_calibration_images))
    start = time.perf_counter()
    quantize_int8(fp32, int8, calibration_images(files, size), INPUT_NAME)
    quantize_s = time.perf_counter() - start
    images = {INPUT_NAME: torch.rand(batch, 1, size, size).numpy()}

    def rate(path: Path) -> float:
        session = onnx_session(path, "cpu", torch.get_num_threads())
        return batch / median_seconds(lambda: session.run([OUTPUT_NAME], images), torch.device("cpu"), cfg.warmup,
                                      cfg.repeats)

    nodes = node_counts(int8)
    return {"fp32_img_s": rate(fp32), "int8_img_s": rate(int8), "quantize_s": quantize_s,
            "calibration_images": len(files), "int8_qdq_nodes": {op: nodes.get(op, 0) for op in
                                                                 ("QuantizeLinear", "DequantizeLinear")},
            "files": {"fp32": str(fp32), "int8": str(int8)}}


def end_to_end(cfg: DictConfig) -> float:
    """Images/s of the training epochs of a real ``Trainer.fit`` with the configured defaults."""

    class EpochTimer(L.Callback):
        """Times each epoch's training batches (data loading included), up to where validation starts."""

        def __init__(self) -> None:
            self.rates: list[float] = []

        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.start = time.perf_counter()

        def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            images = len(trainer.datamodule.dataset("train"))
            self.rates.append(images / (time.perf_counter() - self.start))

    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = instantiate(cfg.trainer, callbacks=[timer], logger=False, enable_checkpointing=False,
                              enable_progress_bar=False, enable_model_summary=False, max_epochs=cfg.fit_epochs,
                              limit_val_batches=1, num_sanity_val_steps=0, default_root_dir=tmp)
        trainer.fit(instantiate(cfg.module), datamodule=instantiate(cfg.data))
    return statistics.median(timer.rates[1:] or timer.rates)


def run(cfg: DictConfig) -> dict[str, Any]:
    """All sections; returns the results with the default settings' figures at the top level."""
    set_threads(cfg.get("threads"))
    L.seed_everything(cfg.seed)
    device = pick_device(str(cfg.device))
    if cfg.data_root == "auto":  # the real CXR set beside the project when present, else the built-in sample
        cfg.data.root, cfg.data.synthesize = (str(REAL_DATA), False) if REAL_DATA.is_dir() else (cfg.data.root, True)
    elif cfg.data_root:
        cfg.data.root, cfg.data.synthesize = cfg.data_root, False
    default_dtype = {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(native_precision(device.type), "fp32")
    dtypes = list(dict.fromkeys(["fp32", default_dtype] + (["bf16", "fp16"] if device.type == "cuda" else [])))
    size, gflop = cfg.data.image_size, {}
    probe = build_module(cfg, channels_last=False)
    gflop["train"] = count_flops(probe, size, train=True) / 1e9
    gflop["infer"] = count_flops(probe, size, train=False) / 1e9
    peaks = {d: matmul_peak(device, DTYPES[d], cfg.matmul_size, cfg.repeats) for d in dtypes}
    rows = []
    variants = [(d, cl, False) for d in dtypes for cl in (False, True)]
    if cfg.compile:  # compilation costs minutes: compile the default dtype only
        variants.append((default_dtype, True, True))
    for dtype, channels_last, compile in variants:
        for kind in ("train", "infer"):
            rate = model_variant(cfg, device, dtype, channels_last, compile, train=kind == "train")
            rows.append({"section": kind, "dtype": dtype, "channels_last": channels_last, "compile": compile,
                         "img_s": rate, "tflop_s": rate * gflop[kind] / 1e3,
                         "of_peak": rate * gflop[kind] * 1e9 / peaks[dtype]})
            print(_row(rows[-1]), flush=True)
    data = data_pipeline(cfg)  # before onnxruntime: it writes the sample set the calibration reads
    onnx: dict[str, Any] = {}
    if cfg.onnx:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(cfg.onnx_dir) if cfg.get("onnx_dir") else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            onnx = onnx_inference(cfg, folder)
        print(_onnx_row(onnx), flush=True)
    e2e = end_to_end(cfg) if cfg.fit_epochs else float("nan")

    def default(kind: str) -> float:
        return next(r["img_s"] for r in rows if r["section"] == kind and r["dtype"] == default_dtype
                    and r["channels_last"] == layouts[kind] and not r["compile"])

    layouts = {kind: use_channels_last(cfg.module.channels_last, device.type, training=kind == "train")
               for kind in ("train", "infer")}

    return {
        "train_img_s": default("train"), "infer_img_s": default("infer"), "data_img_s": data["augment_img_s"],
        "infer_ort_fp32_img_s": onnx.get("fp32_img_s", float("nan")),
        "infer_int8_img_s": onnx.get("int8_img_s", float("nan")),
        "end_to_end_img_s": e2e,
        "end_to_end_over_step": e2e / default("train"),  # ~ share of the epoch the model is busy
        "settings": {"device": str(device), "device_name": _device_name(device), "dtype": default_dtype,
                     "channels_last": layouts, "image_size": size, "batch_size": cfg.batch_size,
                     "threads": torch.get_num_threads(), "workers": instantiate(cfg.data).num_workers,
                     "data_root": str(cfg.data.root)},
        "gflop_per_image": gflop, "matmul_peak_tflop_s": {d: p / 1e12 for d, p in peaks.items()},
        "model": rows, "data": data, "onnxruntime": onnx,
    }


SPLIT_NUMBERS = {"val": 10_000_000, "test": 20_000_000}  # phantom numbers of the sets' val/test pairs, apart from train


def draw_phantoms(pool: Path, numbers: list[int], size: int, seed: int, workers: int) -> int:
    """Write the phantoms ``numbers`` that ``pool`` lacks, in ``workers`` processes; how many were drawn."""
    chunks = [numbers[i:i + 250] for i in range(0, len(numbers), 250)]
    if workers <= 1 or len(chunks) <= 1:
        return sum(write_phantoms(pool, chunk, size, seed) for chunk in chunks)
    # spawned, not forked: OpenCV's thread pool does not survive a fork
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as executor:
        return sum(executor.map(write_phantoms, [pool] * len(chunks), chunks, [size] * len(chunks),
                                [seed] * len(chunks)))


def synthetic_set(folder: Path, n: int, val_pairs: int, size: int = 256, seed: int = 0,
                  workers: int = 1) -> tuple[Path, int]:
    """A set of ``n`` training pairs (and ``val_pairs`` val and test pairs) in the Kaggle layout under ``folder``;
    returns its root and how many phantoms had to be drawn. The phantoms are drawn once into one pool that grows as
    needed (a 17,000 set reuses the 4,000 of a smaller one) and each set is hard links into it, built in a temp
    folder and renamed into place, so an interrupted run leaves no partial set."""
    pool = folder / f"phantoms-{size}px-seed{seed}"
    splits = {"train": list(range(n))}
    splits.update({split: list(range(k, k + val_pairs)) for split, k in SPLIT_NUMBERS.items()})
    root = folder / f"set-{n}-{val_pairs}-{size}px-seed{seed}"
    if (root / DATASET_DIR).is_dir():
        return root, 0
    drawn = draw_phantoms(pool, [k for numbers in splits.values() for k in numbers], size, seed, workers)
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


def _proc_kb(path: Path, field: str) -> int:
    """A ``field:  N kB`` line of a /proc file, in kB (0 when absent)."""
    return next((int(line.split()[1]) for line in path.read_text().splitlines() if line.startswith(field + ":")), 0)


def rss_mb() -> float:
    """This process's resident set size now, MiB (NaN without /proc)."""
    try:
        return _proc_kb(Path("/proc/self/status"), "VmRSS") / 1024
    except OSError:
        return float("nan")


def reset_peak_rss() -> None:
    """Start this process's peak resident set size afresh (Linux: ``/proc/self/clear_refs``), so each size of the
    scale mode gets its own peak. Reading the kernel's counters costs nothing, unlike sampling."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """This process's peak resident set size since :func:`reset_peak_rss`, MiB (VmHWM; the shared decode cache is
    in it once it is filled)."""
    try:
        return _proc_kb(Path("/proc/self/status"), "VmHWM") / 1024
    except OSError:  # no /proc: the lifetime peak (kB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _children() -> list[str]:
    """Process ids of this process's children (the DataLoader workers); none without /proc."""
    return [pid for children in Path("/proc/self/task").glob("*/children") for pid in children.read_text().split()]


def workers_mb() -> float:
    """What this process's children (the DataLoader workers) hold now, MiB: their proportional set size without
    shared memory, so pages they share with the main process count once (the decode cache in the main process)."""
    total = 0.0
    for pid in _children():
        with contextlib.suppress(OSError):  # a worker that just exited
            rollup = Path(f"/proc/{pid}/smaps_rollup")
            total += (_proc_kb(rollup, "Pss") - _proc_kb(rollup, "Pss_Shmem")) / 1024
    return total


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live children (the DataLoader workers) so far: what the
    work cost, however busy the machine is with other jobs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    for pid in _children():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def timed_steps(cfg: DictConfig, datamodule: L.LightningDataModule, steps: int,
                warmup: int = 2) -> tuple[float, float]:
    """Images/s of ``steps`` training steps of a real ``Trainer.fit`` (loading included, as configured), after
    ``warmup`` untimed ones; and what its DataLoader workers held at the end (:func:`workers_mb`)."""

    class StepTimer(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if trainer.global_step == warmup:
                self.start = time.perf_counter()
            elif trainer.global_step == warmup + steps:
                self.seconds = time.perf_counter() - self.start
                self.workers = workers_mb()

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = instantiate(cfg.trainer, callbacks=[timer], logger=False, enable_checkpointing=False,
                              enable_progress_bar=False, enable_model_summary=False, max_steps=warmup + steps,
                              max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp)
        # no LR schedule: it would wait for a validation loss that these steps never compute
        trainer.fit(instantiate(cfg.module, scheduler=None), datamodule=datamodule)
    return steps * cfg.batch_size / timer.seconds, timer.workers


def scale_row(cfg: DictConfig, root: Path, n: int) -> dict[str, Any]:
    """One dataset size: the data module's setup (pairing, then every file decoded once into the cache), DataLoader
    epochs, memory, training steps. Runs in a fresh process of its own (:func:`isolated`)."""
    if not logging.getLogger().handlers:  # a spawned process: the data module's lines on stdout, as in the parent
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
    epochs, cpu = [], []
    for _ in range(cfg.scale.epochs):
        start, start_cpu = time.perf_counter(), cpu_seconds()
        seen = sum(batch["image"].shape[0] for batch in loader)
        epochs.append(time.perf_counter() - start)
        cpu.append(cpu_seconds() - start_cpu)
    workers = workers_mb()  # the persistent workers, still there after the last epoch
    data_peak = peak_rss_mb() + workers
    del loader  # its workers stop
    train_img_s, train_workers = (timed_steps(cfg, datamodule, int(cfg.scale.train_steps)) if cfg.scale.train_steps
                                  else (float("nan"), 0.0))
    peak = max(data_peak, peak_rss_mb() + train_workers)
    cache = datamodule.dataset("train").cache
    row = {"n_images": n, "data_epoch_s": statistics.median(epochs[1:] or epochs),
           "data_first_epoch_s": epochs[0], "data_epochs_s": epochs,
           "data_epoch_cpu_s": statistics.median(cpu[1:] or cpu), "data_epochs_cpu_s": cpu, "setup_s": setup_s,
           "decode_img_s": (n + len(datamodule.dataset("val"))) / setup_s,
           "cached_images": cache.filled_count(), "cache_mb": cache.nbytes / MIB,
           "peak_rss_mb": peak, "data_peak_rss_mb": data_peak, "workers_mb": workers, "base_rss_mb": base,
           "train_img_s": train_img_s, "workers": datamodule.num_workers, "images_per_epoch": seen}
    row["data_ms_per_image"] = 1e3 * row["data_epoch_s"] / n
    row["data_cpu_ms_per_image"] = 1e3 * row["data_epoch_cpu_s"] / n
    row["overhead_mb"] = row["peak_rss_mb"] - row["cache_mb"]
    return row


def _with_start_method(method: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with ``method`` as the default way to start processes (a spawned process defaults to spawn)."""
    multiprocessing.set_start_method(method, force=True)
    return fn(*args)


def isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh spawned process: each size's memory starts from the same base, free of what an
    earlier size left in the allocator. Its DataLoader workers start as this process's would (forked on Linux)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as executor:
        return executor.submit(_with_start_method, multiprocessing.get_start_method(), fn, *args).result()


def project(cfg: DictConfig, rows: list[dict[str, Any]], gflop: dict[str, float], infer_img_s: float) -> dict[str, Any]:
    """One epoch of the Kaggle set (training pass, precise BatchNorm sample, validation) from the largest size's
    figures on this machine, and on a GPU estimated from FLOPs at an assumed share of its peak."""
    p, last = cfg.scale.project, rows[-1]
    evaluated = p.val_pairs + p.precise_bn_images  # forward passes only
    this = p.train_pairs / last["train_img_s"] + evaluated / infer_img_s
    rate = p.gpu_tflops * 1e12 * p.gpu_utilisation
    gpu_model = (p.train_pairs * gflop["train"] + evaluated * gflop["infer"]) * 1e9 / rate
    # the data pipeline's CPU time per image measured here (load on this machine stretches its wall time, not its
    # CPU time), spread over the GPU host's workers, one core each
    gpu_data = p.train_pairs * last["data_epoch_cpu_s"] / last["n_images"] / p.gpu_workers
    return {"train_pairs": p.train_pairs, "val_pairs": p.val_pairs, "precise_bn_images": p.precise_bn_images,
            "this_machine_epoch_s": this, "first_epoch_decode_s": (p.train_pairs + p.val_pairs) / last["decode_img_s"],
            "gpu": p.gpu, "gpu_tflops": p.gpu_tflops, "gpu_utilisation": p.gpu_utilisation,
            "gpu_workers": p.gpu_workers, "gpu_model_s": gpu_model, "gpu_data_s": gpu_data,
            "gpu_epoch_s": max(gpu_model, gpu_data)}


def run_scale(cfg: DictConfig) -> dict[str, Any]:
    """``mode=scale``: a row per size of ``scale.sizes``, and the projection."""
    set_threads(cfg.get("threads"))
    L.seed_everything(cfg.seed)
    device = pick_device(str(cfg.device))
    folder = Path(cfg.scale.folder or Path(tempfile.gettempdir()) / "lungseg-scale")
    folder.mkdir(parents=True, exist_ok=True)
    workers = int(cfg.scale.generate_workers or usable_cores())
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # for the spawned process: no Hydra there
    rows = []
    for n in sorted(int(k) for k in cfg.scale.sizes):
        start = time.perf_counter()
        root, drawn = synthetic_set(folder, n, int(cfg.scale.val_pairs), int(cfg.scale.source_px), int(cfg.seed),
                                    workers)
        generate_s = time.perf_counter() - start
        print(f"scale {n}: set ready in {generate_s:.0f} s ({drawn} phantoms drawn) at {root}", flush=True)
        rows.append({**isolated(scale_row, plain, root, n), "phantoms_drawn": drawn, "generate_s": generate_s})
        rows[-1]["data_cost_vs_smallest"] = rows[-1]["data_ms_per_image"] / rows[0]["data_ms_per_image"]
        rows[-1]["data_cpu_vs_smallest"] = rows[-1]["data_cpu_ms_per_image"] / rows[0]["data_cpu_ms_per_image"]
        print(_scale_row(rows[-1]), flush=True)
    default_dtype = {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(native_precision(device.type), "fp32")
    probe = build_module(cfg, channels_last=False)
    size = cfg.data.image_size
    gflop = {"train": count_flops(probe, size, train=True) / 1e9, "infer": count_flops(probe, size, train=False) / 1e9}
    infer = model_variant(cfg, device, default_dtype, cfg.module.channels_last, False, train=False)
    return {"scale": rows, "projection": project(cfg, rows, gflop, infer), "infer_img_s": infer,
            "gflop_per_image": gflop,
            "settings": {"device": str(device), "device_name": _device_name(device), "dtype": default_dtype,
                         "image_size": size, "source_px": int(cfg.scale.source_px), "batch_size": cfg.batch_size,
                         "threads": torch.get_num_threads(), "cores": usable_cores(),
                         "cache_mb_setting": float(cfg.data.cache_mb), "folder": str(folder),
                         "memory": "peak resident set size of the fresh process that measured the size (VmHWM) "
                                   "plus its DataLoader workers' proportional set size without shared memory"}}


def _scale_row(r: dict[str, Any]) -> str:
    return (f"{r['n_images']:>7} images: setup {r['setup_s']:6.1f} s ({r['decode_img_s']:6.0f} img/s decoded), "
            f"epoch {r['data_first_epoch_s']:6.2f} s first, {r['data_epoch_s']:6.2f} s later "
            f"({r['data_ms_per_image']:.3f} ms/image, x{r['data_cost_vs_smallest']:.2f}; CPU "
            f"{r['data_cpu_ms_per_image']:.3f} ms/image, x{r['data_cpu_vs_smallest']:.2f}), cache "
            f"{r['cached_images']} images {r['cache_mb']:,.0f} MiB, peak {r['peak_rss_mb']:,.0f} MiB "
            f"(data {r['data_peak_rss_mb']:,.0f}, before {r['base_rss_mb']:,.0f}), train {r['train_img_s']:.2f} img/s")


def scale_report(result: dict[str, Any]) -> str:
    """The summary printed at the end of ``mode=scale``."""
    s, p = result["settings"], result["projection"]
    lines = [f"device {s['device']} ({s['device_name']}), {s['threads']} threads, {s['image_size']} px, "
             f"batch {s['batch_size']}, data.cache_mb={s['cache_mb_setting']:g}"]
    lines += [_scale_row(r) for r in result["scale"]]
    lines += [f"one Kaggle epoch ({p['train_pairs']} train + {p['precise_bn_images']} precise-BN + {p['val_pairs']} "
              f"val images): {p['this_machine_epoch_s'] / 60:.0f} min here; about {p['gpu_epoch_s']:.1f} s on one "
              f"{p['gpu']} at {p['gpu_utilisation']:.0%} of {p['gpu_tflops']:g} TFLOP/s (model "
              f"{p['gpu_model_s']:.1f} s, data {p['gpu_data_s']:.1f} s over {p['gpu_workers']} workers); first epoch "
              f"also decodes: {p['first_epoch_decode_s']:.0f} s at this machine's rate"]
    return "\n".join(lines)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine()


def _row(r: dict[str, Any]) -> str:
    return (f"{r['section']:<6} {r['dtype']:<5} {'cl' if r['channels_last'] else 'nchw':<5} "
            f"{'compiled' if r['compile'] else 'eager':<8} {r['img_s']:9.1f} img/s {r['tflop_s']:8.3f} TFLOP/s "
            f"{r['of_peak']:6.1%} of matmul peak")


def _onnx_row(o: dict[str, Any]) -> str:
    return (f"onnxruntime CPU inference: fp32 {o['fp32_img_s']:.1f} img/s, INT8 {o['int8_img_s']:.1f} img/s "
            f"({o['int8_img_s'] / o['fp32_img_s']:.2f}x; quantised in {o['quantize_s']:.0f} s on "
            f"{o['calibration_images']} images)")


def report(result: dict[str, Any]) -> str:
    """The summary table printed at the end."""
    s = result["settings"]
    lines = [f"device {s['device']} ({s['device_name']}), {s['threads']} threads, {s['workers']} workers, "
             f"{s['image_size']} px, batch {s['batch_size']}",
             "matmul peak: " + ", ".join(f"{d} {p:.2f} TFLOP/s" for d, p in result["matmul_peak_tflop_s"].items()),
             f"GFLOP per image: train {result['gflop_per_image']['train']:.1f}, "
             f"inference {result['gflop_per_image']['infer']:.1f}", ""]
    lines += [_row(r) for r in result["model"]]
    d = result["data"]
    lines += ["", f"data   decode+resize (once, cached) {d['decode_img_s']:8.1f} img/s; "
                  f"augment+collate per epoch {d['augment_img_s']:8.1f} img/s ({d['images']} images)",
              f"end-to-end Trainer.fit epoch        {result['end_to_end_img_s']:8.1f} img/s",
              _onnx_row(result["onnxruntime"]) if result.get("onnxruntime") else "onnxruntime: skipped (onnx=false)",
              "", f"defaults ({s['dtype']}; " + ", ".join(f"{k} {'channels_last' if cl else 'NCHW'}" for k, cl in
                                                     s["channels_last"].items()) + "): "
                  f"train {result['train_img_s']:.1f}, infer {result['infer_img_s']:.1f}, "
                  f"data {result['data_img_s']:.1f}, end-to-end {result['end_to_end_img_s']:.1f} img/s"]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="bench")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Print the benchmark table; write it as JSON when ``json=PATH`` (or ``--json PATH``) is given."""
    if cfg.mode not in ("speed", "scale"):
        raise LungsegError(f"mode={cfg.mode}: choose speed (the model and pipeline at one size) or scale")
    result = run_scale(cfg) if cfg.mode == "scale" else run(cfg)
    print(scale_report(result) if cfg.mode == "scale" else report(result))
    if cfg.get("json"):
        write_text(cfg.json, json.dumps(result, indent=2))
        print(f"wrote {cfg.json}")


def _json_flag_to_override(argv: list[str]) -> list[str]:
    """Accept ``--json PATH`` as well as Hydra's ``json=PATH``."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--json" and i + 1 < len(argv):
            out.append(f"json={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _main_with_json_flag() -> None:
    """``main`` with ``--json PATH`` accepted."""
    sys.argv = [sys.argv[0], *_json_flag_to_override(sys.argv[1:])]
    main()


cli = command_line(_main_with_json_flag)


if __name__ == "__main__":
    cli()
