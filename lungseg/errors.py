"""Errors a user can cause, and the one place that turns them into a message and an exit code."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from functools import wraps
from types import ModuleType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2

# What each optional extra of pyproject.toml brings, as its missing-extra message names it.
EXTRAS = {
    "export": "onnx and onnxruntime",
    "dicom": "pydicom >= 3, highdicom and the pylibjpeg decoders",
    "kaggle": "the kaggle package",
    "sweep": "the Hydra sweep plugins (Optuna sweeper, joblib and submitit launchers)",
}


class LungsegError(Exception):
    """A problem the user can fix (bad data, bad path, bad setting); printed without a traceback."""


class DataError(LungsegError):
    """The data on disk is missing, in the wrong layout, or unreadable."""

    def __init__(self, message: str, problems: Iterable[str] = ()) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:  # one problem, one line
            message = f"{message.rstrip(':')}: {self.problems[0]}"
        elif self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class CheckpointError(LungsegError):
    """A checkpoint is missing, truncated, unsafe or not a lungseg checkpoint."""


class MissingExtraError(LungsegError):
    """A feature needs an optional extra (``pip install "lungseg[extra]"``) that is not installed."""


def require_extra(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``; if it (or what it imports) is missing, name the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise MissingExtraError(f'{feature} needs {EXTRAS[extra]}: pip install "lungseg[{extra}]"') from None


def exit_on_user_error(func: F) -> F:
    """Run an entry point with a quiet console; a LungsegError becomes one message on stderr and exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from lungseg.console import quiet

        quiet()
        try:
            return func(*args, **kwargs)
        except LungsegError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]
