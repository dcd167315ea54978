"""``lungseg-review FOLDER [--port N]``: review the masks of a lungseg.predict output folder in a
local browser page; ``--summary`` prints the decisions' counts, ``--export-rejected DIR`` copies
the rejected films out for relabelling."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lungseg.errors import exit_on_user_error, require_extra
from lungseg.evaluation.review import REVIEW_CSV, describe, review_counts
from lungseg.review import DEFAULT_PORT, LOOPBACK

FEATURE = "lungseg-review"


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="lungseg-review",
        description="Review the masks of a lungseg.predict output folder in "
        "a local browser page, flagged films first; decisions go to FOLDER/review.csv.",
    )
    p.add_argument(
        "folder", type=Path, help="the output= folder of lungseg.predict (it holds predictions.csv)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port of the page (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    p.add_argument(
        "--host",
        default=LOOPBACK,
        help=f"address to listen on (default {LOOPBACK}: this machine only)",
    )
    p.add_argument(
        "--summary",
        action="store_true",
        help="print how many flagged masks were accepted and rejected, and exit",
    )
    p.add_argument(
        "--export-rejected",
        type=Path,
        metavar="DIR",
        help="copy the rejected films into the new folder DIR (image/, mask/, rejected.csv), and "
        "exit",
    )
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Serve the page until Ctrl+C (or print the summary, or export the rejected films)."""
    args = parser().parse_args(argv)
    if args.summary:
        counts = review_counts(args.folder)
        print(describe(counts) if counts else f"{args.folder / REVIEW_CSV}: no decisions yet")
        return
    if args.export_rejected is not None:
        from lungseg.review.relabel import export_rejected

        done = export_rejected(args.folder, args.export_rejected)
        print(
            f"{done['exported']} rejected film(s) -> {done['folder']} (image/, mask/, "
            "rejected.csv): correct the masks, then add the pairs to a training split"
        )
        return
    require_extra("fastapi", "review", FEATURE)
    require_extra("uvicorn", "review", FEATURE)
    from lungseg.review.server import create_app, listen, server_for, url_of

    app = create_app(args.folder, args.host)  # a bad folder or review.csv stops here
    sock = listen(args.host, args.port)
    book = app.state.review.book
    if args.host not in (LOOPBACK, "localhost", "::1"):
        print(
            f"warning: --host {args.host}: anyone who can reach this machine can see these films",
            file=sys.stderr,
        )
    flagged = sum(f.flagged for f in book.films)
    print(
        f"lungseg-review: {len(book.films)} films ({flagged} flagged) in {book.folder}; decisions "
        f"go to {book.path}",
        flush=True,
    )
    print(f"open {url_of(sock)} (Ctrl+C stops)", flush=True)
    server_for(app).run(sockets=[sock])
