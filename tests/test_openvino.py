"""backend=openvino: the OpenVINO backend agrees with PyTorch fp32, runs lungseg.predict without
torch, exports an IR carrying the description; NNCF INT8 is refused beyond the Dice bound and
written within it; backend=auto times once, caches, and times again when the model changes;
lungseg.bench mode=backends."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from lungseg import LungSegmenter
from lungseg.artifacts.openvino import read_metadata, read_model
from lungseg.errors import LungsegError, MissingExtraError
from lungseg.evaluation.quantization import film_dice, validation_films
from lungseg.export import export
from lungseg.inference.backends import choice as backend_choice
from lungseg.inference.backends.onnxruntime import OnnxBackend
from lungseg.inference.backends.openvino import OpenVinoBackend
from lungseg.inference.inputs import calibration_files, calibration_images
from tests.helpers import ROOT, run_bench, write_split
from tests.test_export import export_cfg, reference
from tests.test_onnx_predict import RUN_WITHOUT_TORCH

FP32_TOLERANCE = 1e-5  # one graph, two fp32 runtimes: rounding only


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root: 12 train phantoms (80 px) to calibrate on, 6 val phantoms to check on."""
    root = tmp_path_factory.mktemp("phantoms")
    write_split(root, "train", list(range(12)), size=80, seed=5)
    write_split(root, "val", list(range(30, 36)), size=80, seed=7)
    return root


def test_openvino_matches_pytorch_fp32_and_the_ir_carries_the_description(
    compose_cfg, tiny_ckpt: Path, phantoms: Path, tmp_path: Path
) -> None:
    xml, onnx_file = tmp_path / "lung.xml", tmp_path / "lung.onnx"
    result = export(export_cfg(compose_cfg, tiny_ckpt, "format=openvino", f"output={xml}"))
    export(export_cfg(compose_cfg, tiny_ckpt, f"output={onnx_file}", "verify=false"))
    assert result["max_abs_diff"] < FP32_TOLERANCE and xml.with_suffix(".bin").is_file()
    images = calibration_images(calibration_files(phantoms, 12), 32)
    expected = reference(tiny_ckpt, images)
    assert expected.std() > 0.05  # a model that says something
    torch_seg = LungSegmenter.load(tiny_ckpt, precision="32")
    for source, backend in ((xml, None), (onnx_file, "openvino"), (tiny_ckpt, "openvino")):
        seg = LungSegmenter.load(source, precision="32", backend=backend)
        assert isinstance(seg.backend, OpenVinoBackend) and seg.precision == "32-true", source
        np.testing.assert_allclose(seg.probabilities(images), expected, atol=FP32_TOLERANCE)
        assert seg.metadata == torch_seg.metadata  # the description travelled
    card = (tmp_path / "lung.xml.README.md").read_text()
    assert read_metadata(read_model(xml))["model_card"] == card and "lungseg" in card
    with pytest.raises(LungsegError, match="backend=torch cannot run .*lung.onnx"):
        LungSegmenter.load(onnx_file, backend="torch")
    with pytest.raises(LungsegError, match="backend=onnxruntime cannot run .*export the check"):
        LungSegmenter.load(tiny_ckpt, backend="onnxruntime")
    with pytest.raises(LungsegError, match="backend=tensorrt: use torch, onnxruntime, openvino"):
        LungSegmenter.load(xml, backend="tensorrt")


def test_predict_with_openvino_never_imports_torch(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    xml, onnx_file = tmp_path / "lung.xml", tmp_path / "lung.onnx"
    export(export_cfg(compose_cfg, tiny_ckpt, "format=openvino", f"output={xml}", "verify=false"))
    export(export_cfg(compose_cfg, tiny_ckpt, f"output={onnx_file}", "verify=false"))
    data = tmp_path / "data"
    write_split(data, "test", [1, 2, 3], size=72, seed=3)
    images = data / "ChestXray" / "test" / "image"
    oracle = LungSegmenter.load(tiny_ckpt, precision="32")
    for name, settings in (
        ("onnx", [f"model_path={onnx_file}", "backend=openvino"]),
        ("xml", [f"model_path={xml}"]),
    ):
        out = tmp_path / name
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                RUN_WITHOUT_TORCH,
                *settings,
                "precision=32",
                f"input={images}",
                f"output={out}",
                "progress=false",
                "save_probabilities=true",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout.split("HEAVY_MODULES=")[1].splitlines()[0]) == [], name
        assert "OpenVINO" in proc.stdout  # predict's log names the backend
        for film in sorted(images.iterdir()):
            got = cv2.imread(str(out / "probabilities" / f"{film.stem}.png"), cv2.IMREAD_UNCHANGED)
            want = np.round(oracle.predict_proba(film) * 255)
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, (name, film)


