"""Packaging: where the configs are, the extras, and the one-line message when a feature's extra is
missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from lungseg.config import CONFIG_DIR, PLUGIN_OVERRIDES, require_plugins
from lungseg.data import download
from lungseg.errors import EXTRAS, MissingExtraError
from lungseg.export import ProbabilityModel, export_onnx, run_exported
from lungseg.inference.inputs import find_inputs, read_dicom
from tests.helpers import ROOT

OPTIONAL = (
    "onnx",
    "onnxruntime",
    "pydicom",
    "kaggle",
    "optuna",
    "hydra_plugins.hydra_optuna_sweeper",
    "fastapi",
    "uvicorn",
)


def pyproject() -> dict:
    """pyproject.toml as a dict."""
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def missing(extra: str) -> str:
    """The end of the message for a missing ``extra``."""
    return f'needs {EXTRAS[extra]}: pip install "lungseg[{extra}]"'


def test_checkout_reads_the_top_level_conf() -> None:
    assert CONFIG_DIR == ROOT / "conf" and (CONFIG_DIR / "train.yaml").is_file()


def test_extras_named_in_messages_are_the_extras_of_pyproject() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    assert set(EXTRAS) == set(extras) - {"dev"}
    assert {extra for _, extra in PLUGIN_OVERRIDES.values()} <= set(EXTRAS)
    dev = extras["dev"][0].removeprefix("lungseg[").removesuffix("]").split(",")
    assert set(dev) == set(EXTRAS)  # the test suite needs every extra


def test_every_console_script_is_a_callable_entry_point() -> None:
    import importlib

    scripts = pyproject()["project"]["scripts"]
    assert len(scripts) == 11
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_onnx_export_without_onnx(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(
        MissingExtraError, match="^ONNX export " + missing("export").replace("[", r"\[")
    ):
        export_onnx(ProbabilityModel(nn.Conv2d(1, 1, 1)), tmp_path / "m.onnx", 8)
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_verification_without_onnxruntime(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError) as err:
        run_exported(tmp_path / "m.onnx", np.zeros((1, 1, 8, 8), np.float32))
    assert str(err.value) == "Running ONNX models " + missing("export")


def test_dicom_input_without_pydicom(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.dcm").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    # no DICOM, no need for pydicom
    assert [f.key for f in find_inputs(tmp_path / "a.png")] == ["a"]
    for call in (lambda: find_inputs(tmp_path), lambda: read_dicom(tmp_path / "b.dcm")):
        with pytest.raises(MissingExtraError) as err:
            call()
        assert str(err.value) == "DICOM input " + missing("dicom")


def test_kaggle_download_without_kaggle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", None)
    with pytest.raises(MissingExtraError) as err:
        download._make_api()
    assert str(err.value) == "Kaggle download " + missing("kaggle")


@pytest.mark.parametrize("override", sorted(PLUGIN_OVERRIDES))
def test_sweep_plugin_missing(monkeypatch: pytest.MonkeyPatch, override: str) -> None:
    module, extra = PLUGIN_OVERRIDES[override]
    monkeypatch.setitem(sys.modules, module, None)
    require_plugins(["+experiment=baseline", "hydra/launcher=basic"])  # no plugin needed
    with pytest.raises(MissingExtraError) as err:
        require_plugins(["--multirun", "+experiment=baseline", override])
    assert str(err.value) == f"{override} {missing(extra)}"


def run_blocked(
    module: str, blocked: str, *args: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` of this checkout with ``blocked`` made unimportable."""
    code = (
        f"import runpy, sys; sys.modules[{blocked!r}] = None; sys.argv = [{module!r}, "
        "*sys.argv[1:]]; "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_with_a_missing_sweep_plugin_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = run_blocked(
        "lungseg.train",
        "hydra_plugins.hydra_optuna_sweeper",
        "--multirun",
        "+experiment=demo",
        "hparams_search=optuna",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == f"error: hparams_search=optuna {missing('sweep')}\n"
    assert not (tmp_path / "outputs").exists()


def test_importing_the_entry_points_imports_no_optional_package() -> None:
    code = (
        "import sys, lungseg.train, lungseg.evaluate, lungseg.predict, lungseg.export, "
        "lungseg.bench, "
        "lungseg.data.check, lungseg.data.download, lungseg.sweep_summary; "
        f"print([m for m in {OPTIONAL!r} if m in sys.modules])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HOME": "/nonexistent"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
