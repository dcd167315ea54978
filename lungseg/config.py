"""Where the Hydra configs are: ``conf/`` of a checkout, or ``lungseg/conf`` of an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# An installed wheel carries conf/ as lungseg/conf; a checkout (editable or not) has it beside the package.
CONFIG_DIR = _PACKAGE / "conf" if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent / "conf"
