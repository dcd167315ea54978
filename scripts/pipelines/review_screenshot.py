"""A screenshot of lungseg-review's page over a prediction folder, in headless Chromium.

    python scripts/pipelines/review_screenshot.py <prediction folder> docs/figures/review.png
    [--decide]

``--decide`` works on a copy of the folder (its review.csv is left alone) and, with the page's keys,
rejects the first flagged film with a note and accepts the second, so the picture shows both. Needs
``pip install playwright`` and /usr/bin/chromium (as scripts/pipelines/sweep_screenshot.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_screenshot import chromium_page  # noqa: E402

from lungseg.evaluation.review import REVIEW_CSV  # noqa: E402
from lungseg.review.images import CACHE_DIR  # noqa: E402
from lungseg.review.server import serving  # noqa: E402

# Every picture in view is drawn (lazy ones further down load as the page scrolls).
DRAWN = """() => [...document.querySelectorAll('#cards img')]
             .filter(i => i.getBoundingClientRect().top < innerHeight)
             .every(i => i.complete && i.naturalWidth > 0)"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("out", type=Path, nargs="?", default=Path("docs/figures/review.png"))
    parser.add_argument("--decide", action="store_true")
    parser.add_argument("--size", default="1400x900", help="viewport, WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if args.decide:
            folder = Path(
                shutil.copytree(
                    args.folder,
                    Path(tmp) / "out",
                    ignore=shutil.ignore_patterns(REVIEW_CSV, CACHE_DIR),
                )
            )
        with serving(folder) as url, chromium_page(width, height) as page:
            page.goto(url)
            page.locator("article.card").first.wait_for()
            if args.decide:
                with page.expect_response("**/api/decision"):
                    page.keyboard.press("r")
                page.keyboard.press("k")
                page.keyboard.press("n")
                page.keyboard.type("right lung mostly missed")
                with page.expect_response("**/api/decision"):
                    page.keyboard.press("Enter")
                page.keyboard.press("j")
                with page.expect_response("**/api/decision"):
                    page.keyboard.press("a")
            page.wait_for_function(DRAWN)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
