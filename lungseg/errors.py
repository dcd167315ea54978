"""Errors a user can cause, and the one place that turns them into a message and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2


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
