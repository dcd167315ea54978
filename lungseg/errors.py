"""Errors a user can cause, and the one place that turns them into a message and an exit code."""

from __future__ import annotations

import errno
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
    "openvino": "OpenVINO (and NNCF for its INT8 export)",
    "dicom": "pydicom >= 3, highdicom and the pylibjpeg decoders",
    "kaggle": "the kaggle package",
    "sweep": "the Hydra sweep plugins (Optuna sweeper, joblib and submitit launchers)",
    "review": "FastAPI and uvicorn",
    "docs": "mkdocs-material",
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
    """A feature needs an optional extra (``pip install "lungseg[extra]"``) that is not
    installed."""


def require_extra(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``; if it (or what it imports) is missing, name the extra that
    installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise MissingExtraError(
            f'{feature} needs {EXTRAS[extra]}: pip install "lungseg[{extra}]"'
        ) from None


# Errors of the machine a user can fix (a full disk, a read-only or forbidden folder): one line, not
# a traceback.
SYSTEM_ERRNOS = {
    errno.ENOSPC: "free space on that disk or choose another output",
    errno.EDQUOT: "free space within your quota or choose another output",
    errno.EROFS: "the file system is read-only; choose another output",
    errno.EACCES: "check its permissions or choose another path",
}


def user_message(err: BaseException) -> str | None:
    """The one line a user gets for ``err``: a LungsegError's message, or a full disk / permission
    OSError's with the file it hit and what to do; None for anything else (a bug: it keeps its
    traceback)."""
    if isinstance(err, LungsegError):
        return str(err)
    if isinstance(err, OSError) and err.errno in SYSTEM_ERRNOS:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror or err}; {SYSTEM_ERRNOS[err.errno]}"
    return None


def exit_on_user_error(func: F) -> F:
    """Run an entry point with a quiet console; a user error (:func:`user_message`) becomes one
    message on stderr and exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from lungseg.console import quiet

        quiet()
        try:
            return func(*args, **kwargs)
        except (LungsegError, OSError) as err:
            message = user_message(err)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]
