"""GPU-only checks (``pytest -m gpu``; skipped without CUDA; scripts/gpu-check.sh runs them): mixed
precision, channels_last and compile on the GPU, and the GPU's predictions agreeing with the CPU's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lungseg import LungSegmenter
from lungseg.runtime import has_native_bf16, native_precision
from lungseg.train import train
from tests.helpers import TINY

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_native_precision_never_picks_emulated_bf16() -> None:
    major, _ = torch.cuda.get_device_capability()
    # Ampere and newer; V100 (7.0) and T4 (7.5) get 16-mixed
    assert has_native_bf16("cuda") == (major >= 8)
    assert native_precision("cuda") == ("bf16-mixed" if major >= 8 else "16-mixed")


def test_gpu_training_with_mixed_precision_and_compile(compose_cfg, tiny_dataset: Path) -> None:
    cpu_free = [o for o in TINY if o != "trainer.accelerator=cpu"]
    cfg = compose_cfg(
        f"data.root={tiny_dataset}",
        *cpu_free,
        "trainer=gpu",
        "trainer.max_epochs=2",
        "module.compile=true",
        "~logger",
    )
    metrics = train(cfg)
    assert cfg.trainer.precision == native_precision("cuda")
    assert metrics["test/dice"] > 0.5 and np.isfinite(metrics["test/loss"])


def test_gpu_and_cpu_predictions_agree(tiny_ckpt: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (120, 96), dtype=np.uint8)
    cpu = LungSegmenter.from_checkpoint(tiny_ckpt, "cpu", precision="32").predict_proba(image)
    gpu32 = LungSegmenter.from_checkpoint(tiny_ckpt, "cuda", precision="32").predict_proba(image)
    np.testing.assert_allclose(gpu32, cpu, atol=1e-4)  # TF32 may round the convolutions
    mixed = LungSegmenter.from_checkpoint(tiny_ckpt, "cuda", precision=native_precision("cuda"))
    assert np.abs(mixed.predict_proba(image) - cpu).max() < 0.05
