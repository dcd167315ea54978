"""One output, one writer, and every output whole: the lock that refuses a second writer, temp files
of dead writers cleaned (a live writer's kept), report folders replaced whole, and a full disk as
one line with nothing partial."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from lungseg.atomic import atomic_dir, remove_stale, restore_dir, write_text
from lungseg.errors import LungsegError
from lungseg.evaluate import evaluate
from lungseg.export import export
from lungseg.predict import predict
from lungseg.robustness import robustness
from lungseg.train import main as train_main
from tests.helpers import ROOT, gradient, write_split
from tests.test_bad_inputs import QUICK, one_error

HOLD = """
import sys, time
from lungseg.atomic import output_lock
with output_lock(sys.argv[1], "held", inside=sys.argv[2] == "inside"):
    print("holding", flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def held_by_another_process(target: Path, inside: bool = False) -> Iterator[None]:
    """Another lungseg process holding ``target``'s writer lock while the block runs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(target), "inside" if inside else "beside"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "holding"
        yield
    finally:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_writer_of_an_output_is_refused_with_one_line(
    capsys, compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    image, data = tmp_path / "one.png", tmp_path / "data"
    cv2.imwrite(str(image), gradient())
    write_split(data, "test", [1, 2])
    targets = {
        "predict": (
            predict,
            tmp_path / "pred",
            "output",
            compose_cfg(
                f"ckpt_path={tiny_ckpt}",
                f"input={image}",
                f"output={tmp_path / 'pred'}",
                "progress=false",
                config_name="predict",
            ),
        ),
        "evaluate": (
            evaluate,
            tmp_path / "eval",
            "output_dir",
            compose_cfg(
                f"ckpt_path={tiny_ckpt}",
                f"data.root={data}",
                f"output_dir={tmp_path / 'eval'}",
                "calibration=false",
                config_name="evaluate",
            ),
        ),
        "robustness": (
            robustness,
            tmp_path / "robust",
            "output_dir",
            compose_cfg(
                f"ckpt_path={tiny_ckpt}",
                f"data.root={data}",
                f"output_dir={tmp_path / 'robust'}",
                config_name="robustness",
            ),
        ),
        "export": (
            export,
            tmp_path / "m.onnx",
            "output",
            compose_cfg(
                f"ckpt_path={tiny_ckpt}", f"output={tmp_path / 'm.onnx'}", config_name="export"
            ),
        ),
    }
    for name, (entry, target, setting, cfg) in targets.items():
        with held_by_another_process(target):
            line = one_error(capsys, entry, cfg)
        assert (
            line == f"error: {setting}={target}: another lungseg process is writing there now; "
            "wait for it to "
            "finish or choose another output"
        ), (name, line)
        assert not target.exists(), name  # nothing written by the refused run
        entry(cfg)  # once the other writer is gone, the same run goes through
        assert target.exists(), name


def test_a_second_training_in_one_run_folder_is_refused(
    capsys, compose_cfg, tiny_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"  # compose_cfg's run folder
    cfg = compose_cfg(f"data.root={tiny_dataset}", *QUICK)
    with held_by_another_process(run, inside=True):
        with pytest.raises(
            LungsegError, match=f"hydra.run.dir={run}: another lungseg process is writing there"
        ):
            train_main(cfg)
    assert not (run / "checkpoints").exists() and not (run / "result.json").exists()
    train_main(cfg)
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_temp_files_of_dead_writers_are_removed_and_a_live_writers_kept(tmp_path: Path) -> None:
    target = tmp_path / "predictions.csv"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        mine_live = tmp_path / f".predictions.csv.tmp-{live.pid}"
        mine_dead = tmp_path / f".predictions.csv.tmp-{dead_pid()}"
        other = tmp_path / f".other.csv.tmp-{dead_pid()}"
        for path in (mine_live, mine_dead, other):
            path.write_text("half")
        write_text(target, "whole\n")
        assert target.read_text() == "whole\n"
        # a live writer's file is never pulled from under it
        assert mine_live.exists() and not mine_dead.exists()
        assert other.exists()  # another output's temp file is that output's writer's business
    finally:
        live.kill()
        live.wait()
    assert remove_stale(target) == [mine_live] and not mine_live.exists()  # once it is dead


def test_a_killed_export_leaves_nothing_the_next_one_keeps(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.onnx"
    leftover = tmp_path / f".m.onnx.tmp-{dead_pid()}"
    leftover.mkdir()
    (leftover / "m.onnx").write_bytes(b"")  # an export killed mid-write
    export(compose_cfg(f"ckpt_path={tiny_ckpt}", f"output={out}", config_name="export"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".m.onnx.lock",
        "m.onnx",
        "m.onnx.README.md",
    ]


KILLED_WRITER = """
import sys, time
from pathlib import Path
from lungseg.atomic import atomic_dir
with atomic_dir(sys.argv[1]) as staged:
    (staged / "per_image.csv").write_text("new model")
    print("writing", flush=True)
    time.sleep(600)
"""


def test_a_report_folder_is_replaced_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "report"
    out.mkdir()
    for name in ("per_image.csv", "robustness.png"):
        (out / name).write_text(f"old {name}")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "per_image.csv": "old per_image.csv",
        "robustness.png": "old robustness.png",
    }
    with atomic_dir(out) as staged:  # the next writer clears the killed one's half-built folder
        (staged / "per_image.csv").write_text("new")
    assert [p.name for p in out.iterdir()] == ["per_image.csv"] and (
        out / "per_image.csv"
    ).read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]

    # where the system cannot swap two folders in one step, the earlier one is moved aside first; a
    # kill between the two renames leaves it aside, and the next writer puts it back before anything
    # else
    monkeypatch.setattr("lungseg.atomic._exchange", lambda a, b: False)
    with atomic_dir(out) as staged:
        (staged / "per_image.csv").write_text("newer")
    assert (out / "per_image.csv").read_text() == "newer" and [
        p.name for p in tmp_path.iterdir()
    ] == ["report"]
    aside = tmp_path / f".report.old-{dead_pid()}"
    out.rename(aside)
    restore_dir(out)
    assert (out / "per_image.csv").read_text() == "newer" and not aside.exists()


def test_robustness_replaces_an_earlier_report_only_with_a_whole_one(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, out = tmp_path / "data", tmp_path / "robust"
    write_split(data, "test", [1, 2], size=48)
    cfg = compose_cfg(
        f"ckpt_path={tiny_ckpt}", f"data.root={data}", f"output_dir={out}", config_name="robustness"
    )
    robustness(cfg)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["per_image.csv", "robustness.json", "robustness.md", "robustness.png"]
    with pytest.raises(
        LungsegError, match=f"output_dir={out}: already exists; pass overwrite=true"
    ):
        robustness(cfg)

    # dies after per_image.csv and the tables are written
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "device error")

    monkeypatch.setattr("lungseg.evaluation.figures.save_figures", broken)
    again = compose_cfg(
        f"ckpt_path={tiny_ckpt}",
        f"data.root={data}",
        f"output_dir={out}",
        "overwrite=true",
        "seed=5",
        config_name="robustness",
    )
    with pytest.raises(OSError, match="device error"):
        robustness(again)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier report, whole
    monkeypatch.undo()
    robustness(again)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(after) == sorted(before) and after["per_image.csv"] != before["per_image.csv"]


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a small tmpfs with 8 KiB left (needs root and a kernel that lets it mount;
    skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a tmpfs mount, which needs root")
    mount = tmp_path / "full"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        free = os.statvfs(mount)
        (mount / "filler").write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 8192))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_no_partial_output(
    capsys, compose_cfg, tiny_ckpt: Path, tiny_dataset: Path, full_disk: Path
) -> None:
    cases = {
        "evaluate": (
            evaluate,
            compose_cfg(
                f"ckpt_path={tiny_ckpt}",
                f"data.root={tiny_dataset}",
                f"output_dir={full_disk / 'eval'}",
                config_name="evaluate",
            ),
        ),
        "export": (
            export,
            compose_cfg(
                f"ckpt_path={tiny_ckpt}",
                f"output={full_disk / 'm.pt2'}",
                "format=torch_export",
                config_name="export",
            ),
        ),
        "train": (
            train_main,
            compose_cfg(
                f"data.root={tiny_dataset}",
                *QUICK[:-3],
                "trainer.max_epochs=1",
                f"paths.output_dir={full_disk / 'run'}",
                "test=false",
            ),
        ),
    }
    for name, (entry, cfg) in cases.items():
        line = one_error(capsys, entry, cfg)
        assert (
            "No space left on device; free space on that disk or choose another output" in line
        ), (name, line)
        assert str(full_disk) in line, (name, line)
    # as a user runs it: one line, exit 2, and no abort at exit
    for fmt in ("torch_export", "onnx"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "lungseg.export",
                f"ckpt_path={tiny_ckpt}",
                f"format={fmt}",
                f"output={full_disk / 'model'}.{fmt}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1, (fmt, proc.returncode, proc.stderr[-3000:])
        assert (
            lines[0].startswith(f"error: {full_disk}") and "No space left on device" in lines[0]
        ), lines
    left = [p for p in full_disk.rglob("*") if p.is_file() and p.name != "filler"]
    assert not [p for p in left if p.suffix in (".ckpt", ".pt2", ".png") or ".tmp-" in p.name], left
    for record in (p for p in left if p.suffix == ".json"):
        json.loads(record.read_text())  # what was written is whole
