"""The input gate (lungseg.inference.gate): refusals from a DICOM film's attributes, a colour
photograph refused and non-radiographs flagged from the pixels of any input, real chest films
passed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset

from lungseg.dicom.read import read_film
from lungseg.inference.gate import (
    ImageLimits,
    Status,
    check_film,
    check_image,
    gate,
    image_features,
)
from tests.dicom_films import chest_phantom, dx_dataset, write_dx
from tests.helpers import CXR, requires_cxr

SPLIT = CXR / "ChestXray"


def film_with(tmp_path: Path, **attributes: object):
    film, _ = chest_phantom()
    return read_film(write_dx(tmp_path / "film.dcm", film, **attributes))


@pytest.mark.parametrize(
    "attributes, reason",
    [
        ({"Modality": "CT"}, "Modality CT: not a projection radiograph"),
        ({"Modality": "MG"}, "Modality MG"),
        ({"Modality": None}, "no Modality"),
        ({"ViewPosition": "LL"}, "a lateral view (ViewPosition 'LL')"),
        ({"ViewPosition": "RL"}, "a lateral view"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "a colour image (PALETTE COLOR)"),
    ],
)
def test_films_refused_by_their_attributes(tmp_path: Path, attributes: dict, reason: str) -> None:
    status = check_film(film_with(tmp_path, **attributes))
    assert status.refused and reason in status.reason, status


def test_lateral_in_the_view_code_no_pixels_and_several_frames_are_refused(tmp_path: Path) -> None:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "399198007", "SCT"
    code.CodeMeaning = "right lateral"
    status = check_film(film_with(tmp_path, ViewPosition=None, ViewCodeSequence=[code]))
    assert status.refused and "lateral" in status.reason
    code.CodeMeaning = "left lateral decubitus"  # a frontal film of a patient lying on the side
    decubitus = check_film(film_with(tmp_path, ViewPosition=None, ViewCodeSequence=[code]))
    assert decubitus.status == "ok"
    film, _ = chest_phantom()
    ds = dx_dataset(film)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    assert check_film(read_film(tmp_path / "nopix.dcm")) == Status("refused", "no pixel data")
    two = dx_dataset(np.concatenate([film, film]), NumberOfFrames=2, Rows=film.shape[0])
    two.save_as(tmp_path / "two.dcm", enforce_file_format=True)
    assert check_film(read_film(tmp_path / "two.dcm")).reason == "a multi-frame object (2 frames)"


def test_frontal_films_pass_and_oblique_is_flagged(tmp_path: Path) -> None:
    for view in ("PA", "AP", ""):
        for modality in ("DX", "CR"):
            film = film_with(tmp_path, ViewPosition=view, Modality=modality)
            assert check_film(film).status == "ok"
    assert check_film(film_with(tmp_path, ViewPosition="RLO")).flagged


def test_a_colour_photograph_is_refused_and_grey_stored_as_rgb_is_not() -> None:
    rng = np.random.default_rng(0)
    photo = cv2.resize(
        rng.integers(0, 256, (6, 8, 3)).astype(np.uint8), (400, 300), interpolation=cv2.INTER_CUBIC
    )
    status = check_image(photo)
    assert status.refused and "colour photograph" in status.reason
    grey, _ = chest_phantom()
    grey8 = (grey // 16).astype(np.uint8)
    as_rgb = np.repeat(grey8[..., None], 3, axis=2)
    assert image_features(as_rgb)["colour"] == 0.0
    assert check_image(as_rgb) == check_image(grey8)
    deep_rgb = np.repeat(grey[..., None], 3, axis=2)  # 16-bit channels are scaled to 8-bit levels
    assert image_features(deep_rgb)["colour"] == 0.0


def non_radiographs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs that are no chest film: what the gate must flag (held out from the limits' choice)."""
    h, w = 420, 380
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    page = np.full((int(w * 1.41), w), 240, np.uint8)
    for i in range(22):
        cv2.putText(
            page,
            "Request form: chest PA, patient 0042",
            (12, 24 + 24 * i),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            20,
            1,
        )
    ct = np.zeros((h, w), np.uint8)
    cv2.ellipse(ct, (w // 2, h // 2), (160, 120), 0, 0, 360, 120, -1)
    for cx in (w // 2 - 70, w // 2 + 70):
        cv2.ellipse(ct, (cx, h // 2 - 10), (55, 80), 0, 0, 360, 25, -1)
    return {
        "noise": rng.integers(0, 256, (h, w)).astype(np.uint8),
        "gradient": (255 * xx).astype(np.uint8),
        "radial gradient": (255 * np.hypot(yy - 0.5, xx - 0.5) / 0.75).astype(np.uint8),
        "blank": np.full((h, w), 128, np.uint8),
        "text page": page,
        "CT slice": np.clip(ct + rng.normal(0, 5, ct.shape), 0, 255).astype(np.uint8),
        "strip": np.tile(chest_phantom()[0], (1, 3)),
    }


def test_non_radiographs_are_flagged_with_the_feature_that_caught_them() -> None:
    for name, image in non_radiographs(np.random.default_rng(1)).items():
        status = check_image(image)
        assert status.flagged, (name, status, image_features(image))
        assert status.reason.startswith("unlike a chest radiograph: ")


@requires_cxr
def test_held_out_chest_films_pass_as_they_are_and_when_shifted_mildly() -> None:
    from lungseg.evaluation.robustness import SHIFTS

    paths = sorted((SPLIT / "test" / "image").iterdir())
    films = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths]
    assert len(films) == 15
    for film in films:
        assert check_image(film).status == "ok"
        for name in ("rotation_deg", "zoom_out", "gamma", "noise", "collimation", "inverted"):
            shift, levels = SHIFTS[name]
            rng = np.random.default_rng(0)
            shifted = shift(film, np.zeros(film.shape, np.uint8), levels[0], rng)[0]
            assert check_image(shifted).status == "ok", (name, image_features(shifted))


@requires_cxr
def test_limits_hold_every_train_and_val_film() -> None:
    limits = ImageLimits()
    for split in ("train", "val"):
        for path in sorted((SPLIT / split / "image").iterdir()):
            f = image_features(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
            # each limit lies a factor of two beyond the most extreme training film
            assert 2 * limits.min_detail <= f["detail"] * 1.01
            assert f["detail"] <= limits.max_detail / 1.99
            assert f["flat"] < limits.max_flat and f["dark_edge"] < limits.max_dark_edge


def test_gate_puts_refusal_first_and_joins_flags(tmp_path: Path) -> None:
    lateral = film_with(tmp_path, ViewPosition="LL")
    noise = np.random.default_rng(0).integers(0, 256, (300, 300)).astype(np.uint8)
    assert gate(lateral, noise).refused and "lateral" in gate(lateral, noise).reason
    oblique = film_with(tmp_path, ViewPosition="LLO")
    both = gate(oblique, noise)
    assert both.flagged and "oblique" in both.reason and "detail" in both.reason
    ok = film_with(tmp_path)
    assert gate(ok, ok.pixels()).status == "ok" and gate().status == "ok"
    assert gate(image=noise).flagged
