"""Research script, not a pipeline: produced the review page's scale figures (docs/review.md) at
commit e73b68f; kept to reproduce or extend them.

How lungseg-review copes with a large prediction folder: fabricate one (tiny real PNGs and a
predictions.csv), start the page on a loopback port and time what a reader waits for.

    python scripts/research/review_scale.py [--films 10000] [--folder /tmp/lungseg-review-scale]
    [--browser]

Times: process start to the page's HTML and the first page of cards (JSON); the first page's
thumbnails made cold (24 films, film and mask each); a page turn; a decision written to a
review.csv that already holds a decision for every flagged film. ``--browser`` also times headless
Chromium (Playwright, /usr/bin/chromium; already open): a new server's start to the first page
drawn with every thumbnail in view (cold), and a page turn by the ``]`` key. The fabricated files
are test data, written plainly.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (
    "input",
    "mask",
    "height",
    "width",
    "lung_fraction",
    "area_image_left_px",
    "area_image_right_px",
    "large_components",
    "plausibility",
    "quality_score",
    "needs_review",
    "inverted",
)
REVIEW_BELOW = 0.929


def fabricate(folder: Path, n: int, size: int = 96, seed: int = 0) -> int:
    """A prediction folder of ``n`` films (``films/``, ``masks/``, ``overlays/``, predictions.csv,
    and a review.csv deciding every flagged film); returns the number flagged."""
    rng = np.random.default_rng(seed)
    for sub in ("films", "masks", "overlays"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    variants = []
    for _ in range(16):  # distinct pictures, reused: the page's work does not depend on content
        r = rng.integers(size // 6, size // 4)
        lungs = (((yy - size // 2) ** 2 + (xx - size // 3) ** 2) < r**2) | (
            ((yy - size // 2) ** 2 + (xx - 2 * size // 3) ** 2) < r**2
        )
        film = np.clip(np.where(lungs, 70, 170) + rng.normal(0, 12, (size, size)), 0, 255)
        film = film.astype(np.uint8)
        mask = lungs.astype(np.uint8) * 255
        variants.append(
            [
                cv2.imencode(".png", im)[1].tobytes()
                for im in (film, mask, cv2.cvtColor(film, cv2.COLOR_GRAY2BGR))
            ]
        )
    rows, flagged = [], []
    for i in range(n):
        key = f"film_{i:05d}"
        film_png, mask_png, overlay_png = variants[i % len(variants)]
        (folder / "films" / f"{key}.png").write_bytes(film_png)
        (folder / "masks" / f"{key}.png").write_bytes(mask_png)
        (folder / "overlays" / f"{key}.png").write_bytes(overlay_png)
        score = float(np.clip(rng.normal(0.93, 0.03), 0, 1))
        rows.append(
            {
                "input": str(folder / "films" / f"{key}.png"),
                "mask": f"masks/{key}.png",
                "height": size,
                "width": size,
                "lung_fraction": 0.3,
                "area_image_left_px": 1400,
                "area_image_right_px": 1400,
                "large_components": 2,
                "plausibility": "ok",
                "quality_score": round(score, 4),
                "needs_review": score < REVIEW_BELOW,
                "inverted": False,
            }
        )
        if score < REVIEW_BELOW:
            flagged.append(rows[-1] | {"film": key})
    with (folder / "predictions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with (folder / "review.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(
            ("film", "decision", "note", "input", "quality_score", "needs_review", "decided_at")
        )
        for k, row in enumerate(flagged):
            writer.writerow(
                (
                    row["film"],
                    ("accepted", "rejected")[k % 2],
                    "",
                    row["input"],
                    row["quality_score"],
                    True,
                    "2025-01-01T00:00:00+00:00",
                )
            )
    return len(flagged)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def post(url: str, body: dict) -> bytes:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def start(folder: Path) -> tuple[subprocess.Popen, str]:
    """``python -m lungseg.review folder --port 0``; its address once it listens."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lungseg.review", str(folder), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in proc.stdout:
        if line.startswith("open "):
            return proc, line.split()[1]
    raise RuntimeError(f"lungseg-review did not start: {proc.stderr.read()[-2000:]}")


