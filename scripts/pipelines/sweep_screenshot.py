"""TensorBoard's HParams tab of a sweep, in headless Chromium: the table as text, or a screenshot.

    python scripts/pipelines/sweep_screenshot.py outputs/multirun/<date>/<time>
    docs/figures/sweep_hparams.png [--view table]

Needs ``pip install playwright`` and a Chromium at /usr/bin/chromium (Debian: ``apt-get install
chromium``; Playwright's own browser download is not used). tests/test_sweep_browser.py drives the
same functions.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
VIEWS = {
    "table": "TABLE VIEW",
    "parallel": "PARALLEL COORDINATES VIEW",
    "scatter": "SCATTER PLOT MATRIX VIEW",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def tensorboard(logdir: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """``tensorboard --logdir logdir`` on a free local port until the block ends; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{url}/data/plugins_listing", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"tensorboard did not start: {proc.stderr.read().decode()[-2000:]}"
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def chromium_page(width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A page in headless Debian Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def open_hparams(page: Any, url: str, n_runs: int, timeout_ms: int = 60_000) -> None:
    """Open the HParams tab and wait until its table shows ``n_runs`` rows."""
    page.goto(f"{url}/#hparams")
    page.locator("tf-hparams-table-view").wait_for(state="attached", timeout=timeout_ms)
    deadline = time.monotonic() + timeout_ms / 1000
    while len(hparams_table(page)[1]) < n_runs:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the HParams table shows {hparams_table(page)[1]}, not {n_runs} runs"
            )
        page.wait_for_timeout(500)


def hparams_table(page: Any) -> tuple[list[str], list[list[str]]]:
    """The HParams table as shown: header texts left to right, then each row's texts top to bottom
    (cells grouped by the grid row that draws them; the Show Metrics checkbox column is an empty
    string)."""
    cells = page.locator("tf-hparams-table-view vaadin-grid-cell-content").evaluate_all(
        """els => els.map(e => {
            const cell = e.assignedSlot && e.assignedSlot.parentElement;
            const row = cell && cell.parentElement;
            if (!row || row.hidden || row.offsetParent === null) return null;
            const r = cell.getBoundingClientRect(), rr = row.getBoundingClientRect();
            if (r.width === 0 || rr.height === 0) return null;
            return [row.parentElement.id, Math.round(rr.top), Math.round(r.left),
                    e.innerText.trim().replace(/\\s+/g, ' ')]; }).filter(x => x)"""
    )
    lines: dict[tuple[bool, int], list[tuple[int, str]]] = {}
    for section, top, left, text in cells:
        lines.setdefault((section != "header", top), []).append((left, text))
    ordered = [[text for _, text in sorted(line)] for _, line in sorted(lines.items())]
    ordered = [line for line in ordered if any(line)]
    return (ordered[0], ordered[1:]) if ordered else ([], [])


def show_view(page: Any, view: str) -> None:
    """Switch the HParams tab to ``table``, ``parallel`` (coordinates) or ``scatter`` (plot
    matrix)."""
    page.get_by_text(VIEWS[view], exact=True).click()
    page.wait_for_timeout(1500)


def set_shown(page: Any, names: list[str], shown: bool) -> None:
    """Tick (``shown``) or untick hyperparameters and metrics in the left pane: the columns the
    views draw. TensorBoard ticks only the first five of each by default."""
    for name in names:
        box = page.locator("tf-hparams-query-pane paper-checkbox", has_text=name).first
        if (box.get_attribute("aria-checked") == "true") != shown:
            box.click()
    page.wait_for_timeout(500)


def log_scales(page: Any, columns: list[str]) -> None:
    """In the parallel-coordinates view, draw these columns (among the ticked ones, in order) on log
    axes."""
    panes = page.locator("tf-hparams-parallel-coords-view tf-hparams-scale-and-color-controls")
    for name in columns:
        column = (
            panes.locator("div.column")
            .filter(has=page.locator("div.column-title", has_text=name))
            .first
        )
        column.get_by_text("Logarithmic", exact=True).click()
    page.wait_for_timeout(1000)


def _spans_decades(values: list[str]) -> bool:
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return False
    return min(numbers) > 0 and max(numbers) / min(numbers) >= 10


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("out", type=Path, nargs="?", default=Path("docs/figures/sweep_hparams.png"))
    parser.add_argument("--view", choices=sorted(VIEWS), default="parallel")
    parser.add_argument(
        "--keep-constants",
        action="store_true",
        help="keep the ticked knobs that do not vary (TensorBoard ticks the first five)",
    )
    args = parser.parse_args(argv)
    runs = len([d for d in args.sweep_dir.iterdir() if (d / "tensorboard").is_dir()])
    with tensorboard(args.sweep_dir) as url, chromium_page(1400, 800) as page:
        open_hparams(page, url, runs)
        header, rows = hparams_table(page)
        print("\t".join(header))
        for row in rows:
            print("\t".join(row))
        if not args.keep_constants:
            metrics = ("best", "test", "epochs", "wall")
            constant = [
                c
                for i, c in enumerate(header)
                if i >= 2 and not c.startswith(metrics) and len({r[i] for r in rows}) == 1
            ]
            set_shown(page, constant, False)
        show_view(page, args.view)
        if args.view == "parallel":
            log_scales(
                page,
                [
                    c
                    for i, c in enumerate(header)
                    if i >= 2
                    and _spans_decades([r[i] for r in rows])
                    and not c.startswith(("best", "test", "epochs", "wall"))
                ],
            )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
