"""Validate a dataset folder and list every problem at once: ``python -m lungseg.data.check
data.root=...``."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from lungseg.config import CONFIG_DIR, command_line
from lungseg.data.dataset import LungDataset
from lungseg.data.layout import SPLITS, find_pairs, require_root
from lungseg.errors import DataError, exit_on_user_error


def check_dataset(root: str | Path, image_size: int = 256) -> dict[str, int]:
    """Pair and decode every file of every split; return pair counts or raise one DataError listing
    all problems."""
    root = require_root(Path(root))
    counts, problems = {}, []
    for split in SPLITS:
        pairs, split_problems = find_pairs(root, split)
        problems += split_problems
        problems += LungDataset(pairs, image_size).read()  # every file decoded once, nothing kept
        counts[split] = len(pairs)
    if problems:
        raise DataError(f"dataset at {root} has {len(problems)} problem(s):", problems)
    return counts


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="check")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Check ``data.root`` and print the pair counts per split."""
    counts = check_dataset(cfg.data.root, cfg.data.image_size)
    total = sum(counts.values())
    print(
        f"OK: {total} pairs in {cfg.data.root} ("
        + ", ".join(f"{s} {n}" for s, n in counts.items())
        + ")"
    )


cli = command_line(main)

if __name__ == "__main__":
    cli()
