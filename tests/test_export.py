"""python -m lungseg.export: ONNX (onnxruntime parity on synthetic and real radiographs),
torch.export, and the pretrained folder (safetensors + config.json + model card) that
LungSegmenter.from_pretrained loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from lungseg.data.images import preprocess
from lungseg.errors import CheckpointError, LungsegError
from lungseg.export import INPUT_NAME, OUTPUT_NAME, export, run_exported
from lungseg.inference.inputs import read_input
from lungseg.inference.segmenter import LungSegmenter
from tests.helpers import CXR, requires_cxr, write_split

ORIG_TEST = CXR / "orig" / "test" / "image"


def export_cfg(compose_cfg, ckpt: Path, *overrides: str):
    return compose_cfg(f"ckpt_path={ckpt}", *overrides, config_name="export")


def reference(ckpt: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities as lungseg.predict computes them in fp32 (LungSegmenter: trained net,
    channels_last, sigmoid)."""
    return LungSegmenter.from_checkpoint(ckpt, "cpu", precision="32").probabilities(images)


def test_onnx_matches_pytorch_on_synthetic_radiographs_and_carries_the_description(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lungseg.onnx"
    result = export(export_cfg(compose_cfg, tiny_ckpt, f"output={out}"))
    assert result["image_size"] == 32 and result["max_abs_diff"] < 1e-4
    write_split(tmp_path / "phantoms", "test", list(range(6)), size=80, seed=5)
    files = sorted((tmp_path / "phantoms" / "ChestXray" / "test" / "image").iterdir())
    images = np.stack([preprocess(read_input(p), 32) for p in files])[:, None]
    expected = reference(tiny_ckpt, images)
    assert expected.std() > 0.01  # probabilities that vary, not a constant
    for batch in (images, images[:1], images[2:5]):
        np.testing.assert_allclose(run_exported(out, batch), reference(tiny_ckpt, batch), atol=1e-4)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    description = json.loads(props["lungseg_description"])
    assert description["image_size"] == 32 and description["threshold"] == 0.5
    assert description["data"]["counts"] == {"test": 2, "train": 8, "val": 4}
    assert "## Input contract" in props["model_card"]
    assert (tmp_path / "lungseg.onnx.README.md").read_text() == props["model_card"]


@requires_cxr
def test_onnx_matches_pytorch_on_real_radiographs_with_any_batch(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lungseg.onnx"
    result = export(export_cfg(compose_cfg, tiny_ckpt, f"output={out}"))
    assert result["image_size"] == 32 and result["max_abs_diff"] < 1e-4
    images = np.stack([preprocess(read_input(p), 32) for p in sorted(ORIG_TEST.iterdir())])[:, None]
    expected = reference(tiny_ckpt, images)
    # probabilities, not logits
    assert 0.0 <= expected.min() and expected.max() <= 1.0 and expected.std() > 0
    for batch in (images, images[:1], images[3:10]):
        got = run_exported(out, batch)
        assert got.shape == batch.shape
        assert np.abs(got - reference(tiny_ckpt, batch)).max() < 1e-4
    bigger = np.stack([preprocess(read_input(p), 64) for p in sorted(ORIG_TEST.iterdir())[:2]])[
        :, None
    ]
    # dynamic H and W
    assert np.abs(run_exported(out, bigger) - reference(tiny_ckpt, bigger)).max() < 1e-4

    proto = onnx.load(str(out))
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == [INPUT_NAME] and [
        o.name for o in proto.graph.output
    ] == [OUTPUT_NAME]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    props = {p.key: p.value for p in proto.metadata_props}
    assert (
        props["image_size"] == "32"
        and "/ 255" in props["lungseg_description"]
        and props["size_divisor"] == "4"
    )


def test_torch_export_program_matches_pytorch(compose_cfg, tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "lungseg.pt2"
    result = export(export_cfg(compose_cfg, tiny_ckpt, "format=torch_export", f"output={out}"))
    assert result["max_abs_diff"] < 1e-5
    images = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(run_exported(out, images), reference(tiny_ckpt, images), atol=1e-5)
    wide = np.random.default_rng(1).random((1, 1, 32, 48), dtype=np.float32)
    np.testing.assert_allclose(run_exported(out, wide), reference(tiny_ckpt, wide), atol=1e-5)


def test_default_output_overwrite_and_bad_settings(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
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
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"net": {}}, "x": object()}, tmp_path / "evil.ckpt"
    )
    with pytest.raises(CheckpointError, match="refused"):
        export(export_cfg(compose_cfg, tmp_path / "evil.ckpt"))
    assert not (tmp_path / "evil.onnx").exists()


def test_pretrained_folder_is_weights_only_self_described_and_loads_back(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pretrained"
    result = export(export_cfg(compose_cfg, tiny_ckpt, "format=pretrained", f"output={out}"))
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    # loaded back through LungSegmenter: the same weights, the same road
    assert result["max_abs_diff"] == 0.0
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")  # plain tensors: no pickle, no optimizer state
    assert not any("optimizer" in k for k in weights) and any(k.startswith("net.") for k in weights)
    config = json.loads((out / "config.json").read_text())
    assert (
        config["net"]["_target_"] == "lungseg.models.unet.UNet"
        and config["net"]["base_filters"] == 4
    )
    assert config["description"]["image_size"] == 32
    card = (out / "README.md").read_text()
    assert "library_name: lungseg" in card and "Not a medical device" in card
    assert "train 8" in card and "val 4" in card and "32 x 32" in card
    assert (
        f"| best/val_dice | {config['description']['best_metrics']['best/val_dice']:.4f} |" in card
    )

    seg = LungSegmenter.from_pretrained(out, "cpu", precision="32")
    image = np.random.default_rng(3).integers(0, 255, (70, 50), dtype=np.uint8)
    original = LungSegmenter.from_checkpoint(tiny_ckpt, "cpu", precision="32")
    np.testing.assert_array_equal(seg.predict_proba(image), original.predict_proba(image))
    assert seg.metadata == original.metadata


def test_pretrained_loads_from_a_hub_id_through_the_hub_cache(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "export"
    export(
        export_cfg(compose_cfg, tiny_ckpt, "format=pretrained", f"output={folder}", "verify=false")
    )
    # The Hugging Face cache layout hf_hub_download reads offline:
    # models--<org>--<name>/{refs/main,snapshots/<rev>/}
    cache, revision = tmp_path / "hub", "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--someone--lungseg-tiny" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (cache / "models--someone--lungseg-tiny" / "refs").mkdir()
    (cache / "models--someone--lungseg-tiny" / "refs" / "main").write_text(revision)
    seg = LungSegmenter.from_pretrained(
        "someone/lungseg-tiny", "cpu", cache_dir=cache, local_files_only=True
    )
    assert seg.image_size == 32
    with pytest.raises(CheckpointError, match="someone/absent"):
        LungSegmenter.from_pretrained(
            "someone/absent", "cpu", cache_dir=cache, local_files_only=True
        )


def test_pretrained_folder_with_foreign_class_or_bad_weights_is_refused(
    compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pretrained"
    export(export_cfg(compose_cfg, tiny_ckpt, "format=pretrained", f"output={out}", "verify=false"))
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(
        json.dumps({**config, "net": {**config["net"], "_target_": "os.system"}})
    )
    with pytest.raises(CheckpointError, match="os.system"):
        LungSegmenter.from_pretrained(out, "cpu")
    (out / "config.json").write_text(
        json.dumps({**config, "net": {**config["net"], "base_filters": 8}})
    )
    with pytest.raises(CheckpointError, match="does not match config.json"):
        LungSegmenter.from_pretrained(out, "cpu")
    with pytest.raises(CheckpointError, match="no config.json"):
        LungSegmenter.from_pretrained(tmp_path, "cpu")
