"""A sweep as a person sees it: TensorBoard's HParams tab in headless Chromium (``make
test-browser``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.helpers import ROOT, TINY
from tests.test_sweeps import _multirun

SCRIPT = ROOT / "scripts" / "pipelines" / "sweep_screenshot.py"
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.slow


def _browser_tools():
    """scripts/pipelines/sweep_screenshot.py (TensorBoard + Playwright helpers), or a skip naming
    what is missing."""
    pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install playwright"
    )
    if not CHROMIUM.is_file():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: apt-get install chromium (or make test-browser as root)"
        )
    spec = importlib.util.spec_from_file_location("sweep_screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hparams_tab_lists_swept_knobs_first_and_one_readable_row_per_run(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    tools = _browser_tools()
    sweep = tmp_path / "sweep"
    proc = _multirun(
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"data.root={tiny_dataset}",
        *TINY,
        "trainer.max_epochs=1",
        "optimizer.lr=1e-3,1e-2",
        "model.dropout=0.1,0.5",
        "~callbacks.prediction_grid",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {
        "lr=0.001,dropout=0.1",
        "lr=0.001,dropout=0.5",
        "lr=0.01,dropout=0.1",
        "lr=0.01,dropout=0.5",
    }
    with tools.tensorboard(sweep) as url, tools.chromium_page() as page:
        tools.open_hparams(page, url, n_runs=4)
        tools.set_shown(page, ["wall time (s)"], True)  # the sixth metric: unticked by default
        header, rows = tools.hparams_table(page)
        # swept, then the rest
        assert header[:4] == ["Trial ID", "Show Metrics", "model.dropout", "optimizer.lr"]
        assert "best val Dice" in header and "test Dice" in header and "wall time (s)" in header
        assert not any("_target_" in h or "num_workers" in h or "root" in h for h in header)
        # one row per run, by its readable name
        assert sorted(row[0] for row in rows) == sorted(names)
        for row in rows:
            lr, dropout = (part.split("=")[1] for part in row[0].split(","))
            assert float(row[3]) == pytest.approx(float(lr)) and float(row[2]) == pytest.approx(
                float(dropout)
            )
        tools.show_view(page, "parallel")
        page.screenshot(path=str(tmp_path / "parallel.png"))
        assert (tmp_path / "parallel.png").stat().st_size > 20_000
