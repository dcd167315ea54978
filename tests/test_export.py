"""python -m lungseg.export: ONNX (onnxruntime parity on real radiographs) and torch.export, sigmoid included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from lungseg.checkpoint import load_module
from lungseg.data.images import preprocess
from lungseg.errors import CheckpointError, LungsegError
from lungseg.export import INPUT_NAME, OUTPUT_NAME, export, run_exported
from lungseg.inputs import read_input
from lungseg.predict import predict_probs
from tests.helpers import CXR, requires_cxr, train_tiny

ORIG_TEST = CXR / "orig" / "test" / "image"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("tiny"))


def export_cfg(compose_cfg, ckpt: Path, *overrides: str):
    return compose_cfg(f"ckpt_path={ckpt}", *overrides, config_name="export")


def reference(ckpt: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities as lungseg.predict computes them in fp32 (the trained module, channels_last, sigmoid)."""
    return predict_probs(load_module(ckpt), torch.from_numpy(images)).numpy()


@requires_cxr
def test_onnx_matches_pytorch_on_real_radiographs_with_any_batch(compose_cfg, tiny_ckpt: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "lungseg.onnx"
    result = export(export_cfg(compose_cfg, tiny_ckpt, f"output={out}"))
    assert result["image_size"] == 32 and result["max_abs_diff"] < 1e-4
    images = np.stack([preprocess(read_input(p), 32) for p in sorted(ORIG_TEST.iterdir())])[:, None]
    expected = reference(tiny_ckpt, images)
    assert 0.0 <= expected.min() and expected.max() <= 1.0 and expected.std() > 0  # probabilities, not logits
    for batch in (images, images[:1], images[3:10]):
        got = run_exported(out, batch)
        assert got.shape == batch.shape
        assert np.abs(got - reference(tiny_ckpt, batch)).max() < 1e-4
    bigger = np.stack([preprocess(read_input(p), 64) for p in sorted(ORIG_TEST.iterdir())[:2]])[:, None]
    assert np.abs(run_exported(out, bigger) - reference(tiny_ckpt, bigger)).max() < 1e-4  # dynamic H and W

    proto = onnx.load(str(out))
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == [INPUT_NAME] and [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["image_size"] == "32" and "/ 255" in props["normalisation"] and props["size_divisor"] == "4"


def test_torch_export_program_matches_pytorch(compose_cfg, tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "lungseg.pt2"
    result = export(export_cfg(compose_cfg, tiny_ckpt, "format=torch_export", f"output={out}"))
    assert result["max_abs_diff"] < 1e-5
    images = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(run_exported(out, images), reference(tiny_ckpt, images), atol=1e-5)
    wide = np.random.default_rng(1).random((1, 1, 32, 48), dtype=np.float32)
    np.testing.assert_allclose(run_exported(out, wide), reference(tiny_ckpt, wide), atol=1e-5)


def test_default_output_overwrite_and_bad_settings(compose_cfg, tiny_ckpt: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(tiny_ckpt.read_bytes())
    result = export(export_cfg(compose_cfg, ckpt, "verify=false", "image_size=32"))
    assert result["output"] == tmp_path / "model.onnx" and "max_abs_diff" not in result
    before = (tmp_path / "model.onnx").read_bytes()
    with pytest.raises(LungsegError, match="already exists.*overwrite=true"):
        export(export_cfg(compose_cfg, ckpt, "image_size=32"))
    assert (tmp_path / "model.onnx").read_bytes() == before
    with pytest.raises(LungsegError, match="format=keras"):
        export(export_cfg(compose_cfg, ckpt, "format=keras"))
    with pytest.raises(LungsegError, match="opset=13"):
        export(export_cfg(compose_cfg, ckpt, "opset=13", "overwrite=true"))
    torch.save({"state_dict": {}, "hyper_parameters": {"net": {}}, "x": object()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refused"):
        export(export_cfg(compose_cfg, tmp_path / "evil.ckpt"))
    assert not (tmp_path / "evil.onnx").exists()
