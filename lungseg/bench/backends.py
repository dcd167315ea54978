"""``python -m lungseg.bench mode=backends``: inference of one network by every backend and
precision this host runs, side by side in one process: PyTorch fp32 / bf16 (NCHW and
channels_last), ONNX Runtime fp32 / INT8 (QDQ, ``lungseg.quantize``), OpenVINO fp32 / bf16 / INT8
(NNCF, and the ONNX Runtime QDQ file read by OpenVINO).

Every row runs through the backend class ``lungseg.predict`` uses, on one random batch at the
model's size, with the same threads: a warm-up call each, then ``backends.rounds`` rounds
alternating between the rows (load changes hit all alike), the median of each. The table gives
images/s, the ratio to PyTorch's best float row, the CPU's flags and the load average, and which
backend ``backend=auto`` would pick for each kind of file.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lungseg.artifacts.checkpoint import TrainedModel, load_checkpoint
from lungseg.artifacts.contract import INPUT_NAME
from lungseg.artifacts.description import ModelDescription
from lungseg.artifacts.exports import ProbabilityModel, export_metadata, export_onnx
from lungseg.artifacts.model_card import model_card
from lungseg.artifacts.quantize import quantize_int8
from lungseg.bench.speed import use_data_root
from lungseg.bench.timing import build_module
from lungseg.cpu import cpu_flags, cpu_has_native_bf16, cpu_name
from lungseg.errors import LungsegError
from lungseg.inference.backends.choice import time_backends
from lungseg.inference.backends.onnxruntime import OnnxBackend
from lungseg.inference.backends.pytorch import TorchBackend
from lungseg.inference.inputs import calibration_files, calibration_images
from lungseg.runtime import native_precision, resolve_precision, set_threads

BACKENDS = ("torch", "onnxruntime", "openvino")
# Environment variables that cap the instruction set oneDNN (PyTorch, OpenVINO) and ATen use: when
# set, the table says so (an AVX2 path emulated on a newer CPU is not an AVX2 CPU; ONNX Runtime
# ignores them).
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "LUNGSEG_CPU_BF16")


def chosen_backends(setting: Any) -> list[str]:
    """``backend``: all, one name or a list; PyTorch is always timed (the reference)."""
    names = (
        list(BACKENDS)
        if setting in (None, "all")
        else ([str(setting)] if isinstance(setting, str) else [str(s) for s in setting])
    )
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise LungsegError(
            f"backend={setting}: mode=backends times all, or some of {', '.join(BACKENDS)}"
        )
    return ["torch"] + [n for n in names if n != "torch"]


def bench_model(cfg: DictConfig) -> tuple[TrainedModel, str]:
    """The network timed: ``backends.ckpt_path``'s, else the bench's own (untrained) network."""
    if cfg.backends.get("ckpt_path"):
        return load_checkpoint(cfg.backends.ckpt_path), str(cfg.backends.ckpt_path)
    net = build_module(cfg, channels_last=False).net.eval()
    description = ModelDescription(
        image_size=int(cfg.data.image_size), precision=native_precision("cpu")
    )
    return TrainedModel(net, description, {"channels_last": "auto"}), (
        f"the bench network ({sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, "
        "untrained)"
    )


def torch_rows(model: TrainedModel) -> dict[str, tuple[dict[str, str], Any]]:
    """PyTorch in fp32 and, where the CPU has it natively, bf16; NCHW and channels_last each."""
    rows = {}
    for precision in ["32-true"] + (["bf16-mixed"] if cpu_has_native_bf16() else []):
        for channels_last in (False, True):
            hparams = {**model.hparams, "channels_last": channels_last, "compile": False}
            variant = TrainedModel(copy.deepcopy(model.net), model.description, hparams)
            layout = "channels_last" if channels_last else "NCHW"
            rows[f"torch {precision} {layout}"] = (
                {"backend": "torch", "model": "fp32", "precision": precision, "layout": layout},
                TorchBackend(variant, "cpu", precision),
            )
    return rows


def exported_rows(
    cfg: DictConfig, model: TrainedModel, folder: Path, names: list[str], threads: int
) -> tuple[dict[str, tuple[dict[str, str], Any]], dict[str, Any]]:
    """ONNX Runtime and OpenVINO rows of the network exported to ONNX (fp32) and quantised (INT8),
    calibrated on the data's train images; and how the quantisation went."""
    size = model.description.image_size
    fp32, int8 = folder / "bench_fp32.onnx", folder / "bench_int8.onnx"
    card = model_card(model.description)
    metadata = export_metadata(model, "bench", card)
    export_onnx(ProbabilityModel(model.net), fp32, size, metadata=metadata)
    files = calibration_files(cfg.data.root, int(cfg.backends.calibration_images))
    images = calibration_images(files, size, model.description.intensity)
    start = time.perf_counter()
    quantize_int8(fp32, int8, images, INPUT_NAME)
    info: dict[str, Any] = {
        "calibration_images": len(files),
        "ort_quantize_s": time.perf_counter() - start,
        "files": {"fp32": str(fp32), "int8": str(int8)},
    }
    rows: dict[str, tuple[dict[str, str], Any]] = {}
    if "onnxruntime" in names:
        for kind, path in (("fp32", fp32), ("int8", int8)):
            rows[f"onnxruntime {kind}"] = (
                {
                    "backend": "onnxruntime",
                    "model": kind,
                    "precision": "32-true" if kind == "fp32" else "int8",
                },
                OnnxBackend(path, "cpu", threads),
            )
    if "openvino" in names:
        rows.update(openvino_rows(cfg, fp32, int8, images, threads, info))
    return rows, info


