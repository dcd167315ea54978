"""What a process and its DataLoader workers use, from ``/proc``: resident and peak memory, CPU
seconds."""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from pathlib import Path


def _proc_kb(path: Path, field: str) -> int:
    """A ``field:  N kB`` line of a /proc file, in kB (0 when absent)."""
    return next(
        (
            int(line.split()[1])
            for line in path.read_text().splitlines()
            if line.startswith(field + ":")
        ),
        0,
    )


def rss_mb() -> float:
    """This process's resident set size now, MiB (NaN without /proc)."""
    try:
        return _proc_kb(Path("/proc/self/status"), "VmRSS") / 1024
    except OSError:
        return float("nan")


def reset_peak_rss() -> None:
    """Start this process's peak resident set size afresh (Linux: ``/proc/self/clear_refs``), so
    each size of the scale mode gets its own peak. Reading the kernel's counters costs nothing,
    unlike sampling."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """This process's peak resident set size since :func:`reset_peak_rss`, MiB (VmHWM; the shared
    decode cache is in it once it is filled)."""
    try:
        return _proc_kb(Path("/proc/self/status"), "VmHWM") / 1024
    except OSError:  # no /proc: the lifetime peak (kB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _children() -> list[str]:
    """Process ids of this process's children (the DataLoader workers); none without /proc."""
    return [
        pid
        for children in Path("/proc/self/task").glob("*/children")
        for pid in children.read_text().split()
    ]


def workers_mb() -> float:
    """What this process's children (the DataLoader workers) hold now, MiB: their proportional set
    size without shared memory, so pages they share with the main process count once (the decode
    cache in the main process)."""
    total = 0.0
    for pid in _children():
        with contextlib.suppress(OSError):  # a worker that just exited
            rollup = Path(f"/proc/{pid}/smaps_rollup")
            total += (_proc_kb(rollup, "Pss") - _proc_kb(rollup, "Pss_Shmem")) / 1024
    return total


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live children (the DataLoader workers) so
    far: what the work cost, however busy the machine is with other jobs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    for pid in _children():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def minor_faults() -> int:
    """Minor page faults of this process and its live children (the DataLoader workers) so far:
    pages the kernel had to map (and zero) for them, a count that load on the machine does not
    change."""
    total = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for pid in _children():
        with contextlib.suppress(OSError):
            # minflt
            total += int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
    return total
