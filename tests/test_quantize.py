"""python -m lungseg.export quantize=int8: a static INT8 (QDQ, per-channel) ONNX file, calibrated on
radiographs through the project's preprocessing, carrying the fp32 export's metadata and card, close
to the fp32 model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import lungseg.artifacts.quantize
from lungseg.errors import DataError, LungsegError
from lungseg.export import INPUT_NAME, export, run_exported
from lungseg.inference.inputs import calibration_files, calibration_images
from lungseg.inference.segmenter import LungSegmenter
from lungseg.metrics import mask_dice
from tests.helpers import write_split
from tests.test_export import export_cfg, reference

# Measured on the 1-epoch TINY model over these 12 phantoms: max |int8 - fp32| 0.044, mask Dice
# 0.978.
MAX_PROB_DIFF, MIN_DICE = 0.15, 0.95


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root: 12 train phantoms (80 px) for calibration, and 5 test phantoms calibration
    must not use."""
    root = tmp_path_factory.mktemp("phantoms")
    write_split(root, "train", list(range(12)), size=80, seed=5)
    write_split(root, "test", [40, 41, 42, 43, 44], size=80, seed=6)
    return root


def props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_int8_file_is_qdq_per_channel_close_to_fp32_and_carries_the_description(
    compose_cfg, tiny_ckpt: Path, phantoms: Path, tmp_path: Path
) -> None:
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export(export_cfg(compose_cfg, tiny_ckpt, f"output={fp32}", "verify=false"))
    result = export(
        export_cfg(
            compose_cfg, tiny_ckpt, f"output={int8}", "quantize=int8", f"calibration={phantoms}"
        )
    )
    assert (
        0 < result["max_abs_diff"] < MAX_PROB_DIFF and MIN_DICE <= result["mask_dice"] < 1.0 + 1e-9
    )

    proto = onnx.load(str(int8))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= 20
    weights = {t.name: t for t in proto.graph.initializer}
    first, *convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    conv_weights = [n.input[1] for n in convs]
    dq_of = {n.output[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    # every conv's weight but the first one's comes out of int8
    assert len(conv_weights) == 2 * 2 + 2 + 2 * 2
    assert all(w in dq_of for w in conv_weights)
    # kept fp32
    assert INPUT_NAME in first.input and weights[first.input[1]].data_type == onnx.TensorProto.FLOAT
    for w in conv_weights:
        q, scale = (weights[name] for name in dq_of[w].input[:2])
        assert q.data_type == onnx.TensorProto.INT8
        scales = numpy_helper.to_array(scale)
        assert scales.shape == (numpy_helper.to_array(q).shape[0],)  # one scale per output channel
        assert scales.size == 1 or np.unique(scales).size > 1  # ... and they differ

    fp32_props, int8_props = props(fp32), props(int8)
    for key in ("image_size", "size_divisor", "source_checkpoint", "lungseg_description"):
        assert int8_props[key] == fp32_props[key], key
    assert json.loads(int8_props["lungseg_description"])["image_size"] == 32
    assert (
        int8_props["model_card"].startswith(fp32_props["model_card"])
        and "## INT8 quantisation" in int8_props["model_card"]
    )
    assert (tmp_path / "int8.onnx.README.md").read_text() == int8_props["model_card"]
    quant = json.loads(int8_props["quantization"])
    assert (
        quant["format"] == "QDQ"
        and quant["calibration_images"] == 12
        and quant["calibration_source"] == phantoms.name
    )

    files = calibration_files(phantoms, 64)
    images = calibration_images(files, 32)
    expected = reference(tiny_ckpt, images)
    # a model that says something
    assert expected.std() > 0.05 and 0.05 < (expected >= 0.5).mean() < 0.95
    for batch in (images, images[:1], images[3:8]):
        got = run_exported(int8, batch)
        # really quantised
        assert got.shape == batch.shape and not np.array_equal(got, run_exported(fp32, batch))
        assert np.abs(got - reference(tiny_ckpt, batch)).max() < MAX_PROB_DIFF
    assert mask_dice(run_exported(int8, images) >= 0.5, expected >= 0.5) >= MIN_DICE
    seg = LungSegmenter.from_onnx(int8, "cpu")  # the API runs it through the same road as any model
    assert seg.precision == "int8" and LungSegmenter.from_onnx(fp32, "cpu").precision == "32-true"
    np.testing.assert_array_equal(seg.probabilities(images), run_exported(int8, images))


def test_calibration_from_a_dataset_root_uses_its_train_split_and_honours_the_count(
    compose_cfg, tiny_ckpt: Path, phantoms: Path, tmp_path: Path, monkeypatch
) -> None:
    files = calibration_files(phantoms, 100)
    assert len(files) == 12 and all(
        f.parent == phantoms / "ChestXray" / "train" / "image" for f in files
    )
    # the root given with or without ChestXray/
    assert len(calibration_files(phantoms / "ChestXray", 100)) == 12
    served: list[int] = []
    get_next = lungseg.artifacts.quantize.RadiographReader.get_next

    def counting(self):
        batch = get_next(self)
        if batch is not None:
            served.append(batch["image"].shape[0])
        return batch

    monkeypatch.setattr(lungseg.artifacts.quantize.RadiographReader, "get_next", counting)
    out = tmp_path / "int8.onnx"
    export(
        export_cfg(
            compose_cfg,
            tiny_ckpt,
            f"output={out}",
            "quantize=int8",
            f"calibration={phantoms}",
            "calibration_images=5",
            "verify=false",
        )
    )
    assert served == [1] * 5
    assert json.loads(props(out)["quantization"])["calibration_images"] == 5


def test_calibration_from_a_plain_folder_of_radiographs(
    compose_cfg, tiny_ckpt: Path, phantoms: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "films"
    (folder / "more").mkdir(parents=True)
    for i, f in enumerate(sorted((phantoms / "ChestXray" / "test" / "image").iterdir())):
        shutil.copy(f, folder / ("more" if i % 2 else ".") / f"film{i}{f.suffix}")
    (folder / "notes.txt").write_text("not a radiograph")
    assert len(calibration_files(folder, 64)) == 5 and len(calibration_files(folder, 3)) == 3
    out = tmp_path / "int8.onnx"
    result = export(
        export_cfg(
            compose_cfg, tiny_ckpt, f"output={out}", "quantize=int8", f"calibration={folder}"
        )
    )
    assert json.loads(props(out)["quantization"])["calibration_images"] == 5
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(out)).graph.node}
    assert result["max_abs_diff"] < MAX_PROB_DIFF and result["mask_dice"] >= MIN_DICE


def test_quantize_settings_that_cannot_work_are_refused(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "int8.onnx"
    with pytest.raises(LungsegError, match=r"quantize=int8 needs calibration=<a dataset root"):
        export(export_cfg(compose_cfg, tiny_ckpt, f"output={out}", "quantize=int8"))
    with pytest.raises(LungsegError, match="quantize=fp16: use null"):
        export(
            export_cfg(
                compose_cfg, tiny_ckpt, f"output={out}", "quantize=fp16", f"calibration={tmp_path}"
            )
        )
    with pytest.raises(LungsegError, match="needs format=onnx"):
        export(
            export_cfg(
                compose_cfg,
                tiny_ckpt,
                f"output={out}",
                "quantize=int8",
                "format=torch_export",
                f"calibration={tmp_path}",
            )
        )
    with pytest.raises(DataError, match="calibration=.*absent: no such folder"):
        export(
            export_cfg(
                compose_cfg,
                tiny_ckpt,
                f"output={out}",
                "quantize=int8",
                f"calibration={tmp_path / 'absent'}",
            )
        )
    (tmp_path / "notes.txt").write_text("not a radiograph")
    with pytest.raises(DataError, match=r"calibration=.*: no radiographs in .*pass a dataset root"):
        export(
            export_cfg(
                compose_cfg, tiny_ckpt, f"output={out}", "quantize=int8", f"calibration={tmp_path}"
            )
        )
    assert not out.exists() and not list(tmp_path.glob("*.README.md"))
