"""The bad-input corpus: every case a user can cause gets exit code 2, one `error:` line naming the
file or setting, no traceback, and nothing already written is lost. Cases run in-process through the
entry points' error handling (the subprocess path is covered in
test_predict/test_data_files/test_evaluate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from lungseg import LungSegmenter
from lungseg.data.check import check_dataset
from lungseg.data.dataset import LungDataset
from lungseg.data.images import read_mask
from lungseg.data.layout import find_pairs
from lungseg.errors import CheckpointError, DataError, LungsegError, exit_on_user_error
from lungseg.evaluate import evaluate
from lungseg.export import export
from lungseg.predict import main as predict_main
from lungseg.predict import predict
from lungseg.robustness import robustness
from lungseg.train import main as train_main
from lungseg.train import train
from tests.helpers import TINY, disc_pair, gradient, write_split

QUICK = (
    *TINY,
    "trainer.max_epochs=1",
    "~logger",
    "~callbacks.prediction_grid",
    "~callbacks.lr_monitor",
)


def one_error(capsys, entry: Callable, cfg) -> str:
    """Run ``entry(cfg)`` as its CLI would: exit code 2 and exactly one ``error:`` line, no
    traceback."""
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(entry)(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "weights_only=False" not in err
    return lines[0]


def checkpoints(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """The bad checkpoints and what their message must say."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.ckpt").write_bytes(b"")
    (folder / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(3000))
    data = good.read_bytes()
    (folder / "cut.ckpt").write_bytes(data[: len(data) // 2])

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save(
        {"state_dict": {}, "hyper_parameters": {"net": {}}, "x": Evil()}, folder / "pickle.ckpt"
    )
    ckpt = torch.load(good, weights_only=True)
    foreign = {
        **ckpt,
        "hyper_parameters": {**ckpt["hyper_parameters"], "net": {"_target_": "os.system"}},
    }
    torch.save(foreign, folder / "foreign.ckpt")
    name = next(k for k in ckpt["state_dict"] if k.endswith("running_var"))
    diverged = {
        **ckpt,
        "state_dict": {**ckpt["state_dict"], name: ckpt["state_dict"][name] * float("inf")},
    }
    torch.save(diverged, folder / "diverged.ckpt")
    old = {k: v for k, v in ckpt.items() if k != "lungseg"}
    torch.save(old, folder / "old.ckpt")
    return {
        "zero": (folder / "zero.ckpt", "not a checkpoint (an empty file"),
        "random": (folder / "random.ckpt", "not a checkpoint (3,000 bytes"),
        "cut": (folder / "cut.ckpt", "truncated or corrupt"),
        "pickle": (folder / "pickle.ckpt", "refused: it holds pickled Python objects"),
        "foreign": (folder / "foreign.ckpt", "os.system"),
        "diverged": (folder / "diverged.ckpt", f"hold NaN or inf ({name})"),
        "old": (folder / "old.ckpt", "pass image_size="),
    }


def test_bad_checkpoints_in_predict_evaluate_and_export(
    capsys, compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), gradient())
    data = tmp_path / "data"
    write_split(data, "test", [1, 2])
    write_split(data, "val", [3])
    for case, (path, says) in checkpoints(tmp_path / "ckpts", tiny_ckpt).items():
        for entry, cfg in (
            (
                predict,
                compose_cfg(
                    f"ckpt_path={path}",
                    f"input={image}",
                    f"output={tmp_path / 'out'}",
                    "progress=false",
                    config_name="predict",
                ),
            ),
            (
                evaluate,
                compose_cfg(
                    f"ckpt_path={path}",
                    f"data.root={data}",
                    f"output_dir={tmp_path / 'eval'}",
                    config_name="evaluate",
                ),
            ),
            (
                export,
                compose_cfg(
                    f"ckpt_path={path}", f"output={tmp_path / 'm.onnx'}", config_name="export"
                ),
            ),
        ):
            line = one_error(capsys, entry, cfg)
            assert str(path) in line and says in line, (case, entry.__name__, line)
    # nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpts", "data", "one.png"]


def test_bad_settings_are_one_line_before_any_work(
    capsys, compose_cfg, tiny_dataset: Path, tmp_path: Path
) -> None:
    cases = [
        ("trainer.max_epochs=abc", "trainer.max_epochs=abc: must be a whole number"),
        ("data.image_size=30", "data.image_size=30: must be a multiple of 4 (2**model.depth)"),
        ("optimizer.lr=-1", "optimizer.lr=-1: must be a number > 0"),
        ("data.batch_size=0", "data.batch_size=0: must be a whole number >= 1"),
        (
            "paths.output_dir=/proc/lungseg-run",
            "paths.output_dir=/proc/lungseg-run: cannot write there",
        ),
    ]
    for override, says in cases:
        cfg = compose_cfg(f"data.root={tiny_dataset}", *QUICK, override)
        line = one_error(capsys, train, cfg)
        assert says in line, (override, line)
    assert not (tmp_path / "run" / "checkpoints").exists()


def bad_dataset(root: Path, case: str) -> str:
    """A small dataset with one problem; returns what the message must name."""
    write_split(root, "train", [0, 1, 2, 3])
    write_split(root, "val", [4, 5], seed=1)
    write_split(root, "test", [6, 7], seed=2)
    split = root / "ChestXray" / "train"
    if case == "missing_mask":
        (split / "mask" / "cxrmask_2.jpeg").unlink()
        return "cxrimage_2.png"
    if case == "corrupt_png":
        (split / "image" / "cxrimage_1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return "cxrimage_1.png: not a readable image"
    if case == "size_mismatch":
        cv2.imwrite(str(split / "mask" / "cxrmask_3.jpeg"), np.zeros((40, 40), np.uint8))
        return "cxrimage_3.png: image is 64x64 but its mask cxrmask_3.jpeg is 40x40"
    if case == "grey_mask":
        cv2.imwrite(str(split / "mask" / "cxrmask_0.jpeg"), np.full((64, 64), 128, np.uint8))
        return "cxrmask_0.jpeg: mask is not binary"
    if case == "colour_mask":
        mask = np.zeros((64, 64, 3), np.uint8)
        # BGR: pure blue lungs, luminance 29 -> would binarise to nothing
        mask[16:48, 16:48] = (255, 0, 0)
        cv2.imwrite(str(split / "mask" / "cxrmask_1.png"), mask)
        (split / "mask" / "cxrmask_1.jpeg").unlink()
        return "cxrmask_1.png: colour mask (colours found: #000000"
    if case == "empty_test":
        for f in (root / "ChestXray" / "test").rglob("*.*"):
            f.unlink()
        return "split 'test' is empty"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["missing_mask", "corrupt_png", "size_mismatch", "grey_mask", "colour_mask", "empty_test"],
)
def test_bad_data_is_refused_before_fit_by_check_and_train(
    capsys, compose_cfg, tmp_path: Path, case: str
) -> None:
    root = tmp_path / f"data_{case}"
    says = bad_dataset(root, case)
    line = one_error(
        capsys, lambda cfg: check_dataset(cfg.data.root), compose_cfg(f"data.root={root}")
    )
    assert says in line, line
    cfg = compose_cfg(f"data.root={root}", *QUICK)
    line = one_error(capsys, train, cfg)
    assert says in line, line
    # refused before fit: nothing trained, nothing saved
    assert not (tmp_path / "run" / "checkpoints").exists()
    if case == "colour_mask":
        assert "#0000ff" in line  # the lung colour is reported


def test_predict_output_that_is_a_file_and_a_symlink_loop(
    capsys, compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), gradient())
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "dangling.png").symlink_to(tmp_path / "absent.png")
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    line = one_error(
        capsys,
        predict,
        compose_cfg(
            f"ckpt_path={tiny_ckpt}",
            f"input={folder}",
            f"output={taken}",
            "progress=false",
            config_name="predict",
        ),
    )
    assert f"output={taken}: is a file" in line and taken.read_text() == "keep me"
    out = tmp_path / "out"
    # Hydra's main passes a given config straight to the entry point
    with pytest.raises(SystemExit):
        predict_main(
            compose_cfg(
                f"ckpt_path={tiny_ckpt}",
                f"input={folder}",
                f"output={out}",
                "progress=false",
                config_name="predict",
            )
        )
    err = capsys.readouterr().err
    assert "2 input(s) failed" in err and "loop.png: a symbolic link that leads nowhere" in err
    assert "dangling.png: a symbolic link that leads nowhere" in err
    assert (out / "masks" / "good.png").is_file() and len(
        (out / "predictions.csv").read_text().splitlines()
    ) == 2


