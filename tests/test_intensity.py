"""One intensity rule for every bit depth: the same film as an 8-bit PNG, a 16-bit PNG and a DICOM
becomes the same model input (``window``), and a model is always fed by the rule recorded in it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungseg.artifacts.description import ModelDescription
from lungseg.data.images import histogram, read_gray, to_gray8, window
from lungseg.inference.inputs import read_input
from lungseg.inference.segmenter import LungSegmenter
from lungseg.metrics import dice_iou, mask_counts
from tests.helpers import CXR, requires_cxr
from tests.test_predict import write_dicom

VAL_IMAGES = CXR / "ChestXray" / "val" / "image"


def deep_versions(film: np.ndarray, folder: Path, seed: int = 0) -> dict[str, Path]:
    """The 8-bit film as a detector would have stored it: 12 bits with an offset (its 8-bit export
    is these values truncated), as a 16-bit PNG and as a MONOCHROME1 DICOM with a rescale slope and
    intercept."""
    rng = np.random.default_rng(seed)
    # 400..4495: 12-bit, not 0..65535
    deep = film.astype(np.int64) * 16 + rng.integers(0, 16, film.shape) + 400
    paths = {
        "png8": folder / "film8.png",
        "png16": folder / "film16.png",
        "dicom": folder / "film.dcm",
    }
    cv2.imwrite(str(paths["png8"]), film)
    cv2.imwrite(str(paths["png16"]), deep.astype(np.uint16))
    # bone stored dark
    write_dicom(paths["dicom"], 10000 - 2 * deep, "MONOCHROME1", slope=0.5, intercept=-100)
    return paths


def test_window_stretches_every_depth_by_its_own_percentiles() -> None:
    rng = np.random.default_rng(0)
    # not full range, like most films
    film = np.clip(rng.normal(120, 30, (200, 200)), 40, 210).astype(np.uint8)
    out = window(film)
    assert out.dtype == np.uint8
    lo, hi = np.percentile(film, [0.5, 99.5])
    assert (out[film <= lo] == 0).all() and (out[film >= hi] == 255).all()
    inner = (film > lo) & (film < hi)
    expected = np.round((film[inner] - lo) * 255 / (hi - lo))
    assert np.abs(out[inner] - expected).max() <= 1
    # A linear change of the export (gain and offset, any depth) gives the very same input.
    assert np.array_equal(window(film.astype(np.uint16) * 16 + 400), out)
    assert np.array_equal(window(film.astype(np.float32) * 0.01 - 3), out)
    # flat: black
    assert np.array_equal(window(np.full((9, 9), 7, np.uint16)), np.zeros((9, 9), np.uint8))
    two = np.zeros((10, 10), np.uint8)
    two[:, 5:] = 200
    assert set(np.unique(window(two))) == {0, 255}
    # minmax (lungseg 0.2) fed the same film to the model two ways: 8-bit as is, 16-bit stretched.
    assert (
        np.abs(
            to_gray8(film, "minmax").astype(int)
            - to_gray8(film.astype(np.uint16) * 16 + 400, "minmax")
        ).max()
        > 30
    )


def test_histogram_and_window_agree_with_numpy_on_every_depth() -> None:
    """The fast paths (OpenCV's histogram, the float32 map in place) give numpy's answers: counts
    as np.bincount (a box cut from a film too), levels as the rule's formula per grey level."""
    rng = np.random.default_rng(3)
    film8 = rng.integers(0, 256, (301, 257), dtype=np.uint8)
    film16 = rng.integers(0, 4096, (301, 257)).astype(np.uint16)
    for film in (film8, film16, film8[17:200, 9:111], film16[::3, 5:]):
        np.testing.assert_array_equal(
            histogram(film), np.bincount(film.ravel(), minlength=256).astype(np.int64)
        )
    lo, hi = np.percentile(film16, [0.5, 99.5], method="inverted_cdf")
    levels = np.arange(4096, dtype=np.float64)
    table = np.clip(np.round((levels - lo) * 255 / (hi - lo)), 0, 255).astype(np.uint8)
    got = window(film16)
    # float32 against float64 may round a level lying on .5 the other way: one grey level at most
    assert np.abs(got.astype(int) - table[film16]).max() <= 1
    assert (got == table[film16]).mean() > 0.99
    np.testing.assert_array_equal(window(film16.astype(np.float32)), got)  # a float DICOM's way


@requires_cxr
def test_8bit_16bit_and_dicom_of_one_film_give_one_model_input_and_one_mask(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    seg = LungSegmenter.from_checkpoint(tiny_ckpt, device="cpu")
    assert seg.description.intensity == "window"
    for film_path in sorted(VAL_IMAGES.iterdir())[:3]:
        film = read_gray(film_path)
        raw = cv2.imread(str(film_path), cv2.IMREAD_GRAYSCALE)
        paths = deep_versions(raw, tmp_path, seed=len(film_path.name))
        grays = {k: read_input(p) for k, p in paths.items()}
        # training and inference read a file the same way
        assert np.array_equal(grays["png8"], film)
        # equal but for the deep film's sub-8-bit levels (under 1 grey level)
        for key in ("png16", "dicom"):
            diff = np.abs(grays[key].astype(int) - film)
            assert diff.max() <= 4 and diff.mean() < 1.0, (
                film_path.name,
                key,
                diff.max(),
                diff.mean(),
            )
        masks = {k: seg.predict(p) for k, p in paths.items()}
        for key in ("png16", "dicom"):
            dice = dice_iou(*mask_counts(masks[key], masks["png8"]))[0]
            assert masks["png8"].mean() > 0.05  # a real mask, not two empty ones
            assert dice >= 0.99, (film_path.name, key, dice)


def test_a_model_is_fed_by_the_rule_recorded_in_it(tiny_ckpt: Path) -> None:
    seg = LungSegmenter.from_checkpoint(tiny_ckpt, device="cpu")
    film = np.clip(np.random.default_rng(1).normal(120, 30, (64, 64)), 40, 210).astype(np.uint8)
    assert np.array_equal(seg.read(film), window(film))
    old = dataclasses.replace(
        seg.description,
        preprocessing={k: v for k, v in seg.description.preprocessing.items() if k != "intensity"},
    )  # as lungseg 0.2 wrote it
    assert ModelDescription.from_dict(old.to_dict()).intensity == "minmax"
    seg.description = old
    assert np.array_equal(seg.read(film), film)  # 8-bit as is, as that model was trained
    with pytest.raises(ValueError, match="intensity rule 'gamma'"):
        to_gray8(film, "gamma")


@requires_cxr
def test_evaluation_reads_a_split_by_the_models_rule(compose_cfg) -> None:
    from hydra.utils import instantiate

    from lungseg.data.layout import find_pairs

    pairs, _ = find_pairs(CXR, "val")
    raw = cv2.imread(str(pairs[0].image), cv2.IMREAD_GRAYSCALE)
    cfg = compose_cfg(
        f"data.root={CXR}", "data.image_size=256", "data.num_workers=0", config_name="evaluate"
    )
    for rule, expected in (("window", window(raw)), ("minmax", raw)):
        datamodule = instantiate(cfg.data, image_size=256, train_transform=None, intensity=rule)
        np.testing.assert_array_equal(datamodule.dataset("val").raw(0)[0], expected)
