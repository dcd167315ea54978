"""scripts/pipelines/learning_curve_table.py: grouping runs by training-set size and the fitted gain
per doubling."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pipelines" / "learning_curve_table.py"


@pytest.fixture
def table_script(monkeypatch: pytest.MonkeyPatch):
    # as when run as a script: it imports results_table
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("learning_curve_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(root: Path, n: int, seed: int, dice: float, hd95: float) -> Path:
    """A run folder as scripts/pipelines/learning_curve.sh leaves it: eval/{val,test}/metrics.json
    and the test per_image.csv."""
    run = root / f"n{n}-seed{seed}"
    for split in ("val", "test"):
        (run / "eval" / split).mkdir(parents=True)
        metrics = {
            "pooled": {"dice": dice},
            "per_image": {"dice_mean": dice - 0.01, "hd95_mean": hd95},
        }
        (run / "eval" / split / "metrics.json").write_text(json.dumps(metrics))
    rows = [
        f"x/cxrimage_{k}.png,{dice - 0.2 if k in (76, 86, 87) else dice}" for k in range(75, 90)
    ]
    (run / "eval" / "test" / "per_image.csv").write_text("file,dice\n" + "\n".join(rows) + "\n")
    return run


def test_gain_per_doubling_and_where_the_line_meets_the_targets(
    table_script, tmp_path: Path
) -> None:
    # Dice 0.90 + 0.02 per doubling from N=16 (0.90, 0.92, 0.94 over seeds that agree), HD95 20 - 4
    # per doubling.
    runs = [
        _run(tmp_path, n, seed, 0.90 + 0.02 * k, 20.0 - 4 * k)
        for k, n in enumerate((16, 32, 64))
        for seed in (1, 2)
    ]
    groups = table_script.read_runs(runs)
    assert list(groups) == [16, 32, 64] and all(len(rows) == 2 for rows in groups.values())
    assert groups[16][0]["test per-image Dice, 3 hard films"] == pytest.approx(0.70)
    assert groups[16][0]["test per-image Dice, other 12"] == pytest.approx(0.90)
    intercept, slope = table_script.fit(groups, "test pooled Dice")
    assert slope == pytest.approx(0.02) and intercept == pytest.approx(0.90 - 0.02 * 4)
    text = "\n".join(table_script.extrapolations(groups))
    assert (
        "test pooled Dice: +0.02 per doubling; the line reaches 0.96 at about 128 training images"
        in text
    )
    assert (
        "test HD95 px: -4 per doubling; the line reaches 8.0 at about 128 training images" in text
    )
    assert "| per doubling (fit) | | +0.0200 |" in table_script.table(groups)
    table_script.plot(groups, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 10_000


def test_a_misnamed_or_unscored_run_is_refused_by_name(table_script, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="n<N>-seed<S>"):
        table_script.read_runs([_run(tmp_path, 15, 42, 0.9, 10.0).rename(tmp_path / "run15")])
    unscored = _run(tmp_path, 30, 42, 0.9, 10.0)
    (unscored / "eval" / "test" / "metrics.json").unlink()
    with pytest.raises(SystemExit, match=r"n30-seed42/eval/test/metrics.json: missing.*split=test"):
        table_script.read_runs([unscored])
