"""Where the Hydra configs are, and the optional Hydra plugins some of their options need."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lungseg.errors import LungsegError, exit_on_user_error, require_extra

_PACKAGE = Path(__file__).resolve().parent
# An installed wheel carries conf/ as lungseg/conf; a checkout (editable or not) has it beside the
# package.
CONFIG_DIR = _PACKAGE / "conf" if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent / "conf"

# Command-line choices served by a Hydra plugin from an extra: override -> (plugin module, extra).
PLUGIN_OVERRIDES = {
    "hparams_search=optuna": ("hydra_plugins.hydra_optuna_sweeper", "sweep"),
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", "sweep"),
    "hydra/launcher=joblib": ("hydra_plugins.hydra_joblib_launcher", "sweep"),
    "hydra/launcher=slurm": ("hydra_plugins.hydra_submitit_launcher", "sweep"),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "sweep"),
    "hydra/launcher=submitit_local": ("hydra_plugins.hydra_submitit_launcher", "sweep"),
}


def require_plugins(overrides: Sequence[str]) -> None:
    """Refuse a command-line override whose Hydra plugin is missing before Hydra composes (and fails
    on) it."""
    for override in overrides:
        choice = override.lstrip("+").replace(" ", "")
        if choice in PLUGIN_OVERRIDES:
            module, extra = PLUGIN_OVERRIDES[choice]
            require_extra(module, extra, choice)


# Folders Hydra creates before a command's own code runs: a file in their place would be a traceback
# from Hydra.
HYDRA_DIRS = ("hydra.run.dir", "hydra.sweep.dir")


def refuse_files_as_hydra_dirs(overrides: Sequence[str]) -> None:
    """Refuse ``hydra.run.dir=`` / ``hydra.sweep.dir=`` overrides that name an existing file, before
    Hydra tries to create the folder there."""
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key in HYDRA_DIRS and value and Path(value.strip("'\"")).expanduser().is_file():
            raise LungsegError(
                f"{key}={value}: is a file, not a folder; choose a folder (it is "
                "created if missing)"
            )


def command_line(main: Callable[[], Any]) -> Callable[[], None]:
    """A command's console entry (``lungseg-<command>``, ``python -m lungseg.<command>``): the
    checks of the command line that must come before Hydra (a missing plugin, a file where Hydra
    makes a folder), then the Hydra ``main``; a user error is one line and exit code 2."""

    @exit_on_user_error
    def cli() -> None:
        overrides = sys.argv[1:]
        require_plugins(overrides)
        refuse_files_as_hydra_dirs(overrides)
        main()

    cli.__doc__ = f"Command line of {main.__module__}."
    return cli


def hydra_config() -> Any:
    """This run's Hydra config, or None where no Hydra app runs (a function called directly, a
    test)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def in_multirun() -> bool:
    """Whether this is a job of a ``--multirun`` (the one test of it: run names, threads, failure
    handling)."""
    from hydra.types import RunMode

    hydra_cfg = hydra_config()
    return hydra_cfg is not None and hydra_cfg.get("mode") == RunMode.MULTIRUN


def monitor_mode(monitor: str) -> str:
    """``min`` for a loss (``val/loss``, ``best/val_loss``), ``max`` for a score (``val/dice``): the
    direction of "better" (schedulers, checkpoints, early stopping and sweep summaries all use this
    one rule)."""
    return "min" if "loss" in monitor else "max"
