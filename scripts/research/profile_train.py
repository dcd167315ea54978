"""Research script, not a pipeline: produced the training-step profile in docs/TRAINING-PROFILE.md
at commit 3dd2d2f; kept to reproduce or extend them.

Profile one training step of the original network, or compare configurations step by step (A/B).

    python scripts/research/profile_train.py # the baseline recipe: 256 px, batch 8 python
    scripts/research/profile_train.py --threads 1 module.channels_last=false python
    scripts/research/profile_train.py --ab "module.channels_last=true" "module.channels_last=false"
    --pairs 5

The step is the one Lightning runs in a fit: ``LungSegModule.training_step`` (forward, BCE, the L2
term's value, the train metrics), ``backward``, ``on_before_optimizer_step`` (the L2 term's
gradient), the configured optimiser's ``step`` and ``zero_grad``. The profile groups each operator's
self CPU time by what it belongs to: the innermost module whose forward ran it (Conv2d,
ConvTranspose2d, BatchNorm2d, ReLU, the decoder's concatenation, ...) and, in the backward pass, the
module whose forward op made the autograd node (matched by sequence number); copies (``copy_``,
``clone``, ``contiguous``, ``_to_copy``) are counted as memory-format conversions wherever they run.
``--ab`` builds one module per variant (each a space-separated list of overrides) and alternates
their steps, so both see the same load, and reports the median step of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from lungseg.config import CONFIG_DIR
from lungseg.training.module import LungSegModule

MODULE_TAG, PHASE_TAG, BACKWARD_TAG = "module::", "phase::", "autograd::engine::evaluate_function: "
COPIES = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::to"}
# what each module type's ops are reported as
GROUPS = {
    "Conv2d": "Conv2d",
    "ConvTranspose2d": "ConvTranspose2d",
    "BatchNorm2d": "BatchNorm2d",
    "ReLU": "ReLU",
    "DecoderBlock": "cat (decoder)",
    "MaxPool2d": "MaxPool2d",
    "Dropout2d": "Dropout2d",
    "GaussianNoise": "GaussianNoise",
    "BCEWithLogitsLoss": "loss (BCE)",
    "LungSegModule": "input layout",
}


def build(overrides: list[str]) -> tuple[LungSegModule, torch.optim.Optimizer]:
    """The baseline experiment's LungSegModule (plus ``overrides``) and the optimiser it
    configures."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=baseline", *overrides])
    module: LungSegModule = instantiate(cfg.module).train()
    optimizer = module.configure_optimizers()["optimizer"]
    return module, optimizer


def make_batch(size: int, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(batch, 1, size, size, generator=g),
        "mask": (torch.rand(batch, 1, size, size, generator=g) > 0.5).float(),
    }


def train_step(
    module: LungSegModule, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]
) -> Callable[[], None]:
    """Lightning's automatic optimisation of one batch, without the Trainer around it."""

    def step() -> None:
        with record_function(PHASE_TAG + "training_step"):
            loss = module.training_step(batch, 0)
        with record_function(PHASE_TAG + "backward"):
            loss.backward()
        with record_function(PHASE_TAG + "before_optimizer_step"):
            module.on_before_optimizer_step(optimizer)
        with record_function(PHASE_TAG + "optimizer"):
            optimizer.step()
        with record_function(PHASE_TAG + "zero_grad"):
            optimizer.zero_grad()

    return step


