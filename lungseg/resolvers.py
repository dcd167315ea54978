"""OmegaConf resolvers used in ``conf/``: hardware-dependent defaults decided when the config is
composed."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from lungseg.config import monitor_mode
from lungseg.runs import checkpoint_run


def precision(device: str = "auto") -> str:
    """Lightning precision for ``device`` (cpu, gpu or auto = gpu when CUDA is available): the
    device's native one (``lungseg.runtime.native_precision``; imported here, so ``import lungseg``
    does not import torch)."""
    from lungseg.runtime import accelerator_device_type, native_precision

    return native_precision(accelerator_device_type(device))


def resume_dir(ckpt_path: str | None, default: str) -> str:
    """``hydra.run.dir`` of a run: the original run folder when resuming
    ``<run>/checkpoints/<name>.ckpt``."""
    run = checkpoint_run(ckpt_path)
    return default if run is None else str(run)


def config_subdir(ckpt_path: str | None, stamp: str) -> str:
    """``hydra.output_subdir``: ``.hydra``, or ``.hydra/resume-<stamp>`` so a resume keeps the
    original config."""
    return ".hydra" if checkpoint_run(ckpt_path) is None else f".hydra/resume-{stamp}"


def run_name_resolver(*, _root_: Any) -> str:
    """``${lungseg.run_name:}``: this run's readable name (``lungseg.training.run_names``; imported
    here, so ``import lungseg`` does not import Hydra's internals)."""
    from lungseg.training.run_names import current_run_name

    return current_run_name(_root_)


RESOLVERS = {
    "lungseg.precision": precision,
    "lungseg.monitor_mode": monitor_mode,
    "lungseg.resume_dir": resume_dir,
    "lungseg.config_subdir": config_subdir,
    "lungseg.run_name": run_name_resolver,
}


def register() -> None:
    """Register the ``${lungseg.*:...}`` resolvers used in conf/ (idempotent)."""
    for name, function in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
