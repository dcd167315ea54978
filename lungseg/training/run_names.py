"""Readable run names: ``lr=0.001,dropout=0.1,noise=0`` for a job of a sweep (the overrides that
vary between its jobs), ``demo_2026-11-30_17-10-00`` for a single run (the experiment and its time).
TensorBoard lists a run's events under ``<run>/tensorboard/<name>``
(``conf/logger/tensorboard.yaml``), the sweep summary names jobs so.

Which keys a sweep varies: its command line's sweep overrides (``optimizer.lr=1e-4,1e-3``,
``choice(...)``) and ``hydra.sweeper.params`` (a grid in the config, Optuna's search space), written
to ``<sweep>/sweep.yaml`` when the multirun starts (``SweepSummary.on_multirun_start``), so every
job, on any launcher, reads the same list.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from lungseg.atomic import write_text
from lungseg.config import in_multirun

SWEEP_FILE = "sweep.yaml"
SHORT_KEYS = {
    "optimizer.lr": "lr",
    "model.dropout": "dropout",
    "model.noise_std": "noise",
    "data.batch_size": "bs",
    "data.image_size": "size",
    "trainer.max_epochs": "epochs",
}
MAX_VALUE = 24  # characters of one value in a name
# characters of a whole name (longer ones are cut and end in a hash of the full name)
MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]")
_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME = re.compile(r"\d{2}-\d{2}-\d{2}")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_stamps: dict[str, str] = {}


def split_override(override: str) -> tuple[str, str]:
    """``"+model.dropout=0.1"`` -> ``("model.dropout", "0.1")`` (``+``/``~`` prefixes and
    ``@package`` dropped)."""
    key, _, value = str(override).partition("=")
    return key.lstrip("+~").split("@")[0], value


def sweep_keys(overrides: Iterable[str], params: Mapping[str, Any] | None = None) -> list[str]:
    """The keys a sweep varies: the sweep overrides among ``overrides`` (Hydra's own parser:
    ``a=1,2``, ``choice()``, ``range()``, ``interval()``), then the keys of
    ``hydra.sweeper.params``, in that order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    keys += [split_override(f"{k}=")[0] for k in (params or {})]
    return list(dict.fromkeys(keys))


def short_key(key: str) -> str:
    """``optimizer.lr`` -> ``lr``, ``model.noise_std`` -> ``noise``; any other key -> its last
    part."""
    return SHORT_KEYS.get(key, re.split(r"[./]", key)[-1])


def short_value(value: Any) -> str:
    """A value as a name shows it: numbers with 3 significant digits (``0.0`` -> ``0``, ``1e-05`` ->
    ``1e-5``), paths by their last part, nothing a file name cannot hold."""
    text = str(value).strip().strip("'\"")
    if _NUMBER.fullmatch(text):
        number = float(text)
        if math.isfinite(number):
            text = re.sub(
                r"e([+-])0*(\d)", lambda m: f"e{m[1].replace('+', '')}{m[2]}", f"{number:.3g}"
            )
    elif "/" in text.rstrip("/"):
        text = text.rstrip("/").rsplit("/", 1)[-1]
    return _UNSAFE.sub("_", text)[:MAX_VALUE] or "_"


def run_name(pairs: Iterable[tuple[str, Any]]) -> str:
    """``[("optimizer.lr", "0.001"), ("model.dropout", 0.1)]`` -> ``lr=0.001,dropout=0.1``: short,
    stable (the same values give the same name) and safe as a file name. Two keys with the same
    short form keep their full key."""
    pairs = list(pairs)
    shorts = [short_key(k) for k, _ in pairs]
    keys = [
        _UNSAFE.sub("_", k if shorts.count(s) > 1 else s)
        for (k, _), s in zip(pairs, shorts, strict=True)
    ]
    name = ",".join(f"{k}={short_value(v)}" for k, (_, v) in zip(keys, pairs, strict=True))
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}-{zlib.crc32(name.encode()):08x}"
    return name


