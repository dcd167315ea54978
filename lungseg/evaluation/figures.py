"""The evaluation's figures (matplotlib, Agg): curves, confusion matrix, training history, Dice
histogram, samples."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lungseg.inference.overlay import overlay, to_uint8  # noqa: E402
from lungseg.runs import events_dir

HISTORY_PANELS = (("loss", "BCE loss"), ("accuracy", "pixel accuracy"), ("dice", "Dice"))


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, auroc: float) -> Figure:
    """ROC curve of the pixel probabilities with its area."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, lw=2, label=f"AUROC = {auroc:.4f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set(
        xlabel="false positive rate (1 - specificity)",
        ylabel="true positive rate (recall)",
        title="ROC curve (pixels)",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right")
    return fig


def pr_figure(precision: np.ndarray, recall: np.ndarray, prevalence: float) -> Figure:
    """Precision-recall curve of the pixel probabilities, with the lung prevalence as the chance
    line."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(recall, precision, lw=2, label="model")
    ax.axhline(
        prevalence, ls="--", color="grey", lw=1, label=f"chance (lung fraction {prevalence:.3f})"
    )
    ax.set(
        xlabel="recall",
        ylabel="precision",
        title="Precision-recall curve (pixels)",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower left")
    return fig


def confusion_figure(confusion: np.ndarray) -> Figure:
    """Pixel confusion matrix [[TN, FP], [FN, TP]] with counts and row percentages."""
    confusion = np.asarray(confusion, dtype=np.float64)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    names = (("TN", "FP"), ("FN", "TP"))
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{names[i][j]}\n{int(confusion[i, j]):,}\n{rates[i, j]:.2%}",
                ha="center",
                va="center",
                color="white" if rates[i, j] > 0.5 else "black",
            )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["background", "lung"],
        yticklabels=["background", "lung"],
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix (pixels)",
    )
    return fig


def read_history(tensorboard_dir: Path) -> dict[str, list[float]]:
    """Per-epoch ``train/`` and ``val/`` loss, accuracy and Dice from a run's TensorBoard events ({}
    if none)."""
    if not Path(tensorboard_dir).is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # its directory watcher logs every file at INFO
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    events = EventAccumulator(str(events_dir(tensorboard_dir)), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags().get("scalars", []))
    wanted = [f"{stage}/{name}" for name, _ in HISTORY_PANELS for stage in ("train", "val")]
    return {tag: [e.value for e in events.Scalars(tag)] for tag in wanted if tag in tags}


def history_figure(history: dict[str, list[float]]) -> Figure:
    """Training and validation loss, accuracy and Dice per epoch."""
    fig, axes = plt.subplots(1, len(HISTORY_PANELS), figsize=(5 * len(HISTORY_PANELS), 4))
    for ax, (name, label) in zip(axes, HISTORY_PANELS, strict=True):
        for stage, style in (("train", "-o"), ("val", "-s")):
            values = history.get(f"{stage}/{name}", [])
            if values:
                ax.plot(range(1, len(values) + 1), values, style, ms=3, label=stage)
        ax.set(xlabel="epoch", ylabel=label, title=label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle("Training history")
    fig.tight_layout()
    return fig


def dice_histogram(dice: np.ndarray) -> Figure:
    """Histogram of per-image Dice with its mean and median."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(dice, bins=min(50, max(10, len(dice) // 4)), range=(0, 1), color="tab:blue", alpha=0.8)
    ax.axvline(float(np.mean(dice)), color="tab:red", label=f"mean {np.mean(dice):.4f}")
    ax.axvline(
        float(np.median(dice)), color="tab:green", ls="--", label=f"median {np.median(dice):.4f}"
    )
    ax.set(xlabel="Dice per image", ylabel="images", title=f"Per-image Dice ({len(dice)} images)")
    ax.legend(loc="upper left")
    return fig


def prediction_figure(
    images: torch.Tensor,
    masks: torch.Tensor,
    probs: torch.Tensor,
    titles: Sequence[str],
    threshold: float = 0.5,
) -> Figure:
    """One row per image: input, true mask, predicted mask, overlay (green hit, red false positive,
    blue missed)."""
    n = len(images)
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n), squeeze=False, layout="constrained")
    for row, (image, truth, prob, title) in enumerate(
        zip(images, masks, probs, titles, strict=True)
    ):
        pred = (prob >= threshold).float()
        coloured = overlay(to_uint8(image[0].numpy()), pred[0].numpy(), truth[0].numpy())
        tiles = (image[0], truth[0], pred[0], torch.from_numpy(coloured / 255))
        for col, (ax, tile, name) in enumerate(
            zip(axes[row], tiles, ("input", "true mask", "predicted", "overlay"), strict=True)
        ):
            ax.imshow(tile.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name if col else f"{title}", fontsize=8)
    fig.suptitle("Predictions (overlay: green hit, red false positive, blue missed)", fontsize=10)
    return fig


