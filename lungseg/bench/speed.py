"""``mode=speed``, at one size: matmul peak per dtype, training step, inference, data pipeline, ONNX
Runtime inference (fp32 and static INT8 of the same network), end-to-end ``Trainer.fit``; each
timing with warm-up, the median reported; FLOP/s from torch's FLOP counter against the matmul peak
of the same dtype measured in the same run."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lungseg.bench.timing import (
    DTYPES,
    build_module,
    count_flops,
    matmul_peak,
    median_seconds,
    model_variant,
    quiet_fit,
)
from lungseg.runtime import native_precision, pick_device, set_threads, use_channels_last


def use_data_root(cfg: DictConfig) -> None:
    """``data_root``: a dataset root to time the data pipeline on, else the built-in sample (written
    on first use)."""
    if cfg.get("data_root"):
        cfg.data.root, cfg.data.synthesize = cfg.data_root, False


def data_pipeline(cfg: DictConfig) -> dict[str, float]:
    """Images/s of decode + resize (the cache fill) and of augmentation + collate through the real
    DataLoader."""
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
    """Images/s of onnxruntime (CPU) on the bench's network exported to ONNX in fp32 and statically
    quantised to INT8, calibrated on the bench data's train images; same batch, threads, warm-up and
    repeats as PyTorch's rows."""
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
        return batch / median_seconds(
            lambda: session.run([OUTPUT_NAME], images), torch.device("cpu"), cfg.warmup, cfg.repeats
        )

    nodes = node_counts(int8)
    return {
        "fp32_img_s": rate(fp32),
        "int8_img_s": rate(int8),
        "quantize_s": quantize_s,
        "calibration_images": len(files),
        "int8_qdq_nodes": {op: nodes.get(op, 0) for op in ("QuantizeLinear", "DequantizeLinear")},
        "files": {"fp32": str(fp32), "int8": str(int8)},
    }


def end_to_end(cfg: DictConfig) -> float:
    """Images/s of the training epochs of a real ``Trainer.fit`` with the configured defaults."""

    class EpochTimer(L.Callback):
        """Times each epoch's training batches (data loading included), up to where validation
        starts."""

        def __init__(self) -> None:
            self.rates: list[float] = []

        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.start = time.perf_counter()

        def on_validation_epoch_start(
            self, trainer: L.Trainer, pl_module: L.LightningModule
        ) -> None:
            if trainer.sanity_checking:
                return
            images = len(trainer.datamodule.dataset("train"))
            self.rates.append(images / (time.perf_counter() - self.start))

    timer = EpochTimer()
    quiet_fit(
        cfg,
        timer,
        instantiate(cfg.module),
        instantiate(cfg.data),
        max_epochs=cfg.fit_epochs,
        limit_val_batches=1,
    )
    return statistics.median(timer.rates[1:] or timer.rates)


def run_speed(cfg: DictConfig) -> dict[str, Any]:
    """All sections; returns the results with the default settings' figures at the top level."""
    set_threads(cfg.get("threads"))
    L.seed_everything(cfg.seed)
    device = pick_device(str(cfg.device))
    use_data_root(cfg)
    default_dtype = {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(
        native_precision(device.type), "fp32"
    )
    dtypes = list(
        dict.fromkeys(["fp32", default_dtype] + (["bf16", "fp16"] if device.type == "cuda" else []))
    )
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
            rows.append(
                {
                    "section": kind,
                    "dtype": dtype,
                    "channels_last": channels_last,
                    "compile": compile,
                    "img_s": rate,
                    "tflop_s": rate * gflop[kind] / 1e3,
                    "of_peak": rate * gflop[kind] * 1e9 / peaks[dtype],
                }
            )
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
        return next(
            r["img_s"]
            for r in rows
            if r["section"] == kind
            and r["dtype"] == default_dtype
            and r["channels_last"] == layouts[kind]
            and not r["compile"]
        )

    layouts = {
        kind: use_channels_last(cfg.module.channels_last, device.type, training=kind == "train")
        for kind in ("train", "infer")
    }

    return {
        "train_img_s": default("train"),
        "infer_img_s": default("infer"),
        "data_img_s": data["augment_img_s"],
        "infer_ort_fp32_img_s": onnx.get("fp32_img_s", float("nan")),
        "infer_int8_img_s": onnx.get("int8_img_s", float("nan")),
        "end_to_end_img_s": e2e,
        "end_to_end_over_step": e2e / default("train"),  # ~ share of the epoch the model is busy
        "settings": {
            "device": str(device),
            "device_name": _device_name(device),
            "dtype": default_dtype,
            "channels_last": layouts,
            "image_size": size,
            "batch_size": cfg.batch_size,
            "threads": torch.get_num_threads(),
            "workers": instantiate(cfg.data).num_workers,
            "data_root": str(cfg.data.root),
        },
        "gflop_per_image": gflop,
        "matmul_peak_tflop_s": {d: p / 1e12 for d, p in peaks.items()},
        "model": rows,
        "data": data,
        "onnxruntime": onnx,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine()


def _row(r: dict[str, Any]) -> str:
    return (
        f"{r['section']:<6} {r['dtype']:<5} {'cl' if r['channels_last'] else 'nchw':<5} "
        f"{'compiled' if r['compile'] else 'eager':<8} {r['img_s']:9.1f} img/s "
        f"{r['tflop_s']:8.3f} TFLOP/s "
        f"{r['of_peak']:6.1%} of matmul peak"
    )


def _onnx_row(o: dict[str, Any]) -> str:
    return (
        f"onnxruntime CPU inference: fp32 {o['fp32_img_s']:.1f} img/s, INT8 {o['int8_img_s']:.1f} "
        "img/s "
        f"({o['int8_img_s'] / o['fp32_img_s']:.2f}x; quantised in {o['quantize_s']:.0f} s on "
        f"{o['calibration_images']} images)"
    )


def speed_report(result: dict[str, Any]) -> str:
    """The summary table printed at the end."""
    s = result["settings"]
    lines = [
        f"device {s['device']} ({s['device_name']}), {s['threads']} threads, {s['workers']} "
        "workers, "
        f"{s['image_size']} px, batch {s['batch_size']}",
        "matmul peak: "
        + ", ".join(f"{d} {p:.2f} TFLOP/s" for d, p in result["matmul_peak_tflop_s"].items()),
        f"GFLOP per image: train {result['gflop_per_image']['train']:.1f}, "
        f"inference {result['gflop_per_image']['infer']:.1f}",
        "",
    ]
    lines += [_row(r) for r in result["model"]]
    d = result["data"]
    lines += [
        "",
        f"data   decode+resize (once, cached) {d['decode_img_s']:8.1f} img/s; "
        f"augment+collate per epoch {d['augment_img_s']:8.1f} img/s ({d['images']} images)",
        f"end-to-end Trainer.fit epoch        {result['end_to_end_img_s']:8.1f} img/s",
        _onnx_row(result["onnxruntime"])
        if result.get("onnxruntime")
        else "onnxruntime: skipped (onnx=false)",
        "",
        f"defaults ({s['dtype']}; "
        + ", ".join(
            f"{k} {'channels_last' if cl else 'NCHW'}" for k, cl in s["channels_last"].items()
        )
        + "): "
        f"train {result['train_img_s']:.1f}, infer {result['infer_img_s']:.1f}, "
        f"data {result['data_img_s']:.1f}, end-to-end {result['end_to_end_img_s']:.1f} img/s",
    ]
    return "\n".join(lines)