def test_failed_resume_keeps_the_finished_record(
    capsys, compose_cfg, tiny_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    cfg = compose_cfg(f"data.root={tiny_dataset}", *QUICK)
    train_main(cfg)  # Hydra's main passes a given config straight to the entry point
    finished = (run / "result.json").read_text()
    assert json.loads(finished)["status"] == "finished"
    resume = compose_cfg(
        f"data.root={tiny_dataset}",
        *QUICK,
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "+experiment=demo",
        "trainer.max_epochs=2",
    )
    with pytest.raises(SystemExit) as exit_info:
        train_main(resume)
    assert exit_info.value.code == 2
    assert "refused to resume under a different config" in capsys.readouterr().err
    assert (run / "result.json").read_text() == finished  # the finished run's record is untouched
    failed = [json.loads(p.read_text()) for p in run.glob("result-*.json")]
    assert [r["status"] for r in failed] == ["failed"] and "refused to resume" in failed[0]["error"]
    train_main(
        compose_cfg(
            f"data.root={tiny_dataset}",
            *QUICK,
            "trainer.max_epochs=2",
            f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        )
    )  # a good resume finishes
    assert json.loads((run / "result.json").read_text())["epochs"] == 2
    records = sorted(json.loads(p.read_text())["status"] for p in run.glob("result-*.json"))
    assert records == ["failed", "finished"]  # the first finished record was kept beside it


# --- masks, films and models from elsewhere
# ---------------------------------------------------------------------


def test_two_valued_masks_are_read_as_lung_whatever_their_levels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _, mask = disc_pair(rng)
    lung = mask > 0
    encodings = {
        "zero_one.png": lung.astype(np.uint8),
        "zero_one_16bit.png": lung.astype(np.uint16),
        "zero_hundred.png": lung.astype(np.uint8) * 100,
        "zero_one.tif": lung.astype(np.float32),
        "jpeg.jpeg": mask,
    }
    for name, pixels in encodings.items():
        cv2.imwrite(str(tmp_path / name), pixels)
        np.testing.assert_array_equal(
            read_mask(tmp_path / name), lung.astype(np.uint8), err_msg=name
        )
    # a 0/1 mask that lossy compression gave a third low level: no honest reading of it, so one line
    # says what to do
    noisy = lung.astype(np.uint8) + (np.arange(lung.size).reshape(lung.shape) % 7 == 0)
    cv2.imwrite(str(tmp_path / "noisy.png"), noisy)
    with pytest.raises(
        DataError,
        match=r"noisy.png: mask values only reach 2 over 3 grey levels "
        r".* losslessly",
    ):
        read_mask(tmp_path / "noisy.png")


def test_a_dataset_of_zero_one_masks_trains_on_its_lungs(
    capsys, compose_cfg, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    write_split(root, "train", [0, 1, 2, 3])
    write_split(root, "val", [4, 5], seed=1)
    write_split(root, "test", [6, 7], seed=2)
    for path in root.rglob("cxrmask_*.jpeg"):
        lung = read_mask(path)
        path.unlink()
        cv2.imwrite(str(path.with_suffix(".png")), lung)  # 0/1, as many tools write masks
    assert check_dataset(root) == {"train": 4, "val": 2, "test": 2}
    dataset = LungDataset(find_pairs(root, "train")[0], 64)
    assert all(dataset[i]["mask"].mean() > 0.05 for i in range(4))  # lungs, not empty masks


def multi_frame(path: Path, frames: int = 2) -> Path:
    """Write an animated or multi-page image (the format follows the suffix: GIF, APNG, TIFF,
    WebP)."""
    pages = [Image.fromarray(gradient(64, 64) // (k + 1)) for k in range(frames)]
    pages[0].save(
        path,
        save_all=True,
        append_images=pages[1:],
        **({"duration": 100} if path.suffix != ".tif" else {}),
    )
    return path


@pytest.mark.parametrize("case", ["tiny_image", "multipage_tiff", "zero_one_jpeg_mask"])
def test_films_no_model_should_learn_from_are_refused_by_check_and_train(
    capsys, compose_cfg, tmp_path: Path, case: str
) -> None:
    root = tmp_path / "data"
    write_split(root, "train", [0, 1, 2, 3])
    write_split(root, "val", [4, 5], seed=1)
    write_split(root, "test", [6, 7], seed=2)
    split = root / "ChestXray" / "train"
    if case == "tiny_image":
        cv2.imwrite(str(split / "image" / "cxrimage_1.png"), np.full((1, 1), 90, np.uint8))
        cv2.imwrite(str(split / "mask" / "cxrmask_1.jpeg"), np.full((1, 1), 255, np.uint8))
        says = "cxrimage_1.png: image of shape (1, 1) is not a radiograph"
    elif case == "multipage_tiff":
        (split / "image" / "cxrimage_1.png").unlink()
        multi_frame(split / "image" / "cxrimage_1.tif", frames=3)
        says = "cxrimage_1.tif: an animated or multi-page image (3 frames)"
    else:  # a 0/1 mask that went through JPEG: low levels around 0 and 1
        lung = read_mask(split / "mask" / "cxrmask_2.jpeg")
        (split / "mask" / "cxrmask_2.jpeg").unlink()
        cv2.imwrite(
            str(split / "mask" / "cxrmask_2.png"),
            lung + (np.arange(lung.size).reshape(lung.shape) % 7 == 0),
        )
        says = "cxrmask_2.png: mask values only reach 2 over 3 grey levels"
    line = one_error(
        capsys, lambda cfg: check_dataset(cfg.data.root), compose_cfg(f"data.root={root}")
    )
    assert says in line, line
    line = one_error(capsys, train, compose_cfg(f"data.root={root}", *QUICK))
    assert says in line, line


def test_predict_refuses_multi_frame_and_tiny_films_and_segments_the_rest(
    capsys, compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), gradient())
    cv2.imwrite(str(folder / "tiny.png"), np.full((1, 1), 90, np.uint8))
    for name in ("animated.png", "pages.tif"):
        multi_frame(folder / name)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        predict_main(
            compose_cfg(
                f"ckpt_path={tiny_ckpt}",
                f"input={folder}",
                f"output={out}",
                "progress=false",
                config_name="predict",
            )
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        "3 input(s) failed" in err and "tiny.png: image of shape (1, 1) is not a radiograph" in err
    )
    for name in ("animated.png", "pages.tif"):
        assert f"{name}: an animated or multi-page image (2 frames)" in err, name
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["good.png"]
    # a GIF given as the input itself (a folder walk skips GIFs)
    gif = multi_frame(tmp_path / "animated.gif")
    with pytest.raises(SystemExit):
        predict_main(
            compose_cfg(
                f"ckpt_path={tiny_ckpt}",
                f"input={gif}",
                f"output={tmp_path / 'gif'}",
                "progress=false",
                config_name="predict",
            )
        )
    assert "animated.gif: an animated or multi-page image (2 frames)" in capsys.readouterr().err
    seg = LungSegmenter.from_checkpoint(tiny_ckpt, "cpu")
    with pytest.raises(DataError, match="animated.gif: an animated or multi-page image"):
        seg.predict(gif)
    with pytest.raises(
        DataError, match=r"image array: image of shape \(3, 40\) is not a radiograph"
    ):
        seg.predict(np.zeros((3, 40), np.uint8))


def foreign_onnx(path: Path, input_name: str, channels: int) -> Path:
    """An ONNX model that is not lungseg's (another input name or channel count), with lungseg-like
    metadata."""
    model = torch.nn.Conv2d(channels, 1, 3, padding=1)
    torch.onnx.export(
        model,
        (torch.rand(1, channels, 32, 32),),
        str(path),
        dynamo=False,
        input_names=[input_name],
        output_names=["probability"],
        opset_version=17,
    )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"image_size": "32"})
    onnx.save(proto, str(path))
    return path


def test_an_onnx_model_from_elsewhere_is_one_line(capsys, compose_cfg, tmp_path: Path) -> None:
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), gradient())
    for name, (input_name, channels) in {
        "renamed.onnx": ("input", 1),
        "rgb.onnx": ("image", 3),
    }.items():
        model = foreign_onnx(tmp_path / name, input_name, channels)
        line = one_error(
            capsys,
            predict,
            compose_cfg(
                f"model_path={model}",
                f"input={image}",
                f"output={tmp_path / 'out'}",
                config_name="predict",
            ),
        )
        assert f"{model}: this ONNX model does not take lungseg's input" in line, line
        with pytest.raises(CheckpointError, match="does not take lungseg's input"):
            LungSegmenter.load(model)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_a_pretrained_folder_with_damaged_weights_is_one_line(
    capsys, compose_cfg, tiny_ckpt: Path, tmp_path: Path, damage: str
) -> None:
    folder = tmp_path / "model"
    export(
        compose_cfg(
            f"ckpt_path={tiny_ckpt}", "format=pretrained", f"output={folder}", config_name="export"
        )
    )
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        data[: len(data) // 2]
        if damage == "truncated"
        else np.random.default_rng(1).bytes(len(data))
    )
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), gradient())
    line = one_error(
        capsys,
        predict,
        compose_cfg(
            f"model_path={folder}",
            f"input={image}",
            f"output={tmp_path / 'out'}",
            config_name="predict",
        ),
    )
    assert f"{weights}: not a readable weights file" in line, line
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable weights file"):
        LungSegmenter.from_pretrained(folder)


