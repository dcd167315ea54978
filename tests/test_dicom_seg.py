"""DICOM SEG output (lungseg.dicom.seg): two lung segments that reference the source film, read back
with highdicom and pydicom equal to the masks (and to the PNG mask of the same film), with the model
and the quality score recorded, and valid for a DICOM validator (dciodvfy, Debian's dicom3tools)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest

import lungseg
from lungseg.artifacts.description import ModelDescription
from lungseg.dicom.read import read_film
from lungseg.dicom.seg import SEGMENTS, quality_text, read_seg, write_seg
from lungseg.errors import DataError
from lungseg.inference.sides import split_film
from tests.dicom_films import chest_phantom, dx_dataset, write_dx
from tests.helpers import disc_pair

SHA = "0123456789abcdef" * 4


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    """The dciodvfy validator; installed from Debian's dicom3tools when missing and we are root."""
    found = shutil.which("dciodvfy")
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "dicom3tools"]
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=600)
        found = shutil.which("dciodvfy")
    if found is None:
        pytest.skip(
            "dciodvfy not found and not installable here (needs root and apt-get): "
            "apt-get install dicom3tools"
        )
    return found


def validate(dciodvfy: str, path: Path) -> list[str]:
    """dciodvfy's errors on ``path``, checked as a new object (warnings allowed: returned)."""
    command = [dciodvfy, "-new", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, errors
    return [line for line in lines if line.startswith("Warning")]


def write_film_and_seg(tmp_path: Path, **attributes: object):
    film, mask = chest_phantom()
    source = read_film(write_dx(tmp_path / "film.dcm", film, **attributes))
    sides = split_film(mask, source)
    seg = write_seg(
        source,
        sides.left.mask,
        sides.right.mask,
        ModelDescription(image_size=256),
        0.9531,
        True,
        tmp_path / "film.seg.dcm",
        model_name="cxr_small",
        weights_sha256=SHA,
        side_source=sides.side_source,
    )
    return source, sides, seg


@pytest.mark.parametrize(
    "attributes",
    [
        {"PixelSpacing": [0.2, 0.25]},
        {"PatientOrientation": None},
        {"Modality": "CR", "ImagerPixelSpacing": [0.1, 0.1]},
    ],
)
def test_seg_references_the_film_and_holds_both_lungs(
    tmp_path: Path, dciodvfy: str, attributes: dict
) -> None:
    source, sides, path = write_film_and_seg(tmp_path, **attributes)
    # highdicom reads it back: two segments, Lung with laterality, the masks pixel for pixel
    seg = hd.seg.segread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.study_uid
    referenced = [
        (
            series.SeriesInstanceUID,
            [i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence],
        )
        for series in seg.ReferencedSeriesSequence
    ]
    assert referenced == [(source.series_uid, [source.sop_instance_uid])]
    for number, (label, side) in enumerate(zip(SEGMENTS, ("Left", "Right"), strict=True), start=1):
        description = seg.get_segment_description(number)
        assert description.segment_label == label
        assert description.segmented_property_type.value == "39607008"  # SCT Lung
        lung = description.SegmentedPropertyTypeCodeSequence[0]
        modifier = lung.SegmentedPropertyTypeModifierCodeSequence[0]
        code = {"Left": "7771000", "Right": "24028007"}[side]  # SCT Left, Right
        assert (modifier.CodeValue, modifier.CodeMeaning) == (code, side)
        algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "lungseg"
        assert algorithm.AlgorithmVersion == lungseg.__version__
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        assert "model=cxr_small" in algorithm.AlgorithmParameters
        assert "quality_score=0.953100" in algorithm.AlgorithmParameters
        assert "needs_review=true" in algorithm.AlgorithmParameters
        assert f"weights_sha256={SHA}" in algorithm.AlgorithmParameters
    masks = read_seg(path)
    assert np.array_equal(masks["Left lung"], sides.left.mask)
    assert np.array_equal(masks["Right lung"], sides.right.mask)
    # pydicom reads it as a plain dataset: the same frames, the score in the content description
    plain = pydicom.dcmread(path)
    frames = plain.pixel_array
    assert frames.shape == (2, source.rows, source.columns)
    assert np.array_equal(frames[0] > 0, sides.left.mask)
    assert np.array_equal(frames[1] > 0, sides.right.mask)
    assert plain.ContentDescription == quality_text(0.9531, True)
    assert plain.ContentDescription == "lungs; quality_score 0.953; needs_review yes"
    assert plain.PatientID == source.dataset.PatientID and plain.Modality == "SEG"
    assert plain.PatientOrientation == source.dataset.get("PatientOrientation", "")
    assert validate(dciodvfy, path) == []


def test_an_empty_lung_still_gets_its_segment_and_series_can_be_shared(
    tmp_path: Path, dciodvfy: str
) -> None:
    film, mask = chest_phantom()
    source = read_film(write_dx(tmp_path / "film.dcm", film))
    left = np.zeros_like(mask)
    series = pydicom.uid.generate_uid()
    path = write_seg(
        source.dataset,
        left,
        mask,
        None,
        float("nan"),
        False,
        tmp_path / "a.seg.dcm",
        series_uid=series,
        instance_number=3,
    )
    got = read_seg(path)
    assert not got["Left lung"].any() and np.array_equal(got["Right lung"], mask)
    plain = pydicom.dcmread(path)
    assert (plain.SeriesInstanceUID, plain.InstanceNumber, plain.NumberOfFrames) == (series, 3, 2)
    assert "quality_score n/a" in plain.ContentDescription
    validate(dciodvfy, path)


def test_seg_write_refuses_what_it_cannot_reference_and_leaves_nothing(tmp_path: Path) -> None:
    film, mask = chest_phantom()
    no_uid = dx_dataset(film, StudyInstanceUID=None)
    with pytest.raises(DataError, match="no StudyInstanceUID, so a SEG cannot reference it"):
        write_seg(no_uid, mask, mask, None, 0.9, False, tmp_path / "x.seg.dcm")
    with pytest.raises(DataError, match=r"masks of \(10, 10\) px for a film of \(240, 200\) px"):
        write_seg(
            dx_dataset(film),
            np.zeros((10, 10), bool),
            np.zeros((10, 10), bool),
            None,
            0.9,
            False,
            tmp_path / "x.seg.dcm",
        )
    assert not list(tmp_path.iterdir())


def test_a_segmented_dicom_gives_a_seg_equal_to_its_png_mask(
    tmp_path: Path, tiny_ckpt: Path, dciodvfy: str
) -> None:
    from lungseg.inference.segmenter import LungSegmenter

    image, _ = disc_pair(np.random.default_rng(5), 96)  # the tiny model's kind of film
    path = write_dx(tmp_path / "disc.dcm", image.astype(np.uint16) * 16, PixelSpacing=[0.5, 0.5])
    segmenter = LungSegmenter.from_checkpoint(tiny_ckpt, device="cpu")
    result = segmenter.segment(path)
    assert result.mask.any()
    ok, png = cv2.imencode(".png", result.mask.astype(np.uint8) * 255)  # as lungseg.predict does
    (tmp_path / "disc.png").write_bytes(png.tobytes())
    film = read_film(path)
    sides = split_film(result.mask, film)
    seg = write_seg(
        film,
        sides.left.mask,
        sides.right.mask,
        segmenter.description,
        result.quality_score,
        result.needs_review,
        tmp_path / "disc.seg.dcm",
        side_source=sides.side_source,
    )
    masks = read_seg(seg)
    png_mask = cv2.imread(str(tmp_path / "disc.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert np.array_equal(masks["Left lung"] | masks["Right lung"], png_mask)
    assert not (masks["Left lung"] & masks["Right lung"]).any()
    segment = pydicom.dcmread(seg).SegmentSequence[0]
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert f"image_size={segmenter.image_size}" in algorithm.AlgorithmParameters
    assert f"model_created={segmenter.description.created}" in algorithm.AlgorithmParameters
    validate(dciodvfy, seg)