def test_int8_export_refuses_an_impossible_bound_in_one_line(
    tiny_ckpt: Path, phantoms: Path, tmp_path: Path
) -> None:
    out = tmp_path / "int8.xml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungseg.export",
            f"ckpt_path={tiny_ckpt}",
            "format=openvino",
            "quantize=int8",
            f"calibration={phantoms}",
            "max_dice_drop=-1",
            f"output={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors == proc.stderr.strip().splitlines()[-1:], proc.stderr[-3000:]
    assert "INT8 refused" in errors[0] and "more than max_dice_drop=-1" in errors[0]
    assert "a drop of" in errors[0] and "6 val films" in errors[0]
    written = [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    assert not written  # no .xml, .bin or card


def test_int8_export_writes_a_model_within_the_bound(
    compose_cfg, tiny_ckpt: Path, phantoms: Path, tmp_path: Path
) -> None:
    fp32, int8 = tmp_path / "fp32.xml", tmp_path / "int8.xml"
    export(export_cfg(compose_cfg, tiny_ckpt, "format=openvino", f"output={fp32}", "verify=false"))
    result = export(
        export_cfg(
            compose_cfg,
            tiny_ckpt,
            "format=openvino",
            f"output={int8}",
            "quantize=int8",
            f"calibration={phantoms}",
            "max_dice_drop=0.05",
        )
    )
    details = result["quantization"]
    assert details["validation_films"] == 6 and details["calibration_images"] == 12
    assert details["fake_quantize_ops"] > 0 and details["mean_dice_drop"] <= 0.05
    seg = LungSegmenter.load(int8, precision="32")
    assert seg.precision == "int8" and seg.metadata == LungSegmenter.load(tiny_ckpt).metadata
    stored = json.loads(read_metadata(read_model(int8))["quantization"])
    assert stored == json.loads(json.dumps(details))
    assert "## INT8 quantisation (OpenVINO)" in (tmp_path / "int8.xml.README.md").read_text()
    # measured again here, from the written files: the masks are within the bound
    films = validation_films(phantoms, seg.description)
    want = np.mean(film_dice(OpenVinoBackend(fp32, "cpu", precision="32"), films))
    got = np.mean(film_dice(seg.backend, films))
    assert want - got <= 0.05
    assert got == pytest.approx(details["int8_mean_dice"]["32-true"], abs=1e-6)
    images = calibration_images(calibration_files(phantoms, 12), 32)
    assert not np.array_equal(
        seg.probabilities(images), LungSegmenter.load(fp32, precision="32").probabilities(images)
    )  # really quantised


def test_auto_times_once_caches_and_times_again_when_the_model_changes(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    model = tmp_path / "lung.onnx"
    export(export_cfg(compose_cfg, tiny_ckpt, f"output={model}", "verify=false"))
    monkeypatch.setenv("LUNGSEG_HOME", str(tmp_path / "home"))
    timings: list[list[str]] = []
    speeds = {"onnxruntime": 10.0, "openvino": 20.0}

    def timed(backends, size, *args):
        timings.append(sorted(backends))
        return {name: speeds[name] for name in backends}

    monkeypatch.setattr(backend_choice, "time_backends", timed)
    caplog.set_level(logging.INFO, logger="lungseg.inference.backends.choice")
    first = LungSegmenter.load(model, backend="auto")
    assert timings == [["onnxruntime", "openvino"]] and isinstance(first.backend, OpenVinoBackend)
    assert "backend=auto: openvino" in caplog.text and "timed now" in caplog.text
    cache = tmp_path / "home" / "backend-choice.json"
    entries = json.loads(cache.read_text())["entries"]
    (entry,) = entries.values()
    assert entry["backend"] == "openvino" and entry["rates"] == speeds
    assert entry["model_sha256"] == backend_choice.model_digest(model)
    assert entry["host"]["cpu"] and entry["host"]["versions"]["openvino"]
    caplog.clear()
    again = LungSegmenter.load(model, backend="auto")
    assert len(timings) == 1 and isinstance(again.backend, OpenVinoBackend)  # from the cache
    assert "cached in" in caplog.text
    proto = onnx.load(str(model))  # the same file, changed: timed again, its old entry dropped
    props = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**props, "note": "v2"})
    onnx.save(proto, str(model))
    speeds.update(onnxruntime=30.0)
    changed = LungSegmenter.load(model, backend="auto")
    assert len(timings) == 2 and isinstance(changed.backend, OnnxBackend)
    entries = json.loads(cache.read_text())["entries"]
    assert [e["backend"] for e in entries.values()] == ["onnxruntime"]