def test_settings_out_of_range_are_one_line_before_any_work(
    capsys, compose_cfg, tiny_ckpt: Path, tmp_path: Path
) -> None:
    image, data = tmp_path / "one.png", tmp_path / "data"
    cv2.imwrite(str(image), gradient())
    write_split(data, "test", [1, 2])
    out = tmp_path / "out"
    predict_base = (f"ckpt_path={tiny_ckpt}", f"input={image}", f"output={out}")
    cases = [
        ("predict", "threshold=1.5", "threshold=1.5: must be a number strictly between 0 and 1"),
        ("predict", "threshold=-0.5", "threshold=-0.5: must be a number strictly between 0 and 1"),
        ("predict", "batch_size=0", "batch_size=0: must be a whole number >= 1"),
        ("predict", "num_workers=0", "num_workers=0: must be a whole number >= 1"),
        ("predict", "overlay_size=4", "overlay_size=4: must be a whole number >= 16"),
        ("predict", "threads=0", "threads=0: must be a whole number >= 1"),
        (
            "predict",
            "quality.review_below=2",
            "quality.review_below=2: must be a number between 0 and 1",
        ),
        (
            "predict",
            "plausibility.min_lung_fraction=0.8",
            "plausibility.min_lung_fraction=0.8 must be below",
        ),
        (
            "predict",
            "plausibility.max_components=0",
            "plausibility.max_components=0: must be a whole number >= 1",
        ),
        ("evaluate", "threshold=1", "threshold=1: must be a number strictly between 0 and 1"),
        ("evaluate", "auroc_bins=1", "auroc_bins=1: must be a whole number >= 2"),
        ("evaluate", "data.batch_size=0", "data.batch_size=0: must be a whole number >= 1"),
        ("evaluate", "pixel_spacing_mm=-0.2", "pixel_spacing_mm=-0.2: must be a number > 0"),
        ("robustness", "seed=-1", "seed=-1: must be a whole number >= 0"),
    ]
    for command, override, says in cases:
        if command == "predict":
            entry, cfg = predict, compose_cfg(*predict_base, override, config_name="predict")
        elif command == "evaluate":
            entry, cfg = (
                evaluate,
                compose_cfg(
                    f"ckpt_path={tiny_ckpt}",
                    f"data.root={data}",
                    f"output_dir={out}",
                    override,
                    config_name="evaluate",
                ),
            )
        else:
            entry, cfg = (
                robustness,
                compose_cfg(
                    f"ckpt_path={tiny_ckpt}",
                    f"data.root={data}",
                    f"output_dir={out}",
                    override,
                    config_name="robustness",
                ),
            )
        line = one_error(capsys, entry, cfg)
        assert says in line, (command, override, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "one.png"]  # nothing written
    with pytest.raises(
        LungsegError, match="threshold=1.5: must be a number strictly between 0 and 1"
    ):
        LungSegmenter.from_checkpoint(tiny_ckpt, "cpu", threshold=1.5)
    with pytest.raises(LungsegError, match="batch_size=0: must be a whole number >= 1"):
        list(LungSegmenter.from_checkpoint(tiny_ckpt, "cpu").predict_many([image], batch_size=0))


