"""The review page: a small FastAPI app over one prediction folder, served by uvicorn on a loopback
port.

The page (``static/``: hand-written HTML, CSS and JavaScript; nothing comes from elsewhere) asks for
one page of cards at a time (``/api/films``), each card's pictures as cached thumbnails
(``/api/picture``), the full-size film only when a card is opened; a decision is a POST that
returns once ``review.csv`` is rewritten.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import cv2
from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from lungseg.errors import DataError, LungsegError
from lungseg.evaluation.review import ReviewBook
from lungseg.inference.outputs import PREDICTIONS, Film, review_order
from lungseg.review import LOOPBACK
from lungseg.review.images import Thumbnails, picture

STATIC = Path(__file__).parent / "static"
# Columns a card shows in a place of their own; the other columns are listed under "more".
OWN_PLACE = (
    "input",
    "mask",
    "quality_score",
    "needs_review",
    "inverted",
    "status",
    "status_reason",
    "seg",
    "plausibility",
    "quality",
)  # quality: the plausibility flags' name before lungseg 0.3
FIGURES = (
    "lung_fraction",
    "large_components",
    "dice",
    "iou",
    "left_lung_area",
    "right_lung_area",
    "left_lung_height",
    "right_lung_height",
    "area_unit",
)  # and every *_px, *_mm, *_mm2
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ANY_ADDRESS = ("0.0.0.0", "::")
Show = Literal["all", "flagged", "undecided", "accepted", "rejected", "notes"]


class DecisionIn(BaseModel):
    """A change to one film's review; a field left out stays as it is."""

    key: str
    decision: Literal["accepted", "rejected", ""] | None = None
    note: str | None = None


def _figure(name: str) -> bool:
    """A per-film measure shown as a figure: lung fraction, areas and lengths, scores."""
    return name in FIGURES or name.endswith(("_px", "_mm", "_mm2"))


def _problems(film: Film) -> list[str]:
    """What is missing on disk for a film, as its card says it."""
    problems = []
    if not film.input.is_file():
        shown = "showing its overlay" if film.overlay.is_file() else "and it has no overlay"
        problems.append(f"film not found: {film.input} (moved or deleted?); {shown}")
    if film.mask is not None and not film.mask.is_file():
        problems.append(f"mask not found: {film.mask} (moved or deleted?)")
    return problems


