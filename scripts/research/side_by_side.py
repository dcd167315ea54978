"""Research script, not a pipeline: produced the Keras-vs-lungseg side-by-side figures
(docs/TRAINING-PROFILE.md) at commit aae3cf1; kept to reproduce or extend them.

The Keras original and lungseg trees (before / after a change) timed step by step in turn, under the
same load.

    python scripts/research/side_by_side.py --keras /tmp/kvenv/bin/python --trees /tmp/wt-before
    /tmp/wt-speed --threads 1

Each contender is a worker process (the Keras one: ``scripts/research/keras_original_bench.py
--serve``; a lungseg tree: this script's ``--worker`` run with that tree first on the path) that
runs one step per request; the driver asks them in turn (the order rotated each round), so slow and
fast moments of a shared machine fall on all of them alike, and reports each one's median images/s
and the ratios to Keras. A lungseg training step is the one a fit runs (``training_step``,
``backward``, ``on_before_optimizer_step``, the configured optimiser), with the tree's own
configuration of the baseline experiment; inference is the network in eval mode, channels_last, no
autograd.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def worker(threads: int, size: int, batch: int, precision: str) -> None:
    """Serve 'train' / 'infer' requests on stdin with this checkout's lungseg, in ``precision``
    (auto: what a fit and predict pick on this CPU, bf16 where it has bf16 in hardware)."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from lungseg.config import CONFIG_DIR

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=baseline"])
    if precision == "auto":
        from lungseg.runtime import has_native_bf16

        precision = "bf16" if has_native_bf16("cpu") else "fp32"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    module = instantiate(cfg.module).train()
    optimizer = module.configure_optimizers()["optimizer"]
    batch_ = {
        "image": torch.rand(batch, 1, size, size),
        "mask": (torch.rand(batch, 1, size, size) > 0.5).float(),
    }
    net = instantiate(cfg.model).eval().to(memory_format=torch.channels_last)
    images = batch_["image"].contiguous(memory_format=torch.channels_last)

    def train() -> None:
        with autocast:  # as Lightning's bf16-mixed precision plugin wraps training_step
            loss = module.training_step(batch_, 0)
        loss.backward()
        module.on_before_optimizer_step(optimizer)
        optimizer.step()
        optimizer.zero_grad()

    def infer() -> None:
        with torch.inference_mode(), autocast:
            torch.sigmoid(net(images).float())

    steps = {"train": train, "infer": infer}
    print("ready", flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        steps[line.strip()]()
        print(time.perf_counter() - start, flush=True)


def start(name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    while (line := proc.stdout.readline()) and line.strip() != "ready":
        pass
    if not line:
        raise SystemExit(f"{name} did not start: {' '.join(command)}")
    return proc


def ask(proc: subprocess.Popen, kind: str) -> float:
    proc.stdin.write(kind + "\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras", default="/tmp/kvenv/bin/python", help="a Python with TensorFlow")
    parser.add_argument("--trees", nargs="+", default=[], help="lungseg checkouts to compare")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="lungseg's (auto: the host's)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.threads, args.size, args.batch, args.precision)
    common = ["--threads", str(args.threads), "--size", str(args.size), "--batch", str(args.batch)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    procs = {
        "keras": start(
            "keras",
            [args.keras, str(HERE.parent / "keras_original_bench.py"), "--serve", *common],
            env,
        )
    }
    for tree in args.trees:
        worker_args = [
            sys.executable,
            str(HERE),
            "--worker",
            "--precision",
            args.precision,
            *common,
        ]
        procs[tree] = start(tree, worker_args, {**env, "PYTHONPATH": tree})
    names = list(procs)
    times: dict[tuple[str, str], list[float]] = {}
    for kind in ("train", "infer"):
        for name in names:
            for _ in range(args.warmup):
                ask(procs[name], kind)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                times.setdefault((name, kind), []).append(ask(procs[name], kind))
            print(
                f"{kind} round {r + 1}: "
                + "  ".join(f"{n} {times[n, kind][-1]:.1f} s" for n in names),
                flush=True,
            )
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    print(
        f"\n{args.threads} threads, {args.size} px, batch {args.batch}, {args.rounds} rounds, "
        "median images/s "
        "(x Keras):"
    )
    for name in names:
        cells = []
        for kind in ("train", "infer"):
            rate = args.batch / statistics.median(times[name, kind])
            ratio = statistics.median(times["keras", kind]) / statistics.median(times[name, kind])
            cells.append(f"{kind} {rate:.3f} ({ratio:.2f}x)")
        print(f"  {name:<32} " + "  ".join(cells))


if __name__ == "__main__":
    main()