def test_predict_many_delivers_the_good_results_before_a_bad_input(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    for k in range(8):
        cv2.imwrite(str(tmp_path / f"{k}.png"), gradient() // (k + 1))
    (tmp_path / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    seg = LungSegmenter.from_checkpoint(tiny_ckpt, "cpu")
    stream = seg.predict_many((tmp_path / f"{k}.png" for k in range(8)), batch_size=4)
    delivered = []
    with pytest.raises(DataError, match="5.png: not a readable image"):
        for result in stream:
            delivered.append(result)
    assert len(delivered) == 5
    for k, result in enumerate(delivered):
        np.testing.assert_array_equal(result.mask, seg.predict(tmp_path / f"{k}.png"))


def test_a_file_where_hydra_makes_its_folder_is_one_line(tiny_ckpt: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), gradient())
    for args in (
        ["-m", "lungseg.train", "+experiment=demo", f"hydra.run.dir={taken}"],
        [
            "-m",
            "lungseg.predict",
            f"ckpt_path={tiny_ckpt}",
            f"input={image}",
            f"output={tmp_path / 'o'}",
            f"hydra.run.dir={taken}",
        ],
    ):
        proc = subprocess.run(
            [sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
        assert (
            lines[0] == f"error: hydra.run.dir={taken}: is a file, not a folder; choose a folder "
            "(it is created "
            "if missing)"
        )
    assert taken.read_text() == "keep me" and not (tmp_path / "o").exists()
