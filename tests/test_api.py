"""The Python API: the README's example runs as written; arrays of any dtype and layout, paths and
streams all go through the one LungSegmenter road and agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungseg import LungSegmenter
from lungseg.errors import DataError
from tests.helpers import CXR, ROOT, cpu_precision, train_tiny, write_split


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A disc phantom radiograph of 96 x 96 px (its lung is the dark disc)."""
    root = tmp_path_factory.mktemp("phantom")
    write_split(root, "test", [7], size=96, seed=9)
    return root / "ChestXray" / "test" / "image" / "cxrimage_7.png"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README has no api-example block"
    return match.group(1)


def test_the_readme_example_runs_as_written(tiny_ckpt: Path, phantom: Path, tmp_path: Path) -> None:
    code = readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 5
    (tmp_path / "outputs" / "demo" / "checkpoints").mkdir(parents=True)
    (tmp_path / "outputs" / "demo" / "checkpoints" / "best.ckpt").write_bytes(
        tiny_ckpt.read_bytes()
    )
    real = sorted((CXR / "orig" / "test" / "image").glob("*.png"))
    (tmp_path / "chest.png").write_bytes((real[0] if real else phantom).read_bytes())
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    h, w = cv2.imread(str(tmp_path / "chest.png"), cv2.IMREAD_UNCHANGED).shape[:2]
    assert re.fullmatch(rf"\({h}, {w}\) lung fraction 0\.\d\d, model input 32 px\n", proc.stdout), (
        proc.stdout
    )


def test_arrays_of_any_dtype_and_layout_match_the_file(tiny_ckpt: Path, phantom: Path) -> None:
    seg = LungSegmenter.from_checkpoint(tiny_ckpt, "cpu")
    gray = cv2.imread(str(phantom), cv2.IMREAD_GRAYSCALE)
    from_file = seg.predict_proba(phantom)
    assert from_file.dtype == np.float32 and from_file.shape == gray.shape
    assert from_file.std() > 0.01
    # the intensity rule (window) is the same for every depth: a 16-bit or float copy is the same
    # model input
    for array in (
        gray,
        np.dstack([gray] * 3),
        gray[:, :, None],
        gray.astype(np.uint16) * 257,
        gray.astype(np.float32) / 255,
    ):
        got = seg.predict_proba(array)
        np.testing.assert_array_equal(got, from_file, err_msg=f"{array.dtype} {array.shape}")
    mask = seg.predict(str(phantom))
    assert mask.dtype == np.bool_ and mask.shape == gray.shape
    np.testing.assert_array_equal(mask, seg.segment(phantom).mask)
    with_nan = np.zeros((32, 32))
    with_nan[3, 4] = np.nan
    for bad, message in (
        (np.zeros((40, 40, 2), np.uint8), "H x W"),
        (np.zeros((1, 9), np.uint8), "H x W"),
        (np.zeros((8, 40), np.uint8), "at least 16 px a side"),
        (with_nan, "NaN"),
        (np.zeros((8, 8), bool), "dtype bool"),
    ):
        with pytest.raises(DataError, match=message):
            seg.predict(bad)


@pytest.mark.precision
def test_predict_many_streams_in_order_with_errors_in_place(
    tiny_ckpt: Path, phantom: Path, tmp_path: Path
) -> None:
    seg = LungSegmenter.from_checkpoint(tiny_ckpt, "cpu")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    gray = cv2.imread(str(phantom), cv2.IMREAD_GRAYSCALE)
    images = [phantom, gray[:50, :70], broken, gray.T, phantom]
    stream = seg.predict_many(images, batch_size=2, skip_errors=True)
    assert not isinstance(stream, list)  # lazy
    results = list(stream)
    assert isinstance(results[2], DataError) and "broken.png" in str(results[2])
    ok = [r for i, r in enumerate(results) if i != 2]
    assert [r.mask.shape for r in ok] == [(96, 96), (50, 70), (96, 96), (96, 96)]
    for r, image in zip(ok, [phantom, gray[:50, :70], gray.T, phantom], strict=True):
        # batched == one at a time
        np.testing.assert_allclose(r.probability, seg.predict_proba(image), atol=1e-6)
    assert ok[0].stats["plausibility"] and ok[0].stats["height"] == 96
    with pytest.raises(DataError, match="broken.png"):
        list(seg.predict_many(images, batch_size=2))


@pytest.mark.precision
def test_an_ensemble_averages_its_members_in_the_api_predict_and_evaluate(
    compose_cfg, tiny_ckpt: Path, phantom: Path, tmp_path: Path
) -> None:
    from lungseg.evaluate import evaluate
    from lungseg.predict import predict

    other = train_tiny(tmp_path / "other", "seed=7")
    members = [LungSegmenter.from_checkpoint(p, "cpu", precision="32") for p in (tiny_ckpt, other)]
    ensemble = LungSegmenter.load([tiny_ckpt, other], "cpu", precision="32")
    x = np.random.default_rng(2).random((3, 1, 32, 32), dtype=np.float32)
    expected = (members[0].probabilities(x) + members[1].probabilities(x)) / 2
    np.testing.assert_allclose(ensemble.probabilities(x), expected, atol=1e-6)
    # two different models
    assert np.abs(members[0].probabilities(x) - members[1].probabilities(x)).max() > 1e-3
    assert [m["source"] for m in ensemble.metadata["ensemble"]] == [str(tiny_ckpt), str(other)]

    # predict runs in the CPU's precision (auto): its oracle are the members run so too
    out = tmp_path / "pred"
    summary = predict(
        compose_cfg(
            f"ckpt_path=[{tiny_ckpt},{other}]",
            f"input={phantom}",
            f"output={out}",
            "progress=false",
            "save_probabilities=true",
            config_name="predict",
        )
    )
    assert summary["predicted"] == 1 and summary["precision"] == cpu_precision()
    written = cv2.imread(str(out / "probabilities" / "cxrimage_7.png"), cv2.IMREAD_UNCHANGED)
    members = [LungSegmenter.from_checkpoint(p, "cpu") for p in (tiny_ckpt, other)]
    mean_prob = (members[0].predict_proba(phantom) + members[1].predict_proba(phantom)) / 2
    assert np.abs(written.astype(float) - np.round(mean_prob * 255)).max() <= 1

    data = phantom.parents[3]
    report = evaluate(
        compose_cfg(
            f"ckpt_path=[{tiny_ckpt},{other}]",
            f"data.root={data}",
            "split=test",
            "calibration=false",
            config_name="evaluate",
        )
    )
    assert report["n_images"] == 1 and report["checkpoint"] == [str(tiny_ckpt), str(other)]
    assert Path(report["output_dir"]).name == "test-ensemble-of-2"