def write_sweep_file(
    sweep_dir: Path, overrides: Iterable[str], params: Mapping[str, Any] | None
) -> list[str]:
    """Record the keys a multirun varies (and its command line) in ``<sweep>/sweep.yaml``; return
    the keys."""
    overrides = [str(o) for o in overrides]
    keys = sweep_keys(overrides, params)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_text(
        sweep_dir / SWEEP_FILE,
        yaml.safe_dump({"varying": keys, "overrides": overrides}, sort_keys=False),
    )
    return keys


def read_sweep_file(sweep_dir: Path) -> dict[str, Any]:
    """``<sweep>/sweep.yaml`` as written by :func:`write_sweep_file` ({} when there is none)."""
    try:
        return yaml.safe_load((Path(sweep_dir) / SWEEP_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def varying_keys(
    sweep_dir: Path, job_overrides: list[str], params: Mapping[str, Any] | None
) -> list[str]:
    """The keys a job's sweep varies: ``sweep.yaml``, else Hydra's ``multirun.yaml`` (basic
    sweeper), else the job's ``hydra.sweeper.params``, else every value override of the job (not
    config-group choices)."""
    recorded = read_sweep_file(sweep_dir).get("varying")
    if recorded:
        return list(recorded)
    try:
        multirun = yaml.safe_load((Path(sweep_dir) / "multirun.yaml").read_text()) or {}
        hydra = multirun.get("hydra", {})
        keys = sweep_keys(
            hydra.get("overrides", {}).get("task", []), hydra.get("sweeper", {}).get("params")
        )
    except (OSError, yaml.YAMLError, ValueError):
        keys = []
    if not keys and params:
        keys = sweep_keys([], params)
    return keys or [k for k, _ in map(split_override, job_overrides) if "." in k]


def job_run_name(keys: list[str], job_overrides: list[str], config: Any = None) -> str:
    """A sweep job's name: each varying key with this job's value (its override, else its value in
    ``config``)."""
    from omegaconf import OmegaConf

    values = dict(map(split_override, job_overrides))
    pairs = []
    for key in keys:
        value = values.get(key)
        if value is None and config is not None:
            value = OmegaConf.select(config, key, default=None)
        pairs.append((key, value))
    return run_name(pairs)


def single_run_name(task_name: str, output_dir: str | Path, resuming: bool = False) -> str:
    """``<task>_<date>_<time>`` from the run folder (``outputs/<date>/<time>``), else from the clock
    when the run starts; a resume keeps the name its folder's TensorBoard events already have."""
    output_dir = Path(output_dir)
    existing = sorted(d.name for d in (output_dir / "tensorboard").glob("*") if d.is_dir())
    if resuming and len(existing) == 1:
        return existing[0]
    if _TIME.fullmatch(output_dir.name) and _STAMP.fullmatch(output_dir.parent.name):
        stamp = f"{output_dir.parent.name}_{output_dir.name}"
    else:
        stamp = _stamps.setdefault(str(output_dir.resolve()), time.strftime("%Y-%m-%d_%H-%M-%S"))
    return _UNSAFE.sub("_", f"{task_name}_{stamp}")


def current_varying_keys() -> list[str]:
    """The keys the running job's sweep varies ([] outside a multirun)."""
    from hydra.core.hydra_config import HydraConfig

    if not in_multirun():
        return []
    hydra = HydraConfig.get()
    return varying_keys(
        Path(hydra.sweep.dir), list(hydra.overrides.task), hydra.sweeper.get("params")
    )


def current_run_name(_root_: Any = None) -> str:
    """The ``${lungseg.run_name:}`` resolver: this run's name, from Hydra's config of the running
    job."""
    from hydra.core.hydra_config import HydraConfig

    root = _root_ if _root_ is not None else {}
    task = str(root.get("task_name") or "run")
    if not HydraConfig.initialized():
        return single_run_name(task, ".")
    hydra = HydraConfig.get()
    output_dir = hydra.runtime.get("output_dir") or "."
    if not in_multirun() or root.get("ckpt_path"):
        return single_run_name(task, output_dir, resuming=bool(root.get("ckpt_path")))
    return (
        job_run_name(current_varying_keys(), list(hydra.overrides.task), root)
        or f"job{hydra.job.num}"
    )
