"""What several test files share: paths, the real CXR set marker, disc phantoms, the TINY config,
tiny modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from lungseg import runtime
from lungseg.config import CONFIG_DIR
from lungseg.data.layout import DATASET_DIR, IMAGE_DIR, MASK_DIR, image_name, mask_name
from lungseg.train import train
from lungseg.training.module import LungSegModule

ROOT = Path(__file__).resolve().parents[1]
CONF = CONFIG_DIR
CXR = ROOT.parent / "shared" / "data" / "cxr-v7"

# How far a recomputation may stray from a logged or written number computed in the same precision,
# by that precision: fp32 rounding, or bf16's 8-bit mantissa (2**-8 relative per operation) through
# a few layers, where the two computations may take other kernels (batch size, memory layout).
TOLERANCE = {"32-true": 1e-5, "bf16-mixed": 5e-3}


def cpu_precision() -> str:
    """The precision the runtime picks on this CPU: bf16-mixed or 32-true (``pytest
    --cpu-precision`` sets it)."""
    return runtime.native_precision("cpu")


requires_cxr = pytest.mark.skipif(
    not (CXR / DATASET_DIR).is_dir(), reason=f"real CXR set not found at {CXR} (CI always has it)"
)

# Overrides that shrink the composed train config to seconds on a CPU (32 px, a 2-level U-Net of
# width 4).
TINY = (
    "data.image_size=32",
    "model.base_filters=4",
    "model.depth=2",
    "data.batch_size=4",
    "~callbacks.progress_bar",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
)

# A LungSegModule built without Hydra: the same tiny U-Net, Adam, plain BCE.
NET = {
    "_target_": "lungseg.models.unet.UNet",
    "base_filters": 4,
    "depth": 2,
    "dropout": 0.0,
    "noise_std": 0.0,
}
OPT = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
LOSS = {"_target_": "torch.nn.BCEWithLogitsLoss"}


def make_module(**kw) -> LungSegModule:
    return LungSegModule(net=NET, optimizer=OPT, loss=LOSS, **kw)


def disc_pair(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A tiny image/mask pair: a dark disc (the 'lung') on a brighter textured background."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    r = rng.integers(size // 6, size // 3)
    mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).astype(np.uint8) * 255
    image = np.where(mask > 0, 60, 180) + rng.normal(0, 10, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_split(root: Path, split: str, numbers: list[int], size: int = 64, seed: int = 0) -> None:
    """Write pairs with the given numbers N into ``root`` in the Kaggle layout."""
    rng = np.random.default_rng(seed)
    for sub in (IMAGE_DIR, MASK_DIR):
        (root / DATASET_DIR / split / sub).mkdir(parents=True, exist_ok=True)
    for n in numbers:
        image, mask = disc_pair(rng, size)
        cv2.imwrite(str(root / DATASET_DIR / split / IMAGE_DIR / image_name(n)), image)
        cv2.imwrite(
            str(root / DATASET_DIR / split / MASK_DIR / mask_name(n)),
            mask,
            [cv2.IMWRITE_JPEG_QUALITY, 90],
        )


def train_tiny(folder: Path, *overrides: str) -> Path:
    """Train the TINY U-Net (32 px) one epoch on disc phantoms; return its best.ckpt (the run folder
    holds nothing else a model needs: everything is inside the checkpoint)."""
    data = folder / "data"
    write_split(data, "train", list(range(8)))
    write_split(data, "val", [10, 11, 12, 13], seed=1)
    write_split(data, "test", [20, 21], seed=2)
    return train_run(
        folder / "run",
        f"data.root={data}",
        *TINY,
        "trainer.max_epochs=1",
        "optimizer.lr=1e-2",
        *overrides,
    )


def train_run(run: Path, *overrides: str) -> Path:
    """Train ``lungseg.train`` with these overrides into ``run`` as its Hydra run folder (no logger,
    no test, no per-epoch figures); return its best.ckpt."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            "train",
            overrides=[
                "test=false",
                "~logger",
                "~callbacks.prediction_grid",
                "~callbacks.lr_monitor",
                *overrides,
            ],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    train(cfg)
    GlobalHydra.instance().clear()
    return run / "checkpoints" / "best.ckpt"


def gradient(h: int = 70, w: int = 90) -> np.ndarray:
    """A uint8 test image spanning 0..255 with structure in both directions."""
    yy, xx = np.mgrid[:h, :w]
    return np.round(255 * (0.7 * xx / (w - 1) + 0.3 * yy / (h - 1))).astype(np.uint8)


def run_bench(
    out: Path, *overrides: str, timeout: int = 600
) -> tuple[subprocess.CompletedProcess, Any]:
    """``python -m lungseg.bench <overrides> json=<out>`` from the checkout; asserts it exits 0 and
    returns the process and the JSON it wrote."""
    proc = subprocess.run(
        [sys.executable, "-m", "lungseg.bench", *overrides, f"json={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text())