def test_the_short_timing_alternates_backends_and_takes_medians(monkeypatch) -> None:
    now, calls = [0.0], []

    class Costly:
        def __init__(self, name: str, seconds: list[float]) -> None:
            self.name, self.seconds = name, iter(seconds)

        def probabilities(self, images: np.ndarray) -> np.ndarray:
            calls.append(self.name)
            now[0] += next(self.seconds)
            return images

    monkeypatch.setattr(backend_choice, "clock", lambda: now[0])
    backends = {"a": Costly("a", [9, 1, 5, 2]), "b": Costly("b", [9, 4, 4, 8])}
    rates = backend_choice.time_backends(backends, 16, batch=4, rounds=3)
    assert calls == ["a", "b"] * 4  # a warm-up call each, then rounds alternating
    assert rates == {"a": 4 / 2, "b": 4 / 4}  # the median of each backend's three timed calls


def test_a_missing_openvino_package_is_one_line_naming_the_extra(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path, monkeypatch
) -> None:
    model = tmp_path / "lung.onnx"
    export(export_cfg(compose_cfg, tiny_ckpt, f"output={model}", "verify=false"))
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    message = 'needs OpenVINO (and NNCF for its INT8 export): pip install "lungseg[openvino]"'
    with pytest.raises(MissingExtraError, match=re.escape(message)) as err:
        LungSegmenter.load(model, backend="openvino")
    assert "\n" not in str(err.value)
    with pytest.raises(MissingExtraError, match="lungseg\\[openvino\\]"):
        export(export_cfg(compose_cfg, tiny_ckpt, "format=openvino", f"output={tmp_path}/m.xml"))
    monkeypatch.setenv("LUNGSEG_HOME", str(tmp_path / "home"))
    auto = LungSegmenter.load(model, backend="auto")
    assert isinstance(auto.backend, OnnxBackend)  # the one backend left


def test_bench_backends_mode_times_every_backend_side_by_side(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    proc, result = run_bench(
        out,
        "mode=backends",
        "device=cpu",
        "data.image_size=32",
        "model.base_filters=4",
        "model.depth=2",
        "batch_size=2",
        "backends.rounds=1",
        "backends.calibration_images=3",
        f"data_root={tiny_dataset}",
        "threads=1",
        timeout=300,
    )
    rows = {(r["backend"], r["model"], r["precision"]) for r in result["rows"]}
    assert {
        ("torch", "fp32", "32-true"),
        ("onnxruntime", "fp32", "32-true"),
        ("onnxruntime", "int8", "int8"),
        ("openvino", "fp32", "32-true"),
        ("openvino", "int8 NNCF", "int8"),
    } <= rows
    assert all(r["img_s"] > 0 for r in result["rows"]) and result["host"]["threads"] == 1
    assert max(r["vs_torch_best_float"] for r in result["rows"] if r["backend"] == "torch") == 1.0
    assert set(result["auto_picks"]) == {"checkpoint", "fp32 .onnx", "INT8 .onnx"}
    assert "vs PyTorch best float" in proc.stdout and "load average" in proc.stdout
    assert "backend=auto would pick" in proc.stdout
