"""The sweep's figure, ``summary.png``: the metric against each swept knob (numbers on their axis,
anything else as labelled categories)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lungseg.training.sweeps.results import best_row, finite_number

MAX_LABEL = 14  # characters of a categorical tick label


def _label(value: Any) -> str:
    number = finite_number(value)
    text = f"{number:g}" if number is not None else str(value)
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def knob_axis(ax: Any, raw: list[Any]) -> list[float]:
    """Set ``ax``'s x axis for a knob's values and return each value's x: log for numbers spanning a
    decade or more, categorical positions for strings and for a few (<= 6) distinct numbers, linear
    otherwise."""
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

    numbers = [finite_number(v) for v in raw]
    numeric = bool(raw) and all(n is not None for n in numbers)
    distinct = sorted(
        set(raw), key=lambda v: (finite_number(v) is None, finite_number(v) or 0.0, str(v))
    )
    if numeric:
        low, high = min(numbers), max(numbers)
        if low > 0 and high / low >= 10:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(numticks=6))
            ax.xaxis.set_minor_formatter(NullFormatter())
            return numbers
        if len(distinct) > 6:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            return numbers
    index = {v: i for i, v in enumerate(distinct)}
    ax.set_xticks(
        range(len(distinct)),
        [_label(v) for v in distinct],
        rotation=0 if numeric else 30,
        ha="center" if numeric else "right",
    )
    ax.set_xlim(-0.5, len(distinct) - 0.5)
    seen: dict[Any, int] = {}
    xs = []
    for v in raw:  # jobs sharing a value side by side, not on top of each other
        k = seen[v] = seen.get(v, -1) + 1
        n = raw.count(v)
        xs.append(index[v] + (0.3 * (k / (n - 1) - 0.5) if n > 1 else 0.0))
    return xs


def thin_tick_labels(fig: Any) -> None:
    """Hide each x tick label that would overlap the one kept before it (after layout), on every
    axes."""
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        kept = None
        for label in ax.get_xticklabels():
            if not label.get_text() or not label.get_visible():
                continue
            box = label.get_window_extent(renderer).expanded(1.15, 1.0)
            if kept is not None and box.overlaps(kept):
                label.set_visible(False)
            else:
                kept = box


def figure(rows: list[dict[str, Any]], knobs: list[str], metric: str) -> Any:
    """One panel per swept knob: ``metric`` of every finished job against the knob's value; the best
    in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if finite_number(r.get(metric)) is not None]
    knobs = knobs or ["job"]
    fig, axes = plt.subplots(1, len(knobs), figsize=(4 * len(knobs), 3.5), squeeze=False)
    best = best_row(rows, metric)
    for ax, knob in zip(axes[0], knobs, strict=True):
        raw = [r["job"] if knob == "job" else r["overrides"].get(knob, "") for r in done]
        xs = knob_axis(ax, raw)
        ys = [float(r[metric]) for r in done]
        ax.scatter(xs, ys, color=["red" if r is best else "tab:blue" for r in done], zorder=3)
        for x, y, r in zip(xs, ys, done, strict=True):
            if r is best:  # on top of any job with the same value
                ax.scatter([x], [y], color="red", zorder=4, label=f"best: {r['run']}")
                ax.legend(loc="best", fontsize=7)
        ax.set_xlabel(knob)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    thin_tick_labels(fig)
    return fig


def plot(rows: list[dict[str, Any]], knobs: list[str], metric: str, path: Path) -> None:
    """Write :func:`figure` to ``path``."""
    import matplotlib.pyplot as plt

    fig = figure(rows, knobs, metric)
    fig.savefig(path, dpi=100)
    plt.close(fig)
