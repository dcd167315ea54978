"""Every file and folder lungseg writes appears under its final name complete or not at all, and one
output has one writer at a time.

A file is written to ``.<name>.tmp-<pid>`` beside it, flushed to disk, then renamed into place
(atomic on one file system). A folder (a report, an export) is written whole beside its final name
and swapped in, so a kill leaves either the earlier folder or the new one, never a mix. Temp files
and folders of a writer that died are removed by the next writer; those of a live writer are left
alone. :func:`output_lock` refuses a second writer of one output.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lungseg.errors import LungsegError

TMP_TAG = ".tmp-"
OLD_TAG = ".old-"
# renameat2 flag: swap two paths atomically (Linux >= 3.15, most local file systems)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class OutputBusyError(LungsegError):
    """Another lungseg process is writing the same output."""


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a process we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_path(path: Path) -> Path:
    """Where this process writes ``path`` before it is renamed into place: ``.<name>.tmp-<pid>``
    beside it."""
    return path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")


def remove_stale(path: str | Path) -> list[Path]:
    """Remove the temp files and folders (``.<name>.tmp-<pid>``, ``.<name>.old-<pid>``) that writers
    of ``path`` left when they were killed; a live writer's are kept. Returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for tag in (TMP_TAG, OLD_TAG):
        for stale in path.parent.glob(f".{glob_escape(path.name)}{tag}*"):
            pid = stale.name.rsplit(tag, 1)[1].split("-")[0]
            if pid.isdigit() and process_alive(int(pid)) and int(pid) != os.getpid():
                continue
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def remove_stale_under(folder: str | Path) -> list[Path]:
    """:func:`remove_stale` for every temp file and folder anywhere under ``folder`` (an output tree
    that a killed run wrote into)."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for parent, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            if name.startswith(".") and (TMP_TAG in name or OLD_TAG in name):
                tag = TMP_TAG if TMP_TAG in name else OLD_TAG
                removed += remove_stale(Path(parent) / name[1:].rsplit(tag, 1)[0])
        dirs[:] = [d for d in dirs if (Path(parent) / d).exists()]
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "wb", durable: bool = True, clean: bool = True, **kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` for writing; on success it replaces ``path``, on error it is
    removed. ``durable``: flushed to disk before the rename (off for data that can be made again,
    where a whole file matters and a power cut does not). ``clean``: first remove what killed
    writers of ``path`` left (off for writers of many files into one folder, who clean the whole
    folder once: :func:`remove_stale_under`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if clean:
        remove_stale(path)
    tmp = temp_path(path)
    try:
        with named_write_errors(path), open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        _fsync_dir(path.parent)


@contextlib.contextmanager
def named_write_errors(path: str | Path) -> Iterator[None]:
    """A failed write inside the block as an OSError that names ``path``, where the library that
    raised it named no file (matplotlib, Pillow, protobuf, a plain ``write``)."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically. Serialised in memory first: torch's archive writer
    turns a failed disk write into a RuntimeError, and its destructor then aborts the process at
    exit; lungseg's own write fails as a plain OSError naming the file."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getbuffer())


def write_bytes(path: str | Path, data: bytes, durable: bool = True, clean: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (``durable``, ``clean``: see :func:`atomic_open`)."""
    with atomic_open(path, "wb", durable=durable, clean=clean) as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2``); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def replace_dir(staged: Path, target: Path) -> None:
    """Put the finished folder ``staged`` at ``target``, replacing an earlier one whole: swapped in
    one step where the system can, else the earlier folder is moved aside first (and put back by
    :func:`restore_dir` if a kill comes between the two renames)."""
    if target.is_dir() and not target.is_symlink():
        if _exchange(staged, target):
            shutil.rmtree(staged, ignore_errors=True)  # now the earlier folder
            _fsync_dir(target.parent)
            return
        old = target.with_name(f".{target.name}{OLD_TAG}{os.getpid()}")
        target.rename(old)
        staged.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    elif target.exists() or target.is_symlink():
        raise LungsegError(f"{target}: is a file, not a folder; choose another output folder")
    else:
        staged.rename(target)
    _fsync_dir(target.parent)


def restore_dir(target: Path) -> None:
    """Put back an earlier folder that a killed writer had moved aside and not yet replaced."""
    if target.exists():
        return
    for old in sorted(target.parent.glob(f".{glob_escape(target.name)}{OLD_TAG}*")):
        pid = old.name.rsplit(OLD_TAG, 1)[1]
        if old.is_dir() and not (pid.isdigit() and process_alive(int(pid))):
            old.rename(target)
            return


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """A folder to write ``target``'s content into; on success it replaces ``target`` whole, on
    error it is removed and ``target`` is as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_dir(target)
    remove_stale(target)
    staged = temp_path(target)
    staged.mkdir()
    try:
        with named_write_errors(target):
            yield staged
            replace_dir(staged, target)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def lock_path(target: Path, inside: bool = False) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it (a folder that is swapped whole cannot
    hold it), or ``.lungseg.lock`` inside a folder that is written in place and shares its parent
    with others (a sweep's jobs)."""
    return target / ".lungseg.lock" if inside else target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def output_lock(target: str | Path, setting: str, inside: bool = False) -> Iterator[None]:
    """Hold the one-writer lock of output ``target`` (a file or folder, named by ``setting`` in
    messages) while the block runs; a second writer is refused at once with one line. The operating
    system releases the lock when the holder dies, so a crash never leaves an output locked."""
    from filelock import FileLock, Timeout

    target = Path(target).expanduser().absolute()
    lock_file = lock_path(target, inside)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LungsegError(
            f"{setting}={target}: cannot write there ({err.strerror or err}); choose a writable "
            "folder"
        ) from None
    lock = FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputBusyError(
            f"{setting}={target}: another lungseg process is writing there now; wait for it to "
            "finish or choose another output"
        ) from None
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise LungsegError(
                f"{setting}={target}: cannot write there ({err.strerror}); choose a writable folder"
            ) from None
        raise
    try:
        yield
    finally:
        lock.release()
