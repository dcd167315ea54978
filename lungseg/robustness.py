"""How a model holds up on other scanners and processing chains (``lungseg.evaluation.robustness``):
``python -m lungseg.robustness ckpt_path=best.ckpt data.root=/data split=test``; writes
per_image.csv, robustness.md/json and the heat-map robustness.png to ``output_dir``, replacing an
earlier report only whole.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from lungseg.atomic import atomic_dir, output_lock
from lungseg.config import CONFIG_DIR, command_line
from lungseg.errors import exit_on_user_error
from lungseg.evaluation.robustness import (
    SHIFTS,
    load_split,
    score_shifts,
    shift_table,
    summarise_shifts,
)
from lungseg.inference.backends import model_sources
from lungseg.inference.segmenter import LungSegmenter
from lungseg.settings import check_robustness, refuse_existing, writable_dir

log = logging.getLogger(__name__)


def robustness(cfg: DictConfig) -> dict[str, Any]:
    """Score the split clean and shifted; write per_image.csv, robustness.md/json and the heat-map
    into ``output_dir``, replacing an earlier report whole (with ``overwrite=true``) only once this
    one is complete."""
    check_robustness(cfg)
    out = Path(cfg.output_dir).expanduser()
    refuse_existing(out, "output_dir", bool(cfg.overwrite))
    writable_dir(out.parent, "output_dir")
    seg = LungSegmenter.load(
        model_sources(cfg.ckpt_path),
        str(cfg.device),
        cfg.precision,
        postprocess=bool(cfg.postprocess),
        polarity=str(cfg.polarity),
    )
    pairs = load_split(cfg.data.root, cfg.split, seg.description.intensity)
    log.info(
        "robustness of %s on %s/%s: %d images x %d shifts x 3 severities",
        cfg.ckpt_path,
        cfg.data.root,
        cfg.split,
        len(pairs),
        len(SHIFTS),
    )
    rows = score_shifts(seg, pairs, int(cfg.seed))
    summary = summarise_shifts(rows)
    with output_lock(out, "output_dir"), atomic_dir(out) as staged:
        # again: another run may have written it meanwhile
        refuse_existing(out, "output_dir", bool(cfg.overwrite))
        write_report(staged, rows, summary)
    return summary


def write_report(folder: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """per_image.csv, robustness.json, robustness.md and the heat-map robustness.png into
    ``folder``."""
    from lungseg.evaluation.figures import robustness_figure, save_figures

    with (folder / "per_image.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / "robustness.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "robustness.md").write_text(shift_table(summary))
    save_figures(
        {"robustness": robustness_figure(summary["per_shift"], summary["clean_dice"])}, folder
    )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="robustness")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Print the table and where the files went."""
    summary = robustness(cfg)
    print(shift_table(summary) + f"-> {cfg.output_dir}")


cli = command_line(main)

if __name__ == "__main__":
    cli()
