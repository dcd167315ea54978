"""A hospital's DICOM folder through lungseg.predict: the input gate's status per film, DICOM SEG
beside the PNG masks, the patient's lungs measured in mm, a manifest; runs that resume after a kill
with each film done once, and shards run through a Hydra launcher, then merged."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from lungseg.dicom.seg import read_seg
from lungseg.errors import LungsegError
from lungseg.predict import EXIT_REFUSED, predict
from tests.dicom_films import write_dx
from tests.helpers import ROOT, disc_pair, write_split


def rows_of(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {Path(r["input"]).name: r for r in csv.DictReader(f)}


def hospital_folder(root: Path) -> Path:
    """A study tree as a PACS export gives it: frontal DX films (one with its spacing), a CT slice,
    a lateral film, a multi-frame object, a film cut off before its pixels, and a PNG."""
    rng = np.random.default_rng(5)
    films = [disc_pair(rng, 96)[0].astype(np.uint16) * 16 for _ in range(3)]
    (root / "study1" / "series1").mkdir(parents=True)
    (root / "study2").mkdir()
    write_dx(root / "study1" / "series1" / "pa.dcm", films[0], PixelSpacing=[0.5, 0.5])
    write_dx(root / "study1" / "series1" / "ap.dcm", films[1], ViewPosition="AP", PixelSpacing=None)
    write_dx(root / "study1" / "ct.dcm", films[2], Modality="CT")
    write_dx(root / "study2" / "lateral.dcm", films[2], ViewPosition="LL")
    write_dx(
        root / "study2" / "frames.dcm",
        np.concatenate([films[2], films[2]]),
        NumberOfFrames=2,
        Rows=96,
    )
    write_dx(root / "study2" / "cut.dcm", films[2], PixelData=None)
    cv2.imwrite(str(root / "study2" / "film.png"), disc_pair(rng, 96)[0])
    return root


def test_a_dicom_folder_gives_seg_status_and_measured_lungs_per_film(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    folder, out = hospital_folder(tmp_path / "pacs"), tmp_path / "out"
    cfg = compose_cfg(
        f"ckpt_path={tiny_ckpt}",
        f"input={folder}",
        f"output={out}",
        "output_format=[png,seg]",
        "progress=false",
        config_name="predict",
    )
    summary = predict(cfg)
    rows = rows_of(out / "predictions.csv")
    assert sorted(rows) == [
        "ap.dcm",
        "ct.dcm",
        "cut.dcm",
        "film.png",
        "frames.dcm",
        "lateral.dcm",
        "pa.dcm",
    ]
    refused = {
        name: rows[name]["status_reason"] for name in rows if rows[name]["status"] == "refused"
    }
    assert sorted(refused) == ["ct.dcm", "cut.dcm", "frames.dcm", "lateral.dcm"], refused
    assert "CT" in refused["ct.dcm"] and "lateral" in refused["lateral.dcm"].lower()
    assert "frames" in refused["frames.dcm"] and "pixel data" in refused["cut.dcm"]
    # no mask for a refused film
    assert all(rows[n]["mask"] == "" and rows[n]["seg"] == "" for n in refused)
    assert summary["refused"] == 4 and summary["counts"]["refused"] == 4
    # DICOM films: a SEG that equals the PNG mask and references its film
    for name in ("pa.dcm", "ap.dcm"):
        row = rows[name]
        png = cv2.imread(str(out / row["mask"]), cv2.IMREAD_GRAYSCALE) > 0
        seg = read_seg(out / row["seg"])
        assert np.array_equal(seg["Left lung"] | seg["Right lung"], png) and png.any()
        source, made = (
            pydicom.dcmread(folder / "study1" / "series1" / name),
            pydicom.dcmread(out / row["seg"]),
        )
        assert made.StudyInstanceUID == source.StudyInstanceUID
        referenced = made.ReferencedSeriesSequence[0]
        assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
        assert (
            referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            == source.SOPInstanceUID
        )
        assert row["status"] in ("ok", "flagged") and len(row["content_sha256"]) == 64
    pa, ap, png_film = rows["pa.dcm"], rows["ap.dcm"], rows["film.png"]
    assert (pa["area_unit"], pa["spacing_source"]) == ("mm2", "PixelSpacing")
    left_px = int((read_seg(out / pa["seg"])["Left lung"]).sum())
    # 0.5 mm x 0.5 mm pixels
    assert float(pa["left_lung_area"]) == pytest.approx(left_px * 0.25, rel=0.01)
    # no SEG of a PNG
    assert ap["area_unit"] == "px" and png_film["area_unit"] == "px" and png_film["seg"] == ""
    assert pa["side_source"] == "PatientOrientation" and png_film["side_source"] == "convention"
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["counts"] == {
        "ok": summary["counts"]["ok"],
        "flagged": summary["counts"]["flagged"],
        "refused": 4,
        "error": 0,
    }
    assert (
        manifest["model"]["sha256"] == pytest.approx(manifest["model"]["sha256"])
        and len(manifest["model"]["sha256"]) == 64
        and manifest["precision"] == summary["precision"]
    )
    assert manifest["lungseg_version"] and manifest["films"] == 7
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungseg.predict",
            f"ckpt_path={tiny_ckpt}",
            f"input={folder}",
            f"output={tmp_path / 'cli'}",
            "progress=false",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # the exit code says films were refused
    assert proc.returncode == EXIT_REFUSED, proc.stderr[-2000:]
    assert "4 film(s) refused by the input gate" in proc.stderr and "Traceback" not in proc.stderr


def phantom_films(folder: Path, n: int) -> Path:
    write_split(folder, "test", list(range(n)), size=160, seed=11)
    return folder / "ChestXray" / "test" / "image"


def test_a_killed_run_resumes_with_every_film_done_once(tiny_ckpt: Path, tmp_path: Path) -> None:
    images, out = phantom_films(tmp_path / "films", 120), tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "lungseg.predict",
        f"ckpt_path={tiny_ckpt}",
        f"input={images}",
        f"output={out}",
        "progress=false",
        "batch_size=4",
        "threads=1",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    journal = out / ".journal.jsonl"
    deadline = time.time() + 240
    while not (journal.is_file() and journal.read_text().count("\n") >= 10):
        assert proc.poll() is None, (
            "finished before it could be killed: " + proc.stderr.read()[-2000:]
        )
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {
        json.loads(line)["row"]["input"]
        for line in journal.read_text().splitlines()
        if line.endswith("}")
    }
    assert 10 <= len(done_before) < 120 and not (out / "predictions.csv").exists()
    stamps = {p: (out / "masks" / f"{Path(p).stem}.png").stat().st_mtime_ns for p in done_before}

    refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    # not silently over the killed run
    assert refused.returncode == 2 and "resume=true" in refused.stderr
    again = subprocess.run(
        [*cmd, "resume=true"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert (
        f"{120 - len(done_before)} input(s)" in again.stdout
        and f"resumed: {len(done_before)} done before" in again.stdout
    )
    rows = rows_of(out / "predictions.csv")
    assert len(rows) == 120 and all(r["status"] in ("ok", "flagged") for r in rows.values())
    assert {
        p: (out / "masks" / f"{Path(p).stem}.png").stat().st_mtime_ns for p in done_before
    } == stamps  # kept
    inputs = [
        json.loads(line)["row"]["input"]
        for line in journal.read_text().splitlines()
        if line.endswith("}")
    ]
    assert sorted(inputs) == sorted(set(inputs)) and len(inputs) == 120  # each film recorded once
    changed = images / "cxrimage_0.png"  # an edited film is done again, the rest is not
    cv2.imwrite(str(changed), 255 - cv2.imread(str(changed), cv2.IMREAD_GRAYSCALE))
    third = subprocess.run(
        [*cmd, "resume=true"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert (
        third.returncode == 0
        and "1 input(s)" in third.stdout
        and "resumed: 119 done before" in third.stdout
    )


def test_shards_run_through_a_hydra_launcher_then_merge(tiny_ckpt: Path, tmp_path: Path) -> None:
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="needs lungseg[sweep] (submitit)"
    )
    images, out = phantom_films(tmp_path / "films", 10), tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungseg.predict",
            "--multirun",
            "hydra/launcher=submitit_local",
            "shard=0/2,1/2",
            f"ckpt_path={tiny_ckpt}",
            f"input={images}",
            f"output={out}",
            "progress=false",
            "threads=1",
            f"hydra.sweep.dir={tmp_path / 'jobs'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = [rows_of(out / f"predictions-shard-{i}-of-2.csv") for i in (0, 1)]
    # disjoint, both non-empty
    assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])
    merged = subprocess.run(
        [sys.executable, "-m", "lungseg.predict", "merge=true", f"output={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert merged.returncode == 0 and "merged 2 shards: 10 films" in merged.stdout, merged.stderr[
        -2000:
    ]
    rows = rows_of(out / "predictions.csv")
    assert sorted(rows) == sorted({**shards[0], **shards[1]}) and len(rows) == 10
    manifest = json.loads((out / "run.json").read_text())
    assert [m["shard"] for m in manifest["shards"]] == ["0/2", "1/2"] and manifest["films"] == 10


def test_cohort_settings_are_checked_before_any_work(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    images, out = phantom_films(tmp_path / "films", 2), tmp_path / "out"
    base = (f"ckpt_path={tiny_ckpt}", f"input={images}", f"output={out}", "progress=false")
    for override, says in (
        ("shard=2/2", "shard=2/2: use i/n with 0 <= i < n"),
        ("shard=one", "shard=one: use i/n"),
        ("output_format=jpeg", "output_format=jpeg: use png, seg or \\[png,seg\\]"),
    ):
        with pytest.raises(LungsegError, match=says):
            predict(compose_cfg(*base, override, config_name="predict"))
    assert not out.exists()
    predict(compose_cfg(*base, "shard=0/3", config_name="predict"))
    with pytest.raises(LungsegError, match="2 of 3 shards have not finished"):
        predict(compose_cfg(f"output={out}", "merge=true", config_name="predict"))
