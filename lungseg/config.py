"""Where the Hydra configs are, and the optional Hydra plugins some of their options need."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lungseg.errors import require_extra

_PACKAGE = Path(__file__).resolve().parent
# An installed wheel carries conf/ as lungseg/conf; a checkout (editable or not) has it beside the package.
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
    """Refuse a command-line override whose Hydra plugin is missing before Hydra composes (and fails on) it."""
    for override in overrides:
        choice = override.lstrip("+").replace(" ", "")
        if choice in PLUGIN_OVERRIDES:
            module, extra = PLUGIN_OVERRIDES[choice]
            require_extra(module, extra, choice)