def browser_times(folder: Path) -> dict[str, float]:
    """Chromium already open: a new server started, then the first page of cards drawn with every
    thumbnail in view (cold cache), timed from the server's start; then a ``]`` page turn to the
    next page drawn the same way."""
    from playwright.sync_api import sync_playwright

    drawn = """() => { const cards = document.querySelectorAll('article.card');
        const shown = [...document.querySelectorAll('#cards img')]
            .filter(i => i.getBoundingClientRect().top < innerHeight);
        return cards.length === 24 && shown.length > 0
            && shown.every(i => i.complete && i.naturalWidth > 0); }"""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        t0 = time.perf_counter()
        proc, url = start(folder)
        try:
            page.goto(url)
            page.wait_for_function(drawn, timeout=60_000)
            first = time.perf_counter() - t0
            before = page.locator("article.card").first.get_attribute("data-key")
            t0 = time.perf_counter()
            page.keyboard.press("]")
            page.wait_for_function(
                f"""() => {{ const c = document.querySelector('article.card');
                return c && c.dataset.key !== {json.dumps(before)}; }}""",
                timeout=60_000,
            )
            page.wait_for_function(drawn, timeout=60_000)
            turn = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(30)
            browser.close()
    return {"browser_first_page_from_start_s": first, "browser_page_turn_s": turn}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=10_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/lungseg-review-scale"))
    parser.add_argument("--browser", action="store_true")
    args = parser.parse_args(argv)
    shutil.rmtree(args.folder, ignore_errors=True)
    t0 = time.perf_counter()
    flagged = fabricate(args.folder, args.films)
    print(
        f"fabricated {args.films} films ({flagged} flagged, each decided) in "
        f"{time.perf_counter() - t0:.1f} s: {args.folder}"
    )

    t0 = time.perf_counter()
    proc, url = start(args.folder)
    listening = time.perf_counter() - t0
    try:
        html = get(url)
        first = json.loads(get(f"{url}api/films?page=0&per_page=24"))
        first_page = time.perf_counter() - t0
        assert b"app.js" in html and len(first["films"]) == 24
        thumbs = [
            f"{url}api/picture?key={c['key']}&layer={layer}"
            for c in first["films"]
            for layer in ("film", "mask")
        ]
        t1 = time.perf_counter()
        with ThreadPoolExecutor(6) as pool:  # a browser opens about six connections per host
            sizes = list(pool.map(lambda u: len(get(u)), thumbs))
        cold = time.perf_counter() - t1
        turns = []
        for page in (1, 2, 200, 416):
            t1 = time.perf_counter()
            get(f"{url}api/films?page={page}&per_page=24")
            turns.append(time.perf_counter() - t1)
        writes = []
        keys = [c["key"] for c in json.loads(get(f"{url}api/films?page=300"))["films"]][:10]
        for key in keys:
            t1 = time.perf_counter()
            post(f"{url}api/decision", {"key": key, "decision": "accepted", "note": "scale"})
            writes.append(time.perf_counter() - t1)
        review_rows = len((args.folder / "review.csv").read_text().splitlines()) - 1
        times = {
            "films": args.films,
            "server_listening_s": listening,
            "first_page_html_and_json_s": first_page,
            "first_page_thumbnails_cold_s": cold,
            "thumbnail_bytes_max": max(sizes),
            "page_turn_median_s": statistics.median(turns),
            "decision_median_s": statistics.median(writes),
            "review_csv_rows": review_rows,
        }
    finally:
        proc.terminate()
        proc.wait(30)
    if args.browser:  # cold again: a new server, the thumbnails made above dropped
        shutil.rmtree(args.folder / ".review-cache")
        times.update(browser_times(args.folder))
    for name, value in times.items():
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
    main()
