"""The bad-input corpus: every case a user can cause gets exit code 2, one `error:` line naming the file or
setting, no traceback, and nothing already written is lost. Cases run in-process through the entry points'
error handling (the subprocess path is covered in test_predict/test_data_files/test_evaluate)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lungseg.data.check import check_dataset
from lungseg.errors import exit_on_user_error
from lungseg.evaluate import evaluate
from lungseg.export import export
from lungseg.predict import main as predict_main
from lungseg.predict import predict
from lungseg.train import main as train_main
from lungseg.train import train
from tests.helpers import TINY, gradient, write_split

QUICK = (*TINY, "trainer.max_epochs=1", "~logger", "~callbacks.prediction_grid", "~callbacks.lr_monitor")



def one_error(capsys, entry: Callable, cfg) -> str:
    """Run ``entry(cfg)`` as its CLI would: exit code 2 and exactly one ``error:`` line, no traceback."""
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

    torch.save({"state_dict": {}, "hyper_parameters": {"net": {}}, "x": Evil()}, folder / "pickle.ckpt")
    ckpt = torch.load(good, weights_only=True)
    foreign = {**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], "net": {"_target_": "os.system"}}}
    torch.save(foreign, folder / "foreign.ckpt")
    name = next(k for k in ckpt["state_dict"] if k.endswith("running_var"))
    diverged = {**ckpt, "state_dict": {**ckpt["state_dict"], name: ckpt["state_dict"][name] * float("inf")}}
    torch.save(diverged, folder / "diverged.ckpt")
    old = {k: v for k, v in ckpt.items() if k != "lungseg"}
    torch.save(old, folder / "old.ckpt")
    return {"zero": (folder / "zero.ckpt", "not a checkpoint (an empty file"),
            "random": (folder / "random.ckpt", "not a checkpoint (3,000 bytes"),
            "cut": (folder / "cut.ckpt", "truncated or corrupt"),
            "pickle": (folder / "pickle.ckpt", "refused: it holds pickled Python objects"),
            "foreign": (folder / "foreign.ckpt", "os.system"),
            "diverged": (folder / "diverged.ckpt", f"hold NaN or inf ({name})"),
            "old": (folder / "old.ckpt", "pass image_size=")}


def test_bad_checkpoints_in_predict_evaluate_and_export(capsys, compose_cfg, tiny_ckpt: Path, tmp_path: Path) -> None:
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), gradient())
    data = tmp_path / "data"
    write_split(data, "test", [1, 2])
    write_split(data, "val", [3])
    for case, (path, says) in checkpoints(tmp_path / "ckpts", tiny_ckpt).items():
        for entry, cfg in (
                (predict, compose_cfg(f"ckpt_path={path}", f"input={image}", f"output={tmp_path / 'out'}",
                                      "progress=false", config_name="predict")),
                (evaluate, compose_cfg(f"ckpt_path={path}", f"data.root={data}",
                                       f"output_dir={tmp_path / 'eval'}", config_name="evaluate")),
                (export, compose_cfg(f"ckpt_path={path}", f"output={tmp_path / 'm.onnx'}", config_name="export"))):
            line = one_error(capsys, entry, cfg)
            assert str(path) in line and says in line, (case, entry.__name__, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpts", "data", "one.png"]  # nothing written


def test_bad_settings_are_one_line_before_any_work(capsys, compose_cfg, tiny_dataset: Path, tmp_path: Path) -> None:
    cases = [("trainer.max_epochs=abc", "trainer.max_epochs=abc: must be a whole number"),
             ("data.image_size=30", "data.image_size=30: must be a multiple of 4 (2**model.depth)"),
             ("optimizer.lr=-1", "optimizer.lr=-1: must be a number > 0"),
             ("data.batch_size=0", "data.batch_size=0: must be a whole number >= 1"),
             ("paths.output_dir=/proc/lungseg-run", "paths.output_dir=/proc/lungseg-run: cannot write there")]
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
        mask[16:48, 16:48] = (255, 0, 0)  # BGR: pure blue lungs, luminance 29 -> would binarise to nothing
        cv2.imwrite(str(split / "mask" / "cxrmask_1.png"), mask)
        (split / "mask" / "cxrmask_1.jpeg").unlink()
        return "cxrmask_1.png: colour mask (colours found: #000000"
    if case == "empty_test":
        for f in (root / "ChestXray" / "test").rglob("*.*"):
            f.unlink()
        return "split 'test' is empty"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing_mask", "corrupt_png", "size_mismatch", "grey_mask", "colour_mask",
                                  "empty_test"])
def test_bad_data_is_refused_before_fit_by_check_and_train(capsys, compose_cfg, tmp_path: Path, case: str) -> None:
    root = tmp_path / f"data_{case}"
    says = bad_dataset(root, case)
    line = one_error(capsys, lambda cfg: check_dataset(cfg.data.root), compose_cfg(f"data.root={root}"))
    assert says in line, line
    cfg = compose_cfg(f"data.root={root}", *QUICK)
    line = one_error(capsys, train, cfg)
    assert says in line, line
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before fit: nothing trained, nothing saved
    if case == "colour_mask":
        assert "#0000ff" in line  # the lung colour is reported


def test_predict_output_that_is_a_file_and_a_symlink_loop(capsys, compose_cfg, tiny_ckpt: Path,
                                                           tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), gradient())
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "dangling.png").symlink_to(tmp_path / "absent.png")
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    line = one_error(capsys, predict, compose_cfg(f"ckpt_path={tiny_ckpt}", f"input={folder}", f"output={taken}",
                                                  "progress=false", config_name="predict"))
    assert f"output={taken}: is a file" in line and taken.read_text() == "keep me"
    out = tmp_path / "out"
    with pytest.raises(SystemExit):  # Hydra's main passes a given config straight to the entry point
        predict_main(compose_cfg(f"ckpt_path={tiny_ckpt}", f"input={folder}", f"output={out}", "progress=false",
                                 config_name="predict"))
    err = capsys.readouterr().err
    assert "2 input(s) failed" in err and "loop.png: a symbolic link that leads nowhere" in err
    assert "dangling.png: a symbolic link that leads nowhere" in err
    assert (out / "masks" / "good.png").is_file() and len((out / "predictions.csv").read_text().splitlines()) == 2


def test_failed_resume_keeps_the_finished_record(capsys, compose_cfg, tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = compose_cfg(f"data.root={tiny_dataset}", *QUICK)
    train_main(cfg)  # Hydra's main passes a given config straight to the entry point
    finished = (run / "result.json").read_text()
    assert json.loads(finished)["status"] == "finished"
    resume = compose_cfg(f"data.root={tiny_dataset}", *QUICK, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                         "+experiment=demo", "trainer.max_epochs=2")
    with pytest.raises(SystemExit) as exit_info:
        train_main(resume)
    assert exit_info.value.code == 2
    assert "refused to resume under a different config" in capsys.readouterr().err
    assert (run / "result.json").read_text() == finished  # the finished run's record is untouched
    failed = [json.loads(p.read_text()) for p in run.glob("result-*.json")]
    assert [r["status"] for r in failed] == ["failed"] and "refused to resume" in failed[0]["error"]
    train_main(compose_cfg(f"data.root={tiny_dataset}", *QUICK, "trainer.max_epochs=2",
                                 f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"))  # a good resume finishes
    assert json.loads((run / "result.json").read_text())["epochs"] == 2
    records = sorted(json.loads(p.read_text())["status"] for p in run.glob("result-*.json"))
    assert records == ["failed", "finished"]  # the first finished record was kept beside it