def openvino_rows(
    cfg: DictConfig, fp32: Path, int8: Path, images: Any, threads: int, info: dict[str, Any]
) -> dict[str, tuple[dict[str, str], Any]]:
    """OpenVINO: the fp32 file with fp32 and bf16 float operations, NNCF's INT8 of it (every
    operation quantised: the fastest INT8), the ONNX Runtime QDQ file, and ``backends.int8_ir``
    when given; each INT8 model with fp32 and bf16 float operations."""
    import nncf

    from lungseg.artifacts.openvino import read_metadata, read_model, write_metadata
    from lungseg.inference.backends.openvino import OpenVinoBackend

    floats = ["32-true"] + (["bf16-mixed"] if cpu_has_native_bf16() else [])
    model = read_model(fp32)
    start = time.perf_counter()
    quantized = nncf.quantize(
        model,
        nncf.Dataset([x[None] for x in images]),
        subset_size=len(images),
        target_device=nncf.TargetDevice.CPU,
    )
    info["nncf_quantize_s"] = time.perf_counter() - start
    write_metadata(quantized, read_metadata(model))
    models: list[tuple[str, Any]] = [
        ("fp32", model),
        ("int8 NNCF", quantized),
        ("int8 QDQ file", int8),
    ]
    if cfg.backends.get("int8_ir"):
        ir = Path(cfg.backends.int8_ir)
        models.append((f"int8 IR {ir.name}", ir))
    rows = {}
    for kind, source in models:
        for precision in floats:
            backend = OpenVinoBackend(source, "cpu", threads, precision)
            rows[f"openvino {kind} {precision}"] = (
                {
                    "backend": "openvino",
                    "model": kind,
                    "precision": backend.precision,
                    "float_precision": backend.float_precision,
                },
                backend,
            )
    return rows


