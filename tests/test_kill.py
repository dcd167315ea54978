"""A real SIGKILL in the middle of writing: no partial file ever stands under a final name, and a
rerun refuses clearly or completes, keeping what was complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from tests.helpers import ROOT, write_split


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` is true (it must still be running then)."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, (
            "finished before it could be killed: " + proc.stderr.read()[-2000:]
        )
        assert time.time() < deadline, "never reached the point to kill it"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _complete_pngs(folder: Path) -> list[Path]:
    """Every PNG under ``folder`` by its final name, each of which must decode whole."""
    files = [p for p in folder.rglob("*.png") if not p.name.startswith(".")]
    for p in files:
        data = p.read_bytes()
        assert data.endswith(b"IEND\xaeB`\x82"), f"{p} is cut short"
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None, p
    return files


def test_predict_killed_midway_leaves_only_whole_files_and_a_rerun_finishes(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    write_split(data, "test", list(range(300)), size=160, seed=4)
    images, out = data / "ChestXray" / "test" / "image", tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "lungseg.predict",
        f"ckpt_path={tiny_ckpt}",
        f"input={images}",
        f"output={out}",
        "progress=false",
        "batch_size=4",
        "save_probabilities=true",
        "threads=1",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _kill_when(
        proc,
        lambda: (
            len(list((out / "masks").glob("*.png"))) >= 20 if (out / "masks").is_dir() else False
        ),
    )
    assert proc.returncode == -signal.SIGKILL
    written = _complete_pngs(out)
    assert 20 <= len([p for p in written if p.parent.name == "masks"]) < 300
    assert not (out / "predictions.csv").exists()  # the CSV appears whole at the end, or not at all

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert (
        rerun.returncode == 2
        and "already exist" in rerun.stderr
        and "overwrite=true" in rerun.stderr
    )
    again = subprocess.run(
        [*cmd, "overwrite=true"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert len((out / "predictions.csv").read_text().splitlines()) == 301
    assert len([p for p in _complete_pngs(out) if p.parent.name == "masks"]) == 300
    # the killed run's temp files are gone
    assert [p.name for p in out.rglob(".*") if ".tmp-" in p.name] == []


def test_evaluate_killed_midway_keeps_the_earlier_report(tiny_ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_split(data, "test", list(range(2)), size=64, seed=5)
    out = tmp_path / "report"
    base = [
        sys.executable,
        "-m",
        "lungseg.evaluate",
        f"ckpt_path={tiny_ckpt}",
        f"data.root={data}",
        f"output_dir={out}",
        "device=cpu",
    ]
    assert subprocess.run(base, cwd=ROOT, capture_output=True, timeout=600).returncode == 0
    before = (out / "metrics.json").read_bytes()
    write_split(data, "test", list(range(2, 400)), size=64, seed=6)  # a longer run to kill
    proc = subprocess.Popen(
        [*base, "threshold=0.3", "overwrite=true"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _kill_when(proc, lambda: any(tmp_path.glob(".report.tmp-*")))
    assert (out / "metrics.json").read_bytes() == before  # the finished report is untouched
    # the killed run's half-built report stayed out of the way
    assert list(tmp_path.glob(".report.tmp-*"))
    refused = subprocess.run(
        [*base, "threshold=0.3"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert refused.returncode == 2 and f"output_dir={out}: already exists" in refused.stderr
    rerun = subprocess.run(
        [*base, "threshold=0.3", "overwrite=true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (out / "metrics.json").read_bytes() != before and not list(
        tmp_path.glob(".report.tmp-*")
    )
