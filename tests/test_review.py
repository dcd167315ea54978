"""lungseg-review on a real prediction folder (the TINY model on disc phantoms): review.csv kept
whole under concurrent writers, bad folders and files refused in one line, the page's API (order,
pages, thumbnails, guards), the counts in predict's summary and evaluate's report, the rejected
films exported for relabelling, and the command (a killed server loses no decision)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lungseg.data.layout import pair_files
from lungseg.errors import DataError, LungsegError
from lungseg.evaluate import evaluate
from lungseg.evaluation.review import REVIEW_CSV, ReviewBook, describe, read_folder, review_counts
from lungseg.inference.outputs import Film
from lungseg.predict import predict
from lungseg.review.cli import main
from lungseg.review.images import CACHE_DIR, THUMB_PX
from lungseg.review.relabel import export_rejected, pair_names
from lungseg.review.server import create_app, serving
from tests.helpers import CONF, ROOT, disc_pair, write_split

FILM_PX = 300  # larger than a thumbnail
N_FILMS = 9


def compose_in(out: Path, name: str, *overrides: str) -> DictConfig:
    """``conf/<name>.yaml`` composed as the entry points do (CPU), its run folder ``out``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(name, overrides=["device=cpu", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def predicted_folder(ckpt: Path, root: Path) -> Path:
    """lungseg.predict's output for 9 phantom films of 300 px (one in a sub-folder), scored against
    their reference masks, with the operating point between the 4th and 5th score: 4 flagged."""
    films, truth, out = root / "films", root / "truth", root / "out"
    (films / "sub").mkdir(parents=True)
    truth.mkdir()
    rng = np.random.default_rng(7)
    for i in range(N_FILMS):
        image, mask = disc_pair(rng, FILM_PX)
        cv2.imwrite(str(films / ("sub" if i == N_FILMS - 1 else "") / f"film_{i}.png"), image)
        cv2.imwrite(str(truth / f"film_{i}.png"), mask)
    args = (
        f"ckpt_path={ckpt}",
        f"input={films}",
        f"output={out}",
        f"truth={truth}",
        "progress=false",
    )
    predict(compose_in(root, "predict", *args))
    scores = sorted(float(r["quality_score"]) for r in read_rows(out / "predictions.csv"))
    assert len(set(scores)) == N_FILMS, scores  # distinct, so the order is defined by the scores
    point = (scores[3] + scores[4]) / 2
    predict(compose_in(root, "predict", *args, "overwrite=true", f"quality.review_below={point}"))
    GlobalHydra.instance().clear()
    return out


@pytest.fixture(scope="module")
def predicted_once(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return predicted_folder(tiny_ckpt, tmp_path_factory.mktemp("review"))


@pytest.fixture
def folder(predicted_once: Path, tmp_path: Path) -> Path:
    """A private copy of the prediction folder (its films stay where predict read them)."""
    return Path(shutil.copytree(predicted_once, tmp_path / "out"))


def expected_order(folder: Path) -> list[str]:
    """Review order worked out from predictions.csv alone: flagged (needs_review or status
    flagged) first, then the lowest quality score."""
    rows = read_rows(folder / "predictions.csv")
    ranked = sorted(
        enumerate(rows),
        key=lambda ir: (
            not (ir[1]["needs_review"] == "True" or ir[1].get("status") == "flagged"),
            float(ir[1]["quality_score"]),
            ir[0],
        ),
    )
    return [r["mask"].removeprefix("masks/").removesuffix(".png") for _, r in ranked]


def own_films(folder: Path) -> Path:
    """Copy the films beside the folder and point its predictions.csv at the copies (so a test
    may move or delete them); returns the copies' folder."""
    rows = read_rows(folder / "predictions.csv")
    original = Path(rows[0]["input"]).parent
    copy = Path(shutil.copytree(original, folder.parent / "films"))
    for r in rows:
        r["input"] = str(copy / Path(r["input"]).relative_to(original))
    with (folder / "predictions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return copy


def client(folder: Path) -> TestClient:
    return TestClient(create_app(folder), base_url="http://127.0.0.1")


def keys(folder: Path) -> list[str]:
    return [
        r["mask"].removeprefix("masks/").removesuffix(".png")
        for r in read_rows(folder / "predictions.csv")
    ]


# --- review.csv ------------------------------------------------------------------------------


def test_decisions_rewrite_review_csv_whole_and_are_read_back(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = ReviewBook(folder)
    films = keys(folder)
    book.decide(films[5], "rejected", "left lung cut short")
    book.decide(films[1], "accepted")
    book.decide(films[3], note="check the apex")
    rows = read_rows(folder / REVIEW_CSV)
    assert [r["film"] for r in rows] == [films[1], films[3], films[5]]  # predictions.csv order
    assert [(r["decision"], r["note"]) for r in rows] == [
        ("accepted", ""),
        ("", "check the apex"),
        ("rejected", "left lung cut short"),
    ]
    prediction = read_rows(folder / "predictions.csv")[5]
    assert rows[2]["quality_score"] == prediction["quality_score"]
    assert rows[2]["input"] == prediction["input"] and rows[2]["decided_at"].endswith("+00:00")

    book.decide(films[5], note=None, decision="accepted")  # the note stays
    book.decide(films[3], note="")  # neither decision nor note: the row goes
    again = ReviewBook(folder)  # a reload reads what was written
    assert {k: (d.decision, d.note) for k, d in again.decisions.items()} == {
        films[1]: ("accepted", ""),
        films[5]: ("accepted", "left lung cut short"),
    }

    before = (folder / REVIEW_CSV).read_bytes()

    def crash(*args: object) -> None:
        raise OSError("disk pulled out")

    monkeypatch.setattr("lungseg.atomic.os.replace", crash)  # dies between writing and renaming
    with pytest.raises(OSError, match="disk pulled out"):
        book.decide(films[0], "rejected")
    assert (folder / REVIEW_CSV).read_bytes() == before  # never half-written
    assert not list(folder.glob(".review.csv.tmp-*"))
    with pytest.raises(LungsegError, match="'maybe' is not accepted, rejected or empty"):
        book.decide(films[0], "maybe")
    with pytest.raises(LungsegError, match="'nope' is not in"):
        book.decide("nope", "accepted")


def test_two_servers_and_many_threads_lose_no_decision(folder: Path) -> None:
    books = [ReviewBook(folder), ReviewBook(folder)]  # two servers on one folder
    films = keys(folder)

    def reviewer(i: int) -> None:
        for j in range(15):
            books[(i + j) % 2].decide(films[i], ("accepted", "rejected")[j % 2], f"{i}-{j}")

    threads = [threading.Thread(target=reviewer, args=(i,)) for i in range(len(films))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, decisions = read_folder(folder)
    assert {k: (d.decision, d.note) for k, d in decisions.items()} == {
        key: ("accepted", f"{i}-14") for i, key in enumerate(films)
    }


BAD_REVIEWS = {
    "decision": ("film,decision,note\n{0},accepted,\n{1},maybe,\n", "row 3: decision 'maybe'"),
    "film": ("film,decision,note\n{0},accepted,\nghost,rejected,\n", "row 3: film 'ghost' is not"),
    "twice": (
        "film,decision,note\n{0},accepted,\n{1},rejected,\n{0},rejected,\n",
        "row 4: film '{0}' is listed twice (also row 2)",
    ),
    "column": ("film,decision,reader\n{0},accepted,me\n", "row 1: columns film, decision, reader"),
    "cells": ("film,decision\n{0},accepted,extra\n", "row 2: more cells than the header"),
}


@pytest.mark.parametrize("case", sorted(BAD_REVIEWS))
def test_a_bad_review_csv_is_one_line_and_left_as_it_is(
    folder: Path, case: str, capsys: pytest.CaptureFixture
) -> None:
    films = keys(folder)
    text, message = BAD_REVIEWS[case]
    (folder / REVIEW_CSV).write_text(text.format(*films))
    before = (folder / REVIEW_CSV).read_bytes()
    with pytest.raises(SystemExit) as stop:
        main([str(folder), "--port", "0"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {folder / REVIEW_CSV}, ")
    assert message.format(*films) in err and "nothing was changed" in err
    assert (folder / REVIEW_CSV).read_bytes() == before
    with pytest.raises(DataError, match="row"):
        review_counts(folder)


def test_a_review_csv_broken_while_the_page_is_open_is_not_overwritten(folder: Path) -> None:
    films = keys(folder)
    with client(folder) as page:
        assert page.post("/api/decision", json={"key": films[0], "decision": "rejected"}).is_success
        (folder / REVIEW_CSV).write_text(
            f"film,decision\n{films[0]},rejected\n{films[0]},accepted\n"
        )
        before = (folder / REVIEW_CSV).read_bytes()
        answer = page.post("/api/decision", json={"key": films[1], "decision": "accepted"})
        assert answer.status_code == 409 and "listed twice" in answer.json()["error"]
        assert (folder / REVIEW_CSV).read_bytes() == before


def test_what_is_not_a_prediction_folder_is_one_line(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "predictions.csv").write_text("file,dice\na.png,0.9\n")
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "predictions.csv").write_text("input,mask,quality_score\na.png,../a.png,0.9\n")
    cases = {
        tmp_path / "absent": "no such folder",
        empty: "not a lungseg.predict output (no predictions.csv)",
        foreign: "not a lungseg.predict predictions.csv (no column(s) input, mask)",
        moved: "row 2: mask '../a.png' is not masks/<name>.png",
    }
    for path, message in cases.items():
        with pytest.raises(SystemExit) as stop:
            main([str(path)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and message in err, err
        assert not (path / REVIEW_CSV).exists() and not (path / CACHE_DIR).exists()


# --- the page's API ----------------------------------------------------------------------------


def add_dicom_columns(folder: Path) -> str:
    """predictions.csv as a DICOM run writes it (status, status_reason, the lungs in mm2): the best
    unflagged film marked status=flagged; returns its key."""
    rows = read_rows(folder / "predictions.csv")
    best = max(
        (r for r in rows if r["needs_review"] == "False"), key=lambda r: float(r["quality_score"])
    )
    for r in rows:
        r.update(
            status="flagged" if r is best else "ok",
            status_reason="no pixel spacing" if r is best else "",
            left_lung_area=f"{float(r['area_image_left_px']) * 0.02:.1f}",
            area_unit="mm2",
        )
    with (folder / "predictions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return best["mask"].removeprefix("masks/").removesuffix(".png")


def test_flagged_films_come_first_then_the_lowest_score_page_by_page(folder: Path) -> None:
    marked = add_dicom_columns(folder)
    order = expected_order(folder)
    rows = {k: r for k, r in zip(keys(folder), read_rows(folder / "predictions.csv"), strict=True)}
    assert order[:5][-1] == marked  # flagged by status alone: last of the flagged, by its score
    assert order != sorted(order, key=lambda k: float(rows[k]["quality_score"]))
    with client(folder) as page:
        pages = [page.get("/api/films", params={"page": p, "per_page": 4}).json() for p in range(3)]
        assert [p["pages"] for p in pages] == [3, 3, 3] and pages[0]["total"] == N_FILMS
        assert [c["key"] for p in pages for c in p["films"]] == order
        assert [c["rank"] for p in pages for c in p["films"]] == list(range(1, N_FILMS + 1))
        assert page.get("/api/films", params={"page": 99, "per_page": 4}).json()["page"] == 2
        card = next(c for c in pages[1]["films"] if c["key"] == marked)
        assert card["flagged"] and card["status"] == "flagged"
        assert card["reason"] == "no pixel spacing"
        assert card["figures"]["left_lung_area"] == rows[marked]["left_lung_area"]
        assert card["figures"]["area_unit"] == "mm2"
        assert card["figures"]["dice"] == rows[marked]["dice"]
        assert card["score"] == float(rows[marked]["quality_score"])

        page.post("/api/decision", json={"key": order[6], "decision": "rejected", "note": "n"})
        page.post("/api/decision", json={"key": order[0], "decision": "accepted"})
        shown = {
            show: [c["key"] for c in page.get("/api/films", params={"show": show}).json()["films"]]
            for show in ("flagged", "rejected", "accepted", "undecided")
        }
        assert shown["flagged"] == order[:5] and shown["rejected"] == [order[6]]
        assert shown["accepted"] == [order[0]]
        assert shown["undecided"] == [k for k in order if k not in (order[0], order[6])]
        counts = page.get("/api/films").json()["counts"]
        assert (
            counts["flagged"],
            counts["flagged_accepted"],
            counts["flagged_rejected"],
            counts["others_rejected"],
        ) == (5, 1, 0, 1)


def test_cards_get_small_thumbnails_made_once_and_the_full_film_only_when_asked(
    folder: Path,
) -> None:
    key = keys(folder)[-1]  # sub/film_8: a key with a folder in it
    assert "/" in key
    with client(folder) as page:
        film = page.get("/api/picture", params={"key": key})
        mask = page.get("/api/picture", params={"key": key, "layer": "mask"})
        full = page.get("/api/picture", params={"key": key, "size": "full"})
    assert (
        film.headers["content-type"] == "image/jpeg" and mask.headers["content-type"] == "image/png"
    )
    thumb = cv2.imdecode(np.frombuffer(film.content, np.uint8), cv2.IMREAD_UNCHANGED)
    layer = cv2.imdecode(np.frombuffer(mask.content, np.uint8), cv2.IMREAD_UNCHANGED)
    big = cv2.imdecode(np.frombuffer(full.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert thumb.shape == layer.shape[:2] == (THUMB_PX, THUMB_PX) and big.shape == (FILM_PX,) * 2
    assert len(film.content) < len(full.content)
    written = cv2.imread(str(folder / "masks" / f"{key}.png"), cv2.IMREAD_GRAYSCALE) > 0
    small = (
        cv2.resize(written.astype(np.uint8), (THUMB_PX, THUMB_PX), interpolation=cv2.INTER_NEAREST)
        > 0
    )
    agree = (layer[..., 3] > 0) == small  # the layer is clear outside the mask
    assert agree.mean() > 0.97 and written.any()
    cached = sorted(p.suffix for p in (folder / CACHE_DIR).rglob("*.*"))
    assert cached == [".jpg", ".png"]  # one file per layer, reused
    stamp = {p: p.stat().st_mtime_ns for p in (folder / CACHE_DIR).rglob("*.*")}
    with client(folder) as page:
        assert page.get("/api/picture", params={"key": key}).content == film.content
    assert {p: p.stat().st_mtime_ns for p in (folder / CACHE_DIR).rglob("*.*")} == stamp


def cached(folder: Path) -> list[str]:
    """The thumbnails in the folder's cache (not a temp file being written)."""
    return sorted(p.name for p in (folder / CACHE_DIR).rglob("*") if p.suffix in (".jpg", ".png"))


def test_the_next_pages_thumbnails_are_made_ahead(folder: Path) -> None:
    order = expected_order(folder)
    with client(folder) as page:
        page.get("/api/films", params={"page": 0, "per_page": 4})
        deadline = time.monotonic() + 60
        while len(cached(folder)) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        made = cached(folder)
        asked = sorted(
            page.app.state.review.thumbnails.path(film, layer).name
            for film in (page.app.state.review.book.by_key[k] for k in order[4:8])
            for layer in ("film", "mask")
        )
    assert made == asked  # page 2's eight pictures, and nothing of page 1 nobody asked for


def test_missing_films_are_said_in_one_line_and_fall_back_to_the_overlay(folder: Path) -> None:
    key = keys(folder)[2]
    copy = own_films(folder)
    (copy / f"{key}.png").unlink()
    with client(folder) as page:
        card = next(
            c
            for c in page.get("/api/films", params={"per_page": 50}).json()["films"]
            if c["key"] == key
        )
        assert card["problems"] == [
            f"film not found: {copy / key}.png (moved or deleted?); showing its overlay"
        ]
        shown = page.get("/api/picture", params={"key": key})
        assert shown.status_code == 200
        colour = cv2.imdecode(np.frombuffer(shown.content, np.uint8), cv2.IMREAD_COLOR)
        assert np.abs(colour[..., 1].astype(int) - colour[..., 2]).max() > 40  # the green tint
        (folder / "overlays" / f"{key}.png").unlink()
        (folder / "masks" / f"{key}.png").unlink()
        gone = page.get("/api/picture", params={"key": key})
        assert gone.status_code == 404 and gone.json()["error"].startswith(
            f"film not found: {copy / key}.png (moved or deleted?), and no overlay"
        )
        assert (
            "mask not found" in page.get("/api/picture", params={"key": key, "layer": "mask"}).text
        )


def test_the_page_answers_this_machine_only(folder: Path) -> None:
    key = keys(folder)[0]
    with client(folder) as page:
        home = page.get("/")
        assert home.status_code == 200 and "/static/app.js" in home.text
        assert "default-src 'self'" in home.headers["content-security-policy"]
        for name in ("index.html", "app.js", "app.css"):  # nothing is fetched from elsewhere
            assert not re.search(r"https?:|//[a-z]", page.get(f"/static/{name}").text), name
        assert page.get("/", headers={"host": "films.example.com"}).status_code == 400
        elsewhere = page.post(
            "/api/decision",
            json={"key": key, "decision": "rejected"},
            headers={"origin": "http://evil.example"},
        )
        assert elsewhere.status_code == 403 and not (folder / REVIEW_CSV).exists()
        assert (
            page.post("/api/decision", json={"key": "nope", "decision": "rejected"}).status_code
            == 404
        )
        assert page.post("/api/decision", json={"key": key, "decision": "maybe"}).status_code == 422
        assert page.get("/api/picture", params={"key": "../../etc/passwd"}).status_code == 404
        assert not (folder / REVIEW_CSV).exists()


def test_concurrent_posts_to_a_real_server_lose_nothing(folder: Path) -> None:
    films = keys(folder)

    def post(url: str, key: str, note: str) -> None:
        body = json.dumps({"key": key, "decision": "rejected", "note": note}).encode()
        request = urllib.request.Request(
            f"{url}api/decision", body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200

    with serving(folder) as url:
        threads = [
            threading.Thread(target=post, args=(url, key, f"tab {i}"))
            for i, key in enumerate(films)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    rows = read_rows(folder / REVIEW_CSV)
    assert [(r["film"], r["note"]) for r in rows] == [(k, f"tab {i}") for i, k in enumerate(films)]


# --- the decisions used ------------------------------------------------------------------------


def review_some(folder: Path) -> dict[str, list[str]]:
    """Accept two flagged films, reject one flagged and one other film; return which."""
    order = expected_order(folder)
    book = ReviewBook(folder)
    chosen = {"accepted": order[:2], "rejected": [order[2], order[-1]]}
    for decision, films in chosen.items():
        for key in films:
            book.decide(key, decision, f"{decision} by a test")
    return chosen


def test_predict_and_evaluate_report_what_the_reviewer_decided(
    folder: Path, tiny_ckpt: Path, tmp_path: Path
) -> None:
    chosen = review_some(folder)
    dice = {
        k: float(r["dice"])
        for k, r in zip(keys(folder), read_rows(folder / "predictions.csv"), strict=True)
    }
    counts = review_counts(folder)
    assert (
        counts["flagged"],
        counts["flagged_accepted"],
        counts["flagged_rejected"],
        counts["flagged_undecided"],
        counts["others_rejected"],
        counts["stale"],
    ) == (4, 2, 1, 1, 1, 0)
    assert counts["flagged_accepted_dice_mean"] == pytest.approx(
        np.mean([dice[k] for k in chosen["accepted"]])
    )
    assert counts["flagged_rejected_dice_mean"] == pytest.approx(dice[chosen["rejected"][0]])
    line = describe(counts)
    assert (
        "4 of 9 films flagged; a reviewer accepted 2 and rejected 1 of them (1 undecided)" in line
    )

    # predict again over the reviewed folder, by another model: the summary counts the decisions,
    # and says they were made on the earlier masks
    rows = read_rows(folder / "predictions.csv")
    films = Path(rows[0]["input"]).parent
    summary = predict(
        compose_in(
            tmp_path,
            "predict",
            f"ckpt_path={tiny_ckpt}",
            f"input={films}",
            f"output={folder}",
            "overwrite=true",
            "progress=false",
            "postprocess=false",
            "quality.tta=true",
        )
    )
    review = summary["review"]
    assert review["flagged_accepted"] + review["others_accepted"] == 2
    assert review["rejected"] == 2 and review["stale"] == 4

    data = tmp_path / "data"
    write_split(data, "test", [1, 2, 3], seed=5)
    out = tmp_path / "eval"
    unreviewed = shutil.copytree(
        folder, tmp_path / "unreviewed", ignore=shutil.ignore_patterns(REVIEW_CSV)
    )
    with pytest.raises(DataError, match="no review.csv yet; review the folder first"):
        evaluate(
            compose_in(
                tmp_path,
                "evaluate",
                f"ckpt_path={tiny_ckpt}",
                f"data.root={data}",
                f"review={unreviewed}",
                f"output_dir={out}",
            )
        )
    assert not out.exists()
    metrics = evaluate(
        compose_in(
            tmp_path,
            "evaluate",
            f"ckpt_path={tiny_ckpt}",
            f"data.root={data}",
            f"review={folder}",
            f"output_dir={out}",
            "calibration=false",
            "n_samples=1",
            "n_worst=1",
        )
    )
    assert metrics["review"] == review_counts(folder)
    assert json.loads((out / "metrics.json").read_text())["review"]["rejected"] == 2
    report = (out / "report.md").read_text()
    section = report[report.index("## Review of the flagged masks") :]
    flagged = metrics["review"]["flagged"]
    assert (
        f"| flagged ({flagged}) | {metrics['review']['flagged_accepted']} | "
        f"{metrics['review']['flagged_rejected']} | {metrics['review']['flagged_undecided']} |"
    ) in section
    assert f"| not flagged ({N_FILMS - flagged}) |" in section


def test_rejected_films_are_exported_as_pairs_to_relabel(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(LungsegError, match="no film is rejected; nothing to export"):
        export_rejected(folder, tmp_path / "none")
    own_films(folder)
    films = keys(folder)
    book = ReviewBook(folder)
    book.decide(films[-1], "rejected", "right lung missed")  # sub/film_8
    book.decide(films[0], "rejected")
    book.decide(films[1], "accepted")
    out = tmp_path / "relabel"
    assert export_rejected(folder, out)["exported"] == 2
    rows = read_rows(out / "rejected.csv")
    assert [r["film"] for r in rows] == [films[0], films[-1]]
    assert [(r["image"], r["mask"]) for r in rows] == [
        ("image/film_0.png", "mask/film_0.png"),
        ("image/sub__film_8.png", "mask/sub__film_8.png"),
    ]
    assert rows[1]["note"] == "right lung missed"
    for row in rows:
        assert (out / row["image"]).read_bytes() == Path(row["input"]).read_bytes()
        assert (out / row["mask"]).read_bytes() == (
            folder / "masks" / f"{row['film']}.png"
        ).read_bytes()
    pairs, problems = pair_files(out / "image", out / "mask")  # as a training split pairs them
    assert len(pairs) == 2 and not problems

    with pytest.raises(LungsegError, match="already exists; choose a new folder"):
        export_rejected(folder, out)
    Path(rows[0]["input"]).unlink()  # a film moved since
    with pytest.raises(DataError, match="film not found: .*film_0.png"):
        export_rejected(folder, tmp_path / "second")
    assert not (tmp_path / "second").exists() and not list(tmp_path.glob(".second*"))


# --- the command -------------------------------------------------------------------------------


def test_the_command_serves_and_a_killed_server_loses_no_decision(
    folder: Path, capsys: pytest.CaptureFixture
) -> None:
    films = keys(folder)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}

    def start() -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lungseg.review", str(folder), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        first = proc.stdout.readline()
        assert f"{N_FILMS} films (4 flagged) in {folder}" in first, proc.stderr.read()
        return proc, proc.stdout.readline().split()[1]

    proc, url = start()
    try:
        for i, key in enumerate(films[:5]):
            body = json.dumps({"key": key, "decision": "rejected", "note": f"n{i}"}).encode()
            request = urllib.request.Request(
                f"{url}api/decision",
                body,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=30).close()
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no shutdown, no flush
        proc.wait(30)
    assert [r["note"] for r in read_rows(folder / REVIEW_CSV)] == [f"n{i}" for i in range(5)]
    proc, url = start()  # reopening shows the decisions
    try:
        with urllib.request.urlopen(f"{url}api/films?show=rejected", timeout=30) as answer:
            shown = json.loads(answer.read())
        assert sorted(c["key"] for c in shown["films"]) == sorted(films[:5])
    finally:
        proc.terminate()
        proc.wait(30)

    main([str(folder), "--summary"])
    assert capsys.readouterr().out.startswith("review: 4 of 9 films flagged;")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit):
            main([str(folder), "--port", str(taken.getsockname()[1])])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot listen on 127.0.0.1:" in err


@pytest.mark.parametrize(
    "names",
    [
        ["cxrimage_3", "sub/cxrimage_4"],
        ["a/b", "a__b", "cxrimage_3"],
        ["cxrimage_3", "cxrimage_40"],
    ],
)
def test_exported_names_pair_as_a_training_split_pairs_them(
    names: list[str], tmp_path: Path
) -> None:
    films = [Film(name, i, {}, tmp_path) for i, name in enumerate(names)]
    for image, mask in pair_names(films):
        for sub, stem in (("image", image), ("mask", mask)):
            (tmp_path / sub).mkdir(exist_ok=True)
            (tmp_path / sub / f"{stem}.png").write_bytes(b"")
    pairs, problems = pair_files(tmp_path / "image", tmp_path / "mask")
    assert len(pairs) == len(names) and not problems
