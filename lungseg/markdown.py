"""Markdown for the reports lungseg writes (evaluation, robustness, sweeps, model cards)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def table(rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table of ``rows``, the first being the header (no trailing newline); a ``|``
    inside a cell is shown as ``/`` so it cannot split the cell."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"

    return "\n".join([line(rows[0]), "|" + " --- |" * len(rows[0]), *(line(r) for r in rows[1:])])
