"""The wheel, installed without extras into a fresh venv, trains and predicts through its console
scripts anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from lungseg.data.layout import DATASET_DIR, IMAGE_DIR
from tests.helpers import CXR, ROOT, requires_cxr

pytestmark = [pytest.mark.slow, requires_cxr]

TORCH = "torch==2.13.0"  # the CPU build, as `make install` installs it
SCRIPTS = (
    "train",
    "evaluate",
    "predict",
    "export",
    "check",
    "download",
    "bench",
    "sweep-summary",
    "review",
)
OPTIONAL = ("onnx", "onnxruntime", "pydicom", "kaggle", "optuna")
SMALL = (
    "trainer.max_epochs=1",
    "data.image_size=64",
    "test=false",
    "~callbacks.progress_bar",
    "~callbacks.prediction_grid",
    "trainer.enable_model_summary=false",
)


def run(*cmd: str | Path, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in ``cwd`` with nothing of this checkout on the path; with ``ok`` it must
    succeed."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200
    )
    if ok:
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with torch and the core wheel (no extras); returns its bin folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--quiet",
        "--wheel-dir",
        tmp / "dist",
        ROOT,
        cwd=tmp,
    )
    (wheel,) = (tmp / "dist").glob("lungseg-*.whl")
    run(sys.executable, "-m", "venv", tmp / "venv", cwd=tmp)
    python = tmp / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", TORCH, cwd=tmp)
    run(python, "-m", "pip", "install", "--quiet", wheel, cwd=tmp)
    return tmp / "venv" / "bin"


def test_installed_scripts_train_and_predict_outside_the_checkout(
    venv: Path, tmp_path: Path
) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert ROOT not in work.parents
    for name in SCRIPTS:
        assert (venv / f"lungseg-{name}").is_file(), name

    code = (
        "import sys, lungseg, lungseg.train, lungseg.predict; "
        f"print([m for m in {OPTIONAL!r} if m in sys.modules])"
    )
    imported = run(venv / "python", "-c", code, cwd=work).stdout
    assert imported.strip() == "[]"
    where = run(
        venv / "python", "-c", "import lungseg.config as c; print(c.CONFIG_DIR)", cwd=work
    ).stdout.strip()
    assert Path(where).parent.parent.name == "site-packages" and Path(where, "train.yaml").is_file()

    run(venv / "lungseg-train", "+experiment=demo", *SMALL, "hydra.run.dir=run", cwd=work)
    ckpt = work / "run" / "checkpoints" / "best.ckpt"
    # sample data under the cwd
    assert ckpt.is_file() and (work / "data" / "sample" / DATASET_DIR).is_dir()
    assert "OK: 320 pairs" in run(venv / "lungseg-check", "data.root=data/sample", cwd=work).stdout

    image = sorted((CXR / DATASET_DIR / "test" / IMAGE_DIR).glob("*.png"))[0]
    run(venv / "lungseg-predict", f"ckpt_path={ckpt}", f"input={image}", "output=masks", cwd=work)
    mask = cv2.imread(str(work / "masks" / "masks" / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED)
    assert mask is not None and mask.shape == cv2.imread(str(image), cv2.IMREAD_GRAYSCALE).shape
    assert 0.05 < (mask > 0).mean() < 0.8  # lungs found, not an empty or full mask

    assert "--metric" in run(venv / "lungseg-sweep-summary", "--help", cwd=work).stdout
    assert "no decisions yet" in run(venv / "lungseg-review", "masks", "--summary", cwd=work).stdout
    page = (
        "import lungseg.review as r, pathlib; "
        "print(sorted(p.name for p in pathlib.Path(r.__file__).parent.glob('static/*')))"
    )  # the page ships
    assert (
        run(venv / "python", "-c", page, cwd=work).stdout.strip()
        == "['app.css', 'app.js', 'index.html']"
    )
    for cmd, extra in (
        (("lungseg-export", f"ckpt_path={ckpt}", "format=onnx"), "export"),
        (("lungseg-train", "--multirun", "+experiment=demo", "hparams_search=optuna"), "sweep"),
        (("lungseg-review", "masks"), "review"),
    ):
        proc = run(venv / cmd[0], *cmd[1:], cwd=work, ok=False)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr[
            -3000:
        ]
        assert proc.stderr.endswith(f'pip install "lungseg[{extra}]"\n')