def auto_picks(rows: list[dict[str, Any]], model: TrainedModel) -> dict[str, str]:
    """Which backend ``backend=auto`` would pick here for each kind of file, from the rows it
    compares (each backend at its ``precision=auto``)."""
    trained = model.description.precision
    torch_precision = resolve_precision(torch.device("cpu"), "auto", trained)
    from lungseg.inference.backends.openvino import float_precision

    ov_precision = float_precision("auto", trained)

    def rate(**match: str) -> float | None:
        found = [r["img_s"] for r in rows if all(r.get(k) == v for k, v in match.items())]
        return found[0] if found else None

    layout = "channels_last" if model.channels_last else "NCHW"
    kinds = {
        "checkpoint": {
            "torch": rate(backend="torch", precision=torch_precision, layout=layout),
            "openvino": rate(backend="openvino", model="fp32", float_precision=ov_precision),
        },
        "fp32 .onnx": {
            "onnxruntime": rate(backend="onnxruntime", model="fp32"),
            "openvino": rate(backend="openvino", model="fp32", float_precision=ov_precision),
        },
        "INT8 .onnx": {
            "onnxruntime": rate(backend="onnxruntime", model="int8"),
            "openvino": rate(
                backend="openvino", model="int8 QDQ file", float_precision=ov_precision
            ),
        },
    }
    picks = {}
    for kind, rates in kinds.items():
        known = {name: r for name, r in rates.items() if r is not None}
        if known:
            best = max(known, key=known.get)
            rates_text = ", ".join(f"{n} {r:.1f}" for n, r in known.items())
            picks[kind] = f"{best} ({rates_text} img/s)"
    return picks


def run_backends(cfg: DictConfig) -> dict[str, Any]:
    """Time every backend and precision; returns the rows, the host and the settings."""
    set_threads(cfg.get("threads"))
    threads = torch.get_num_threads()
    use_data_root(cfg)
    instantiate(cfg.data).prepare_data()  # the built-in sample is written on first use
    names = chosen_backends(cfg.get("backend"))
    model, what = bench_model(cfg)
    size, batch = model.description.image_size, int(cfg.batch_size)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(cfg.onnx_dir) if cfg.get("onnx_dir") else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        built = torch_rows(model)
        info: dict[str, Any] = {}
        if len(names) > 1:
            extra, info = exported_rows(cfg, model, folder, names, threads)
            built.update(extra)
        start = time.perf_counter()
        rates = time_backends(
            {k: b for k, (_, b) in built.items()}, size, batch, int(cfg.backends.rounds)
        )
        timing_s = time.perf_counter() - start
    best_float = max(r for k, r in rates.items() if built[k][0]["backend"] == "torch")
    rows = [
        {**built[k][0], "name": k, "img_s": r, "vs_torch_best_float": r / best_float}
        for k, r in rates.items()
    ]
    return {
        "rows": rows,
        "auto_picks": auto_picks(rows, model),
        "quantisation": info,
        "host": {
            "cpu": cpu_name(),
            "flags": cpu_flags(),
            "threads": threads,
            "isa_caps": {k: os.environ[k] for k in ISA_CAPS if k in os.environ},
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": {
            "model": what,
            "image_size": size,
            "batch_size": batch,
            "rounds": int(cfg.backends.rounds),
            "timing_s": timing_s,
            "data_root": str(cfg.data.root),
        },
    }


def backends_report(result: dict[str, Any]) -> str:
    """The table printed at the end of ``mode=backends``."""
    h, s = result["host"], result["settings"]
    loads = " / ".join(
        " ".join(f"{x:.2f}" for x in h[k]) for k in ("load_average_before", "load_average_after")
    )
    caps = " ".join(f"{k}={v}" for k, v in h.get("isa_caps", {}).items())
    lines = [
        f"CPU {h['cpu']}; flags: {' '.join(h['flags']) or 'none of the speed flags'}"
        + (f"; capped by {caps}" if caps else ""),
        f"{s['model']}; {s['image_size']} px, batch {s['batch_size']}, {h['threads']} "
        f"threads, median of {s['rounds']} interleaved rounds; load average before / after: "
        f"{loads}",
        "",
        f"{'backend':<12} {'model':<24} {'precision':<11} {'float ops':<11} {'layout':<14} "
        f"{'img/s':>7} {'vs PyTorch best float':>22}",
    ]
    for r in sorted(result["rows"], key=lambda r: -r["img_s"]):
        lines.append(
            f"{r['backend']:<12} {r['model']:<24} {r['precision']:<11} "
            f"{r.get('float_precision', ''):<11} {r.get('layout', ''):<14} "
            f"{r['img_s']:7.2f} {r['vs_torch_best_float']:21.2f}x"
        )
    lines += [
        "",
        "backend=auto would pick (each backend at precision=auto): "
        + "; ".join(f"{kind}: {pick}" for kind, pick in result["auto_picks"].items()),
    ]
    return "\n".join(lines)