@contextmanager
def labelled_modules(root: nn.Module) -> Iterator[None]:
    """Mark every module's forward as a profiler range named after its class."""
    ranges: dict[int, list] = defaultdict(list)

    def enter(m: nn.Module, *_: object) -> None:
        r = record_function(MODULE_TAG + type(m).__name__)
        r.__enter__()
        ranges[id(m)].append(r)

    def leave(m: nn.Module, *_: object) -> None:
        ranges[id(m)].pop().__exit__(None, None, None)

    handles = [
        h
        for m in root.modules()
        for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _enclosing(event, prefix: str) -> str | None:  # noqa: ANN001 - torch's FunctionEvent
    e = event
    while e is not None:
        if e.name.startswith(prefix):
            return e.name[len(prefix) :]
        e = e.cpu_parent
    return None


def group_of(event, forward_group: dict[int, str]) -> str:  # noqa: ANN001
    """The row an operator's self time goes to."""
    phase = _enclosing(event, PHASE_TAG)
    if phase in ("optimizer", "zero_grad", "before_optimizer_step"):
        return {
            "optimizer": "optimizer step",
            "zero_grad": "zero_grad",
            "before_optimizer_step": "L2 term gradient (hook)",
        }[phase]
    if event.name in COPIES:
        return "memory-format copies"
    node = event
    while node is not None and not node.name.startswith(BACKWARD_TAG):
        node = node.cpu_parent
    if node is not None:  # backward: the module whose forward created this autograd node
        kind = node.name[len(BACKWARD_TAG) :]
        if kind == "AccumulateGrad":
            return "grad accumulation"
        owner = forward_group.get(node.sequence_nr)
        return f"{owner or 'other: ' + kind} bwd"
    if event.name.startswith(BACKWARD_TAG):
        return "autograd engine"
    module = _enclosing(event, MODULE_TAG)
    if module is not None:
        return GROUPS.get(module, module) + " fwd"
    method = _enclosing(event, "LungSegModule.")
    if method == "l2_penalty":
        return "L2 term fwd"
    return "metrics and logging" if phase == "training_step" else "other"


def grouped(prof: profile) -> tuple[dict[str, float], float]:
    """Self CPU seconds per group, and the total."""
    events = [e for e in prof.events() if e.device_type.name == "CPU"]
    forward_group: dict[int, str] = {}
    for e in events:
        if (
            e.sequence_nr >= 0
            and not e.name.startswith(BACKWARD_TAG)
            and _enclosing(e, BACKWARD_TAG) is None
        ):
            module = _enclosing(e, MODULE_TAG)
            if module is None and _enclosing(e, "LungSegModule.") == "l2_penalty":
                module = "L2 term"
            if module is not None:
                forward_group[e.sequence_nr] = GROUPS.get(module, module)
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.name.startswith((MODULE_TAG, PHASE_TAG, "LungSegModule.")):
            continue
        totals[group_of(e, forward_group)] += e.self_cpu_time_total / 1e6
    return dict(totals), sum(totals.values())


@contextmanager
def labelled_l2(module: LungSegModule) -> Iterator[None]:
    """Mark the L2 term's forward (a method, not a module) as a profiler range."""
    plain = module.l2_penalty

    def l2_penalty() -> torch.Tensor:
        with record_function("LungSegModule.l2_penalty"):
            return plain()

    module.l2_penalty = l2_penalty  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.l2_penalty


def run_profile(args: argparse.Namespace) -> None:
    module, optimizer = build(args.overrides)
    step = train_step(module, optimizer, make_batch(args.size, args.batch))
    for _ in range(args.warmup):
        step()
    with (
        labelled_modules(module),
        labelled_l2(module),
        profile(activities=[ProfilerActivity.CPU]) as prof,
    ):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        wall = (time.perf_counter() - start) / args.steps
    groups, total = grouped(prof)
    print(
        f"training step: {wall:.2f} s wall, {args.batch / wall:.2f} img/s ({args.steps} steps "
        "profiled, "
        f"{torch.get_num_threads()} threads, overrides: {' '.join(args.overrides) or 'none'})\n"
    )
    print(
        f"| {'group (self CPU time)':<28} | {'s/step':>7} | {'share':>6} |\n| {'-' * 28} | "
        f"{'-' * 7} | {'-' * 6} |"
    )
    for name, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        if seconds / total >= args.min_share:
            print(f"| {name:<28} | {seconds / args.steps:7.3f} | {seconds / total:6.1%} |")
    print(f"| {'total':<28} | {total / args.steps:7.3f} | {1:6.0%} |\n")
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=48
        )
    )


def run_ab(args: argparse.Namespace) -> None:
    variants = [v.split() for v in args.ab]
    batch = make_batch(args.size, args.batch)
    steps = [train_step(*build(args.overrides + v), batch) for v in variants]
    for step in steps:
        for _ in range(args.warmup):
            step()
    times: list[list[float]] = [[] for _ in steps]
    for i in range(args.pairs):
        # ABBA: no order bias
        for k in range(len(steps)) if i % 2 == 0 else reversed(range(len(steps))):
            start = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - start)
        print(f"pair {i + 1}: " + "  ".join(f"{t[-1]:.2f} s" for t in times), flush=True)
    medians = [statistics.median(t) for t in times]
    print(f"\n{torch.get_num_threads()} threads, {args.pairs} alternations, median s/step (img/s):")
    for v, m in zip(args.ab, medians, strict=True):
        print(
            f"  {v or '(as configured)':<50} {m:7.2f} s  {args.batch / m:6.2f} img/s  "
            f"{medians[0] / m:5.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the baseline experiment")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="steps profiled")
    parser.add_argument("--rows", type=int, default=20, help="rows of torch's per-operator table")
    parser.add_argument(
        "--min-share", type=float, default=0.001, help="hide groups below this share"
    )
    parser.add_argument(
        "--ab", nargs="+", metavar="OVERRIDES", help="variants to alternate ('' = as configured)"
    )
    parser.add_argument("--pairs", type=int, default=5, help="alternations in --ab")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    run_ab(args) if args.ab else run_profile(args)


if __name__ == "__main__":
    main()
