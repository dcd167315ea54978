"""python -m lungseg.predict: real radiographs at their own size, DICOM, failures, overwrite, names,
and a model that works away from its run folder."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lungseg.data.images import window
from lungseg.errors import CheckpointError, LungsegError
from lungseg.inference.inputs import find_inputs, read_input
from lungseg.inference.outputs import CSV_COLUMNS
from lungseg.inference.postprocess import PlausibilityLimits
from lungseg.inference.segmenter import LungSegmenter
from lungseg.predict import predict
from tests.helpers import CXR, ROOT, gradient, requires_cxr, train_tiny, write_split

ORIG_TEST = CXR / "orig" / "test" / "image"


def write_dicom(
    path: Path,
    stored: np.ndarray,
    photometric: str,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
) -> None:
    """A minimal single-frame 16-bit grayscale DICOM file."""
    meta = FileMetaDataset()
    # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)  # with the 128-byte preamble and "DICM"


def brute_force_hd95(a: np.ndarray, b: np.ndarray) -> float:
    """HD95 from all pairwise distances between the two masks' boundary pixels (4-neighbour
    boundary)."""

    def boundary(m: np.ndarray) -> np.ndarray:
        padded = np.pad(m, 1)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        return np.argwhere(m & ~inner).astype(float)

    pa, pb = boundary(a), boundary(b)
    dist = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return max(float(np.percentile(dist.min(1), 95)), float(np.percentile(dist.min(0), 95)))


def predict_cfg(compose_cfg, ckpt: Path, source: Path, out: Path, *overrides: str):
    return compose_cfg(
        f"ckpt_path={ckpt}",
        f"input={source}",
        f"output={out}",
        "progress=false",
        *overrides,
        config_name="predict",
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@requires_cxr
@pytest.mark.precision
def test_real_radiographs_get_masks_overlays_and_csv_at_their_own_size(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = predict(
        predict_cfg(
            compose_cfg, tiny_ckpt, ORIG_TEST, out, "save_probabilities=true", "batch_size=4"
        )
    )
    inputs = sorted(ORIG_TEST.iterdir())
    assert summary["predicted"] == len(inputs) == 15 and not summary["failures"]
    assert summary["image_size"] == 32 and summary["images_per_s"] > 0
    sizes = set()
    for image in inputs:
        h, w = cv2.imread(str(image), cv2.IMREAD_UNCHANGED).shape[:2]
        sizes.add((h, w))
        mask = cv2.imread(str(out / "masks" / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}, image.name
        scale = min(1.0, 1024 / max(h, w))  # overlays are previews, at most overlay_size=1024 px
        assert cv2.imread(str(out / "overlays" / f"{image.stem}.png")).shape == (
            round(h * scale),
            round(w * scale),
            3,
        )
        assert cv2.imread(
            str(out / "probabilities" / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED
        ).shape == (h, w)
    assert (277, 375) in sizes and (2000, 2000) in sizes  # the RGB PNG and the full-size JPEGs
    rows = read_csv(out / "predictions.csv")
    assert [r["mask"] for r in rows] == [f"masks/{p.stem}.png" for p in inputs]
    assert tuple(rows[0]) == CSV_COLUMNS
    limits = PlausibilityLimits()
    for row in rows:
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED) > 0
        half = mask.shape[1] // 2
        assert int(row["area_image_left_px"]) == mask[:, :half].sum()
        assert int(row["area_image_right_px"]) == mask[:, half:].sum()
        assert float(row["lung_fraction"]) == pytest.approx(mask.mean(), abs=0.5e-5)  # 5 decimals
        flags = set(row["plausibility"].split(";")) - {"ok"}
        assert flags <= {
            "no_lung",
            "lung_fraction_low",
            "lung_fraction_high",
            "too_many_components",
        }
        assert ("lung_fraction_low" in flags) == (0 < mask.mean() < limits.min_lung_fraction)
        assert ("lung_fraction_high" in flags) == (mask.mean() > limits.max_lung_fraction)
        assert ("too_many_components" in flags) == (
            int(row["large_components"]) > limits.max_components
        )
        assert (row["plausibility"] == "ok") == (not flags)


def test_dicom_monochrome1_16bit_with_rescale_and_window_round_trips(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    image = gradient()
    stored = (255 - image.astype(np.int64)) * 200 + 50  # MONOCHROME1: bright bone is a low value
    folder = tmp_path / "dicom"
    folder.mkdir()
    write_dicom(folder / "plain.dcm", stored, "MONOCHROME1", slope=0.5, intercept=-10)
    back = read_input(folder / "plain.dcm")
    assert back.dtype == np.uint8 and back.shape == image.shape
    assert np.abs(back.astype(int) - window(image)).max() <= 1  # the 8-bit film's own input

    # A window over the modality values of the bright half (image >= 128): the dark half clips to
    # black.
    lo, hi = 0.5 * ((255 - 255) * 200 + 50) - 10, 0.5 * ((255 - 128) * 200 + 50) - 10
    write_dicom(
        folder / "windowed", stored, "MONOCHROME1", 0.5, -10, window=((lo + hi) / 2, hi - lo)
    )
    windowed = read_input(folder / "windowed")  # no suffix: found by the DICM preamble
    assert (windowed[image < 120] == 0).all() and (windowed[image == 255] == 255).all()
    assert np.corrcoef(windowed[image >= 135], image[image >= 135])[0, 1] > 0.99

    write_dicom(folder / "m2.dcm", image.astype(np.int64) * 257, "MONOCHROME2")
    monochrome2 = read_input(folder / "m2.dcm")
    assert np.abs(monochrome2.astype(int) - window(image)).max() <= 1

    out = tmp_path / "out"
    summary = predict(predict_cfg(compose_cfg, tiny_ckpt, folder, out))
    assert summary["predicted"] == 3 and not summary["failures"]
    for key in ("plain", "windowed", "m2"):
        assert (
            cv2.imread(str(out / "masks" / f"{key}.png"), cv2.IMREAD_UNCHANGED).shape == image.shape
        )


def test_unreadable_inputs_are_skipped_listed_and_exit_2(tiny_ckpt: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "good8.png"), gradient())
    cv2.imwrite(str(folder / "sub" / "good16.tif"), gradient(50, 40).astype(np.uint16) * 200)
    cv2.imwrite(
        str(folder / "colour.jpg"), np.dstack([gradient(), gradient()[::-1], gradient()[:, ::-1]])
    )
    jpeg = (folder / "colour.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / "notes.png").write_text("not an image")
    (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    (folder / "readme.txt").write_text("ignored: not an input suffix")
    out = tmp_path / "out"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungseg.predict",
            f"ckpt_path={tiny_ckpt}",
            f"input={folder}",
            f"output={out}",
            "progress=false",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "3 input(s) failed" in proc.stderr
    for bad in ("cut.jpg", "notes.png", "broken.dcm"):
        assert str(folder / bad) in proc.stderr
    assert "images/s" in proc.stdout
    # one row per film, bad ones too
    rows = {Path(r["input"]).name: r for r in read_csv(out / "predictions.csv")}
    assert sorted(r["mask"] for r in rows.values() if r["mask"]) == [
        "masks/good8.png",
        "masks/sub/good16.png",
    ]
    assert [rows[n]["status"] for n in ("cut.jpg", "notes.png", "broken.dcm")] == ["error"] * 3
    assert "not a readable DICOM file" in rows["broken.dcm"]["status_reason"]
    assert (
        rows["colour.jpg"]["status"] == "refused"
        and "colour photograph" in rows["colour.jpg"]["status_reason"]
    )
    assert cv2.imread(str(out / "masks" / "sub" / "good16.png"), cv2.IMREAD_UNCHANGED).shape == (
        50,
        40,
    )


def test_existing_outputs_are_kept_unless_overwrite(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    source, out = tmp_path / "one.png", tmp_path / "out"
    cv2.imwrite(str(source), gradient())
    predict(predict_cfg(compose_cfg, tiny_ckpt, source, out, "overlays=false"))
    mask = out / "masks" / "one.png"
    mask.write_bytes(b"sentinel")
    with pytest.raises(LungsegError, match="already exist.*overwrite=true"):
        predict(predict_cfg(compose_cfg, tiny_ckpt, source, out))
    assert mask.read_bytes() == b"sentinel"
    predict(predict_cfg(compose_cfg, tiny_ckpt, source, out, "overwrite=true"))
    assert cv2.imread(str(mask), cv2.IMREAD_UNCHANGED).shape == (70, 90)
    # An output folder inside the input folder: its PNGs are not taken as new inputs on the next
    # run.
    summary = predict(predict_cfg(compose_cfg, tiny_ckpt, tmp_path, out, "overwrite=true"))
    assert summary["predicted"] == 1 and len(read_csv(out / "predictions.csv")) == 1
    with pytest.raises(LungsegError, match="device=gpu"):
        predict(predict_cfg(compose_cfg, tiny_ckpt, source, tmp_path / "o2", "device=gpu"))


def test_colliding_stems_get_distinct_outputs_and_pattern_filters(tmp_path: Path) -> None:
    for rel in ("a/1.png", "a/1.jpg", "b/1.png", "b/c/2.dcm", ".hidden/3.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    keys = {f.path.relative_to(tmp_path).as_posix(): f.key for f in find_inputs(tmp_path)}
    assert keys == {
        "a/1.jpg": "a/1_jpg",
        "a/1.png": "a/1_png",
        "b/1.png": "b/1",
        "b/c/2.dcm": "b/c/2",
    }
    assert [f.key for f in find_inputs(tmp_path, "**/*.dcm")] == ["b/c/2"]
    assert [f.key for f in find_inputs(tmp_path / "b" / "1.png")] == ["1"]
    with pytest.raises(LungsegError, match="no radiographs matching"):
        find_inputs(tmp_path, "*.bmp")
    with pytest.raises(LungsegError, match="no such file or folder"):
        find_inputs(tmp_path / "absent")


@pytest.mark.precision
def test_a_copied_128px_checkpoint_predicts_exactly_as_in_its_run_folder(
    compose_cfg, tmp_path: Path
) -> None:
    ckpt = train_tiny(tmp_path / "train", "data.image_size=128")
    alone = tmp_path / "elsewhere" / "model.ckpt"  # an empty folder: no .hydra/, no run
    alone.parent.mkdir()
    alone.write_bytes(ckpt.read_bytes())
    source = tmp_path / "one.png"
    cv2.imwrite(str(source), cv2.resize(gradient(), (300, 240)))
    masks = {}
    for name, path in (("run", ckpt), ("alone", alone)):
        summary = predict(
            predict_cfg(compose_cfg, path, source, tmp_path / name, "save_probabilities=true")
        )
        assert summary["image_size"] == 128 and summary["predicted"] == 1
        masks[name] = cv2.imread(
            str(tmp_path / name / "probabilities" / "one.png"), cv2.IMREAD_UNCHANGED
        )
    np.testing.assert_array_equal(masks["run"], masks["alone"])
    seg = LungSegmenter.from_checkpoint(alone)
    assert seg.image_size == 128 and seg.metadata["config"]["data"]["image_size"] == 128
    at_256 = LungSegmenter.from_checkpoint(alone, image_size=256).predict_proba(source)
    # the size matters, so the recorded one is used
    assert np.abs(at_256 - seg.predict_proba(source)).max() > 0.01


@pytest.mark.precision
def test_flip_tta_averages_with_the_mirrored_prediction(tiny_ckpt: Path) -> None:
    plain_seg = LungSegmenter.from_checkpoint(tiny_ckpt, "cpu", precision="32")
    tta_seg = LungSegmenter.from_checkpoint(tiny_ckpt, "cpu", precision="32", tta_flip=True)
    images = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    plain = plain_seg.probabilities(images)
    mirrored = plain_seg.probabilities(np.ascontiguousarray(images[..., ::-1]))[..., ::-1]
    np.testing.assert_allclose(tta_seg.probabilities(images), (plain + mirrored) / 2, atol=1e-7)
    # the net is not symmetric, so TTA changes the output
    assert np.abs(plain - mirrored).max() > 1e-3


def test_pickle_bearing_checkpoint_is_refused_before_writing(compose_cfg, tmp_path: Path) -> None:
    source = tmp_path / "one.png"
    cv2.imwrite(str(source), gradient())
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"net": {}}, "x": object()}, tmp_path / "evil.ckpt"
    )
    with pytest.raises(CheckpointError, match="refused"):
        predict(predict_cfg(compose_cfg, tmp_path / "evil.ckpt", source, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.precision
def test_truth_scores_the_written_masks_at_native_size(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    write_split(data, "test", [3, 7, 12], seed=4, size=48)
    images, masks = data / "ChestXray" / "test" / "image", data / "ChestXray" / "test" / "mask"
    out = tmp_path / "out"
    summary = predict(
        predict_cfg(compose_cfg, tiny_ckpt, images, out, f"truth={masks}", "overlays=false")
    )
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 3 and summary["truth_images"] == 3
    dice = []
    for row in rows:
        pred = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED) > 0
        truth = cv2.imread(row["truth"], cv2.IMREAD_GRAYSCALE) >= 128
        assert Path(row["truth"]).stem == Path(row["input"]).stem.replace("cxrimage", "cxrmask")
        dice.append(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
        assert float(row["dice"]) == pytest.approx(dice[-1], abs=1e-5)
        assert float(row["hd95_px"]) == pytest.approx(brute_force_hd95(pred, truth), abs=1e-3)
    assert summary["dice_mean"] == pytest.approx(np.mean(dice), abs=1e-5)

    (masks / "cxrmask_7.jpeg").unlink()
    with pytest.raises(LungsegError, match="cxrimage_7.png: no reference mask"):
        predict(predict_cfg(compose_cfg, tiny_ckpt, images, tmp_path / "out2", f"truth={masks}"))
    assert not (tmp_path / "out2").exists()  # refused before writing anything
    cv2.imwrite(str(masks / "cxrmask_7.jpeg"), np.zeros((20, 20), np.uint8))
    summary = predict(
        predict_cfg(compose_cfg, tiny_ckpt, images, tmp_path / "out3", f"truth={masks}")
    )
    assert (
        summary["truth_images"] == 2
        and "reference mask is 20x20 but its radiograph is 48x48" in summary["failures"][0]
    )


def test_the_network_leaves_a_core_to_the_finishing_of_native_size_films(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    """On a CPU (a GPU host runs it there too), threads unset: films over 16x the model's pixels
    (here 200 px for a 32 px model) run the network on all cores but one; films near the model's
    size, a set threads=, or a header that cannot be read leave torch's threads alone. The manifest
    records what the network ran on, and the caller gets its threads back when the run ends."""
    import json
    import logging

    from lungseg.inference.inputs import film_size

    monkeypatch.setattr("lungseg.runtime.usable_cores", lambda: 4)
    rng = np.random.default_rng(0)
    folders = {}
    for name, side in (("native", 200), ("small", 100)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for i in range(2):
            film = cv2.GaussianBlur(rng.integers(0, 256, (side, side), dtype=np.uint8), (0, 0), 3)
            cv2.imwrite(str(folders[name] / f"film{i}.png"), film)
    assert film_size(folders["native"] / "film0.png") == (200, 200)
    assert film_size(tmp_path / "missing.png") is None
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with caplog.at_level(logging.INFO, logger="lungseg.predict"):
            predict(
                predict_cfg(compose_cfg, tiny_ckpt, folders["small"], tmp_path / "o1", "device=cpu")
            )
        assert torch.get_num_threads() == 2 and "leaving a core" not in caplog.text
        predict(
            predict_cfg(
                compose_cfg,
                tiny_ckpt,
                folders["native"],
                tmp_path / "o2",
                "threads=2",
                "device=cpu",
            )
        )
        assert torch.get_num_threads() == 2
        with caplog.at_level(logging.INFO, logger="lungseg.predict"):
            summary = predict(
                predict_cfg(
                    compose_cfg, tiny_ckpt, folders["native"], tmp_path / "o3", "device=cpu"
                )
            )
        assert summary["network_threads"] == 3
        assert torch.get_num_threads() == 2  # given back when the run ended
        assert "200 px a side for a 32 px model: the network runs on 3 thread(s)" in caplog.text
        manifest = json.loads((tmp_path / "o3" / "run.json").read_text())
        assert manifest["network_threads"] == 3
    finally:
        torch.set_num_threads(before)
