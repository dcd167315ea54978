"""The review page as a reader uses it: headless Debian Chromium driven by Playwright over a small
predicted folder (flagged films first, a reject with a note that survives a reload, the mask
toggle). Skipped, saying what is missing, where playwright or /usr/bin/chromium is not there.
``LUNGSEG_REVIEW_SCREENSHOT=<png>`` also saves the page (scripts/pipelines/review_screenshot.py
makes the one in docs/ from real films)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from lungseg.evaluation.review import REVIEW_CSV
from lungseg.review.images import THUMB_PX
from lungseg.review.server import serving
from tests.helpers import ROOT
from tests.test_review import FILM_PX, expected_order, predicted_folder, read_rows

CHROMIUM = Path("/usr/bin/chromium")
# chromium_page(): Playwright on Debian Chromium
SCRIPT = ROOT / "scripts" / "pipelines" / "sweep_screenshot.py"

# Skipped before any model is trained, naming what is missing.
pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install playwright"
)
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"no Chromium at {CHROMIUM}: make chromium (apt-get install chromium as root)",
)


def _chromium_page():
    """scripts/pipelines/sweep_screenshot.py's chromium_page (Playwright driving Debian's
    Chromium)."""
    spec = importlib.util.spec_from_file_location("sweep_screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.chromium_page


def card_keys(page) -> list[str]:
    return page.locator("article.card").evaluate_all("cards => cards.map(c => c.dataset.key)")


def test_flagged_first_a_reject_with_a_note_survives_reload_and_the_mask_toggles(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    chromium_page = _chromium_page()
    folder = predicted_folder(tiny_ckpt, tmp_path)
    order = expected_order(folder)
    flagged = {
        r["mask"][6:-4]
        for r in read_rows(folder / "predictions.csv")
        if r["needs_review"] == "True"
    }
    assert len(flagged) == 4
    with serving(folder) as url, chromium_page(1400, 900) as page:
        full_requests: list[str] = []
        page.on("request", lambda r: full_requests.append(r.url) if "size=full" in r.url else None)
        page.goto(url)
        page.locator("article.card").nth(len(order) - 1).wait_for()
        assert card_keys(page) == order
        classes = page.locator("article.card").evaluate_all(
            "cards => cards.map(c => c.classList.contains('flagged'))"
        )
        assert classes == [key in flagged for key in order] == [True] * 4 + [False] * 5

        # keyboard only: to the second film, reject it, back, write a note, Enter saves it
        target = order[1]
        card = page.locator(f'article.card[data-key="{target}"]')
        page.keyboard.press("j")
        with page.expect_response("**/api/decision"):
            page.keyboard.press("r")
        assert card.locator(".badge.decision").inner_text() == "rejected"
        assert "focused" in page.locator("article.card").nth(2).get_attribute("class")
        page.keyboard.press("k")
        page.keyboard.press("n")
        page.keyboard.type("apex cut off")
        with page.expect_response("**/api/decision"):
            page.keyboard.press("Enter")
        rows = read_rows(folder / REVIEW_CSV)
        assert [(r["film"], r["decision"], r["note"]) for r in rows] == [
            (target, "rejected", "apex cut off")
        ]

        # keys pressed faster than the answers come still go to one film each
        page.keyboard.press("j")
        with page.expect_response("**/api/decision"), page.expect_response("**/api/decision"):
            page.keyboard.press("a")
            page.keyboard.press("x")
        page.wait_for_timeout(300)  # let any late answer land
        decided = {r["film"]: r["decision"] for r in read_rows(folder / REVIEW_CSV)}
        assert decided == {target: "rejected", order[2]: "accepted"}

        page.reload()
        card.wait_for()
        assert card.locator(".badge.decision").inner_text() == "rejected"
        assert card.locator("textarea.note").input_value() == "apex cut off"
        assert page.locator("#counts").inner_text().startswith("flagged 4 accepted 1 rejected 1")

        # the mask toggle and opacity change what the card shows; thumbnails only until opened
        first = page.locator("article.card").first
        pics = first.locator(".pics")
        pics.locator("img.mask").evaluate("img => img.decode()")
        assert first.locator("img.film").evaluate("img => img.naturalWidth") == THUMB_PX
        with_mask = pics.screenshot()
        page.keyboard.press("m")
        without = pics.screenshot()
        assert not first.locator("img.mask").is_visible() and without != with_mask
        page.keyboard.press("m")
        assert pics.screenshot() == with_mask
        page.keyboard.press("-")
        page.keyboard.press("-")
        assert pics.screenshot() not in (with_mask, without)
        assert not full_requests
        page.keyboard.press("o")
        viewer = page.locator("#viewer img.film")
        page.wait_for_function("() => document.querySelector('#viewer img.film').naturalWidth")
        assert viewer.evaluate("img => img.naturalWidth") == FILM_PX and len(full_requests) == 2
        page.keyboard.press("Escape")
        if os.environ.get("LUNGSEG_REVIEW_SCREENSHOT"):
            page.screenshot(path=os.environ["LUNGSEG_REVIEW_SCREENSHOT"])