def reliability_figure(
    confidence: np.ndarray, frequency: np.ndarray, fraction: np.ndarray, ece: float
) -> Figure:
    """Reliability diagram of the pixel probabilities (observed lung frequency per probability bin)
    with the ECE."""
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    seen = fraction > 0
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    ax.plot(confidence[seen], frequency[seen], "-o", ms=4, label=f"model (ECE = {ece:.4f})")
    ax.set(
        ylabel="observed lung frequency",
        title="Reliability diagram (pixels)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left")
    ax_n.bar(confidence[seen], fraction[seen], width=1 / max(len(fraction), 1), color="tab:blue")
    ax_n.set(xlabel="predicted probability", ylabel="fraction of pixels", yscale="log")
    fig.tight_layout()
    return fig


def quality_figure(
    scores: np.ndarray, dice: np.ndarray, review_below: float, bad_dice: float
) -> Figure:
    """Quality score against true per-image Dice, with the operating point (flagged: left of it) and
    the Dice under which a film counts as bad (below it)."""
    from lungseg.inference.quality import spearman

    fig, ax = plt.subplots(figsize=(5.5, 5), layout="constrained")
    flagged = scores < review_below
    ax.scatter(
        scores[~flagged],
        dice[~flagged],
        s=22,
        color="tab:blue",
        label=f"passed ({int((~flagged).sum())})",
    )
    ax.scatter(
        scores[flagged],
        dice[flagged],
        s=22,
        color="tab:red",
        marker="s",
        label=f"needs_review ({int(flagged.sum())})",
    )
    low = float(min(scores.min(), dice.min(), review_below, bad_dice)) - 0.02
    ax.plot([low, 1], [low, 1], ":", color="grey", lw=1, label="score = Dice")
    ax.axvline(
        review_below, color="tab:red", lw=1, ls="--", label=f"operating point {review_below:.3f}"
    )
    ax.axhline(bad_dice, color="tab:orange", lw=1, ls="--", label=f"Dice {bad_dice:.2f}")
    ax.set(
        xlabel="quality score",
        ylabel="true Dice (post-processed mask)",
        xlim=(low, 1.005),
        ylim=(low, 1.005),
        title=(
            f"Quality score vs Dice ({len(scores)} images, Spearman {spearman(scores, dice):.3f})"
        ),
    )
    ax.legend(loc="lower right", fontsize=8)
    return fig


def save_figures(
    figures: dict[str, Figure], out_dir: Path, writer: object | None = None
) -> list[Path]:
    """Write each figure to ``<out_dir>/<name>.png`` (and to a TensorBoard SummaryWriter under
    ``eval/``)."""
    paths = []
    for name, fig in figures.items():
        path = Path(out_dir) / f"{name}.png"
        fig.savefig(path, dpi=110)
        if writer is not None:
            writer.add_figure(f"eval/{name}", fig, close=False)  # type: ignore[attr-defined]
        plt.close(fig)
        paths.append(path)
    return paths


def robustness_figure(per_shift: dict[str, dict[int, float]], clean: float) -> Figure:
    """Heat-map of mean per-image Dice per shift (rows) and severity (columns), the clean Dice in
    the title."""
    shifts = list(per_shift)
    grid = np.full((len(shifts), 3), np.nan)
    for i, shift in enumerate(shifts):
        for severity, value in per_shift[shift].items():
            grid[i, severity - 1] = value
    fig, ax = plt.subplots(figsize=(5.5, 0.4 * len(shifts) + 1.5), layout="constrained")
    image = ax.imshow(
        grid, cmap="RdYlGn", vmin=max(0.0, float(np.nanmin(grid)) - 0.02), vmax=clean, aspect="auto"
    )
    for i in range(len(shifts)):
        for j in range(3):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8)
    ax.set(
        xticks=range(3),
        xticklabels=["mild", "moderate", "strong"],
        yticks=range(len(shifts)),
        yticklabels=shifts,
        title=f"Mean per-image Dice under shifts (clean {clean:.3f})",
    )
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig
