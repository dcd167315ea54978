"""Research script, not a pipeline: produced the INT8 speed tables and operator profiles in
docs/INT8.md at commit 73aacdd; kept to reproduce or extend them.

Images/s of ONNX files on the CPU: onnxruntime and, when the optional ``openvino`` package imports,
OpenVINO; with ``--profile`` onnxruntime's time per operator type. Runs are interleaved (load
changes hit every model alike).

    python -m lungseg.bench onnx_dir=bench-onnx # writes the bench network as bench_fp32.onnx /
    bench_int8.onnx python scripts/research/int8_speed.py bench-onnx/bench_fp32.onnx
    bench-onnx/bench_int8.onnx --profile
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort


def ort_runner(path: Path, threads: int, profile: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = profile
    # not into the cwd
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "lungseg_ort_profile")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def openvino_runner(path: Path, threads: int) -> Callable[[np.ndarray], object] | None:
    """OpenVINO's CPU plugin on the same ONNX file (it reads QDQ models as INT8); None when it is
    not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    compiled = ov.Core().compile_model(
        str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    )
    request = compiled.create_infer_request()
    return lambda images: request.infer({0: images})


def op_profile(
    path: Path, images: np.ndarray, threads: int, runs: int = 3
) -> list[tuple[str, float, int]]:
    """(op type, ms per run, nodes) from onnxruntime's profiler, most expensive first."""
    session = ort_runner(path, threads, profile=True)
    name = session.get_inputs()[0].name
    for _ in range(runs):
        session.run(None, {name: images})
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    total, nodes = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
            nodes[e["args"]["op_name"]] += 1
    return [(op, ms, nodes[op] // runs) for op, ms in total.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path, nargs="+")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    images = np.random.default_rng(0).random(
        (args.batch, 1, args.size, args.size), dtype=np.float32
    )
    runners: dict[str, Callable[[], object]] = {}
    for path in args.onnx:
        session = ort_runner(path, args.threads)
        runners[f"onnxruntime {path.name}"] = lambda s=session: s.run(
            None, {s.get_inputs()[0].name: images}
        )
        vino = openvino_runner(path, args.threads)
        if vino is not None:
            runners[f"openvino {path.name}"] = lambda v=vino: v(images)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.warmup):
        for run in runners.values():
            run()
    for _ in range(args.repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    print(f"{args.size} px, batch {args.batch}, {args.threads} threads, median of {args.repeats}")
    for name, t in times.items():
        rates = sorted(args.batch / s for s in t)
        print(
            f"{name:<40} {args.batch / statistics.median(t):7.2f} img/s  (range "
            f"{rates[0]:.2f}-{rates[-1]:.2f})"
        )
    if args.profile:
        for path in args.onnx:
            rows = op_profile(path, images, args.threads)
            total = sum(ms for _, ms, _ in rows)
            print(f"\nonnxruntime {path.name}: {total:.0f} ms of kernels per batch")
            for op, ms, n in rows[:8]:
                print(f"  {op:<22} {ms:8.1f} ms {ms / total:6.1%}  ({n} nodes)")


if __name__ == "__main__":
    main()
