"""Batches reuse memory (issue 24, item 4): a data epoch's cost per image must not depend on where
glibc's sliding thresholds happen to put each collated batch. When the heap was trimmed after every
batch, each batch faulted its MiBs of fresh zeroed pages in again, in some processes and not others,
more often the larger the set. Counted in page faults, in fresh processes (the setting is
process-wide), never timed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lungseg.runtime import keep_freed_memory
from tests.helpers import ROOT


def _glibc() -> bool:
    """True where the C library is glibc, whose malloc thresholds the data module sets."""
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (AttributeError, ValueError, OSError):
        return False


pytestmark = pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")

BATCH_BYTES = 8 * 256 * 256 * 4  # one collated batch of float images (or masks) at 256 px, batch 8

# With "loader": the data module's real epochs at 256 px after a few warm-up epochs, page faults per
# image. Then, either way: a batch's two tensors made and freed, as a DataLoader and a training step
# do, after an earlier freed block of that size has set glibc's sliding thresholds; the page faults
# of the batches after the first.
SCRIPT = f"""
import ctypes, resource, sys
import lightning as L
from lungseg.data.datamodule import LungDataModule
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
if sys.argv[1] == "loader":
    L.seed_everything(0, verbose=False)
    data = LungDataModule(sys.argv[2], image_size=256, batch_size=4, num_workers=0)
    loader = data.train_dataloader()
    def epochs(n):
        return sum(batch["image"].shape[0] for _ in range(n) for batch in loader)
    epochs(6)
    before = faults()
    images = epochs(6)
    print((faults() - before) / images)
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = {BATCH_BYTES}
libc.free(libc.malloc(size))
counts = []
for _ in range(8):
    before = faults()
    image, mask = libc.malloc(size), libc.malloc(size)
    ctypes.memset(image, 1, size), ctypes.memset(mask, 1, size)
    libc.free(image), libc.free(mask)
    counts.append(faults() - before)
print(sum(counts[1:]))
"""


def _run(*args: str) -> list[float]:
    """SCRIPT's figures, in a fresh process: glibc's thresholds start as glibc sets them."""
    env = {
        k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [float(line) for line in proc.stdout.split()]


def test_batches_reuse_the_pages_of_the_ones_before(tiny_dataset: Path) -> None:
    pages = 7 * 2 * BATCH_BYTES // 4096  # the seven batches after the first, image and mask
    [handed_back] = _run("plain", str(tiny_dataset))
    # the control: glibc's own thresholds trim the batch and fault it in again
    assert handed_back > pages / 2
    per_image, kept = _run("loader", str(tiny_dataset))
    # once the data module has made a loader, the freed batch stays for the next
    assert kept < pages / 100
    # and later epochs fault almost no new pages: 0-1.3 per image in fresh processes on one host
    # (a stray 256 KiB block now and then), against 128 when every batch is faulted in again (a
    # 256 px image and mask in float); the bound sits well between the two
    assert per_image < 8


@pytest.mark.parametrize(
    "name, value",
    [
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072"),
    ],
)
def test_malloc_settings_of_the_user_win(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    keep_freed_memory.cache_clear()
    try:
        assert keep_freed_memory() is False
    finally:
        keep_freed_memory.cache_clear()