class ReviewState:
    """What the page reads: the folder's films in review order and their decisions."""

    def __init__(self, book: ReviewBook, thumbnails: Thumbnails) -> None:
        self.book = book
        self.thumbnails = thumbnails
        self.order = review_order(book.films)
        self.rank = {film.key: i + 1 for i, film in enumerate(self.order)}
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="thumbnails-ahead")
        self._waiting: Future[None] | None = None

    def make_ahead(self, films: list[Film]) -> None:
        """Make the thumbnails of the next page in the background, one at a time, so that turning
        to it shows pictures at once (a film that cannot be drawn says so when it is shown)."""

        def make() -> None:
            for film in films:
                for layer in ("film", "mask"):
                    with contextlib.suppress(LungsegError, OSError, cv2.error):
                        self.thumbnails.path(film, layer)

        if self._waiting is not None:
            self._waiting.cancel()  # a page turned past: its next page is no longer next
        self._waiting = self._ahead.submit(make)

    def card(self, film: Film) -> dict[str, Any]:
        """One film as its card shows it."""
        decision = self.book.decisions.get(film.key)
        row = film.row
        return {
            "key": film.key,
            "rank": self.rank[film.key],
            "input": row.get("input", ""),
            "score": film.score,
            "flagged": film.flagged,
            "refused": film.refused,
            "inverted": film.inverted,
            "status": film.status,
            "reason": row.get("status_reason", ""),
            "plausibility": row.get("plausibility", row.get("quality", "")),
            "has_mask": film.mask is not None,
            "figures": {
                k: v for k, v in row.items() if _figure(k) and k not in OWN_PLACE and v != ""
            },
            "columns": {
                k: v for k, v in row.items() if not _figure(k) and k not in OWN_PLACE and v != ""
            },
            "decision": decision.decision if decision else "",
            "note": decision.note if decision else "",
            "decided_at": decision.decided_at if decision else "",
            "stale": bool(decision and decision.decision and decision.stale(film)),
            "problems": _problems(film),
        }

    def shown(self, show: str) -> list[Film]:
        """The films a filter keeps, in review order."""
        decisions = self.book.decisions

        def decided(film: Film) -> str:
            return decisions[film.key].decision if film.key in decisions else ""

        keep: dict[str, Callable[[Film], bool]] = {
            "all": lambda f: True,
            "flagged": lambda f: f.flagged or f.refused,
            "undecided": lambda f: not decided(f),
            "accepted": lambda f: decided(f) == "accepted",
            "rejected": lambda f: decided(f) == "rejected",
            "notes": lambda f: f.key in decisions and bool(decisions[f.key].note),
        }
        return [f for f in self.order if keep[show](f)]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(folder: str | Path, host: str = LOOPBACK) -> FastAPI:
    """The page over a prediction folder, answering requests addressed to ``host`` or localhost;
    a folder that is not one, or a bad review.csv, is one DataError here, before anything runs."""
    book = ReviewBook(folder)
    state = ReviewState(book, Thumbnails(book.folder))
    names = {host.strip("[]"), LOOPBACK, "localhost", "::1"}
    unknown_film = f"is not in {book.folder / PREDICTIONS}"
    app = FastAPI(title="lungseg-review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = state

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        # Only this machine's names (a rebound DNS name must not read the films), and no decision
        # posted by a page from elsewhere (its Origin is not this server's).
        name = urlsplit("//" + request.headers.get("host", "")).hostname
        if host not in ANY_ADDRESS and name not in names:
            return _error(400, f"this page answers at {', '.join(sorted(names))} only")
        origin = request.headers.get("origin")
        if (
            request.method == "POST"
            and origin
            and urlsplit(origin).netloc != request.headers.get("host")
        ):
            return _error(403, f"a decision from another origin ({origin}) is refused")
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/films")
    def films(page: int = 0, per_page: int = 24, show: Show = "all") -> dict[str, Any]:
        per_page = min(max(per_page, 1), 200)
        kept = state.shown(show)
        pages = max(1, -(-len(kept) // per_page))
        page = min(max(page, 0), pages - 1)
        cards = [state.card(f) for f in kept[page * per_page : (page + 1) * per_page]]
        state.make_ahead(kept[(page + 1) * per_page : (page + 2) * per_page])
        return {
            "folder": str(book.folder),
            "review_csv": str(book.path),
            "total": len(kept),
            "films_total": len(state.order),
            "page": page,
            "pages": pages,
            "per_page": per_page,
            "show": show,
            "films": cards,
            "counts": book.counts(),
        }

    @app.get("/api/picture")
    def picture_of(
        key: str, layer: Literal["film", "mask"] = "film", size: Literal["thumb", "full"] = "thumb"
    ) -> Response:
        film = book.by_key.get(key)
        if film is None:
            return _error(404, f"film '{key}' {unknown_film}")
        try:
            if size == "full":
                return Response(
                    picture(film, layer, None),
                    media_type="image/png",
                    headers={"Cache-Control": "no-store"},
                )
            path = state.thumbnails.path(film, layer)
        except LungsegError as err:
            return _error(404, str(err))
        kind = "image/jpeg" if path.suffix == ".jpg" else "image/png"
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "no-cache"})

    @app.post("/api/decision")
    def decide(change: DecisionIn) -> Response:
        film = book.by_key.get(change.key)
        if film is None:
            return _error(404, f"film '{change.key}' {unknown_film}")
        try:
            book.decide(change.key, change.decision, change.note)
        except DataError as err:  # review.csv was edited by hand into a bad state meanwhile
            return _error(409, f"not saved: {err}")
        except LungsegError as err:
            return _error(422, str(err))
        return JSONResponse({"film": state.card(film), "counts": book.counts()})

    @app.get("/api/summary")
    def summary() -> dict[str, Any]:
        return book.counts()

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: a free one); one clear error when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn takes them
    except OSError as err:
        sock.close()
        raise LungsegError(
            f"--port {port}: cannot listen on {host}:{port} "
            f"({err.strerror or err}); choose another (--port 0 picks a free one)"
        ) from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The page's address on a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def server_for(app: FastAPI) -> Any:
    """A quiet uvicorn server for ``app`` (no access log, no lifespan events)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    return uvicorn.Server(config)


@contextmanager
def serving(folder: str | Path, host: str = LOOPBACK, port: int = 0) -> Iterator[str]:
    """The page of ``folder`` served from a thread until the block ends; yields its address."""
    app = create_app(folder, host)
    sock = listen(host, port)
    server = server_for(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the review server stopped while starting")
            thread.join(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
