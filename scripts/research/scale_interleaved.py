"""Research script, not a pipeline: produced the interleaved scale figures (docs/performance.md,
Scale) at commit a3aa24f; kept to reproduce or extend them.

The data cost per image of a small and a large cached set, interleaved in one process, so a machine
whose load changes over minutes affects both alike (the README's scale section).

    python scripts/research/scale_interleaved.py [SMALL_SET LARGE_SET] [--workers 2] [--rounds 3]

The sets are the ones ``python -m lungseg.bench mode=scale`` leaves in ``<temp>/lungseg-scale``
(default: its 1,000 and 17,000 sets). Each round reads as many images from each (whole epochs of the
small set), through the real LungDataModule with the training augmentation, and prints wall and CPU
milliseconds per image.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lungseg.bench.process import cpu_seconds
from lungseg.config import CONFIG_DIR
from lungseg.data.datamodule import LungDataModule

SETS = Path(tempfile.gettempdir()) / "lungseg-scale"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "sets", nargs="*", default=[SETS / f"set-{n}-16-256px-seed0" for n in (1000, 17000)]
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    augment = instantiate(OmegaConf.load(Path(CONFIG_DIR) / "augment" / "keras.yaml"))
    loaders = {}
    for root in map(Path, args.sets):
        datamodule = LungDataModule(str(root), num_workers=args.workers, train_transform=augment)
        datamodule.setup("fit")
        loaders[len(datamodule.dataset("train"))] = datamodule.train_dataloader()
    for loader in loaders.values():  # warm-up: workers started, the shared cache mapped by each
        sum(batch["image"].shape[0] for batch in loader)
    largest = max(loaders)
    for round_ in range(args.rounds):
        for n, loader in loaders.items():
            wall, cpu = time.perf_counter(), cpu_seconds()
            seen = sum(batch["image"].shape[0] for _ in range(largest // n) for batch in loader)
            print(
                f"round {round_}, {n} images: {1e3 * (time.perf_counter() - wall) / seen:.3f} ms "
                "per image wall, "
                f"{1e3 * (cpu_seconds() - cpu) / seen:.3f} CPU ({seen} images)",
                flush=True,
            )


if __name__ == "__main__":
    main()
