"""TensorBoard's HParams tab, made for sweeps: each run records the knobs its sweep varies and the
recipe's main knobs (no ``_target_`` paths, worker counts, cache flags or paths: those stay in
``.hydra/``) and the few metrics that compare runs; a sweep's folder gets one experiment summary
that lists the varied knobs first.

TensorBoard (2.21) orders the HParams columns by (varies between runs first, then name) and ticks
the first five; it takes the column list from the first experiment summary it finds. So a sweep's
jobs write no experiment summary of their own (only their session: values, then metrics and status);
``write_sweep_experiment`` writes the sweep's one, marking the varied knobs, at the end of the
multirun (``lungseg.training.sweeps``). A single run writes its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp

log = logging.getLogger(__name__)

# The recipe's main knobs, after whatever a sweep varies; loss, scheduler and augment by the config
# file chosen.
MAIN_KNOBS = (
    "optimizer.lr",
    "model.dropout",
    "model.noise_std",
    "model.base_filters",
    "model.depth",
    "data.image_size",
    "data.batch_size",
    "loss",
    "scheduler",
    "augment",
    "trainer.max_epochs",
    "seed",
)
# Scalars each run writes for the table: (tag, column title); per-image Dice only where the run has
# it.
HPARAMS_METRICS = (
    ("best/val_dice", "best val Dice"),
    ("best/val_dice_per_image", "best val Dice per image"),
    ("best/val_loss", "best val loss"),
    ("test/dice", "test Dice"),
    ("run/epochs", "epochs"),
    ("run/wall_s", "wall time (s)"),
)
# file-name suffix of the sweep folder's experiment summary (rewritten by each summary)
SWEEP_EVENTS = ".sweep"


def _choices() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {
        str(k): str(v)
        for k, v in (HydraConfig.get().runtime.get("choices") or {}).items()
        if v is not None
    }


def _scalar(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else str(value)


def knob_value(
    cfg: DictConfig, key: str, choices: Mapping[str, str]
) -> bool | int | float | str | None:
    """A knob's value in the run: a config-group choice (``loss`` -> ``bce_dice``), else the
    resolved value at ``key`` (a group without a recorded choice shows its ``_target_``'s class);
    None when the config lacks it."""
    if key in choices:
        return choices[key]
    node = OmegaConf.select(cfg, key, default=None)
    if isinstance(node, DictConfig):
        target = node.get("_target_")
        return (
            str(target).rsplit(".", 1)[-1]
            if target
            else _scalar(OmegaConf.to_container(node, resolve=True))
        )
    return None if node is None else _scalar(node)


def run_hparams(
    cfg: DictConfig, varying: Iterable[str] = (), choices: Mapping[str, str] | None = None
) -> dict[str, bool | int | float | str]:
    """The run's hyperparameters for TensorBoard: the sweep's varying keys first, then
    :data:`MAIN_KNOBS`."""
    choices = _choices() if choices is None else choices
    values = {key: knob_value(cfg, key, choices) for key in dict.fromkeys([*varying, *MAIN_KNOBS])}
    return {key: value for key, value in values.items() if value is not None}


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR
    )
    return summary


def experiment_summary(
    hparams: Mapping[str, list[Any]], varying: Iterable[str], metrics: Iterable[str]
) -> summary_pb2.Summary:
    """The HParams experiment: one column per hparam (``name -> values seen``), typed by its values,
    the varying ones marked (TensorBoard lists and ticks those first), then the metrics by their
    titles."""
    varying, titles = set(varying), dict(HPARAMS_METRICS)
    infos = []
    for name, values in hparams.items():
        info = api_pb2.HParamInfo(
            name=name, differs=name in varying or len({repr(v) for v in values}) > 1
        )
        if values and all(isinstance(v, bool) for v in values):
            info.type = api_pb2.DATA_TYPE_BOOL
        elif values and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            info.type = api_pb2.DATA_TYPE_FLOAT64
        else:
            info.type = api_pb2.DATA_TYPE_STRING
            info.domain_discrete.extend(sorted({str(v) for v in values}))
        infos.append(info)
    metric_infos = [
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=titles.get(tag, tag))
        for tag in metrics
    ]
    experiment = api_pb2.Experiment(
        hparam_infos=infos, metric_infos=metric_infos, time_created_secs=time.time()
    )
    return _summary(
        metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)
    )


def _write(logger: TensorBoardLogger, summary: summary_pb2.Summary) -> None:
    # the writer torch's add_hparams uses too
    logger.experiment._get_file_writer().add_summary(summary)


def run_metrics(cfg: DictConfig) -> list[str]:
    """The :data:`HPARAMS_METRICS` a run of ``cfg`` writes: the best values its ``best_metrics``
    callback tracks, test Dice when it tests, epochs and wall time."""
    track = OmegaConf.select(cfg, "callbacks.best_metrics.track", default=None) or {}
    tags = {"best/" + str(k).replace("/", "_") for k in track} | {"run/epochs", "run/wall_s"}
    tags |= {"test/dice"} if cfg.get("test") else set()
    return [tag for tag, _ in HPARAMS_METRICS if tag in tags]


@rank_zero_only
def start_session(logger: TensorBoardLogger, cfg: DictConfig) -> None:
    """Record the run's hyperparameters when it starts (a run that fails still shows in the table);
    a run that is not a job of a sweep also writes its experiment summary (its columns and metrics).
    """
    from lungseg.config import in_multirun
    from lungseg.training.run_names import current_varying_keys

    varying = current_varying_keys()
    hparams = run_hparams(cfg, varying)
    _write(logger, hp.hparams_pb(hparams, trial_id=str(logger.version)))
    if not in_multirun():
        _write(
            logger, experiment_summary({k: [v] for k, v in hparams.items()}, (), run_metrics(cfg))
        )
    logger.experiment.flush()


@rank_zero_only
def end_session(logger: TensorBoardLogger, metrics: Mapping[str, float], wall_s: float) -> None:
    """Write the comparison metrics the run lacks as scalars (best values, epochs, wall time), then
    its status."""
    logged = {k: float(v) for k, v in metrics.items() if k.startswith("best/")}
    logged.update({"run/epochs": float(metrics.get("epochs", 0)), "run/wall_s": round(wall_s, 1)})
    logger.log_metrics(logged, step=0)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    _write(
        logger,
        _summary(
            metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)
        ),
    )
    logger.experiment.flush()


def read_session(events_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """(trial id, hparams) that a run's events record, or None without any."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    events = EventAccumulator(
        str(events_dir), size_guidance={"images": 1, "scalars": 1, "tensors": 1}
    )
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME).get(metadata.SESSION_START_INFO_TAG)
    if content is None:
        return None
    start = metadata.parse_session_start_info_plugin_data(content)
    values = {
        name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()
    }
    return start.group_name, {k: bool(v) if isinstance(v, bool) else v for k, v in values.items()}


def write_sweep_experiment(
    sweep_dir: Path, sessions: list[dict[str, Any]], varying: list[str], metrics: Iterable[str]
) -> Path:
    """Write the sweep's experiment summary into ``sweep_dir`` (replacing an earlier one): its
    columns are the hparams the jobs recorded, varying keys first (in sweep order), then
    :data:`MAIN_KNOBS`, then any other."""
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    names = list(dict.fromkeys([*varying, *MAIN_KNOBS, *(k for s in sessions for k in s)]))
    seen = {name: [s[name] for s in sessions if name in s] for name in names}
    summary = experiment_summary({n: v for n, v in seen.items() if v}, varying, metrics)
    for old in sweep_dir.glob(f"events.out.tfevents.*{SWEEP_EVENTS}"):
        old.unlink()
    writer = EventFileWriter(str(sweep_dir), filename_suffix=SWEEP_EVENTS)
    writer.add_event(event_pb2.Event(wall_time=time.time(), summary=summary))
    writer.close()
    return next(sweep_dir.glob(f"events.out.tfevents.*{SWEEP_EVENTS}"))
