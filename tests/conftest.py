"""Shared fixtures: small datasets written per test, composed configs (plain helpers:
tests/helpers.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lungseg.cpu import CPU_BF16_ENV, cpu_has_native_bf16
from tests.helpers import CONF, train_tiny, write_split


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpu-precision",
        choices=("host", "bf16", "fp32", "other"),
        default="host",
        help="the CPU precision the runtime picks: the host's (default), bf16 (emulated on an "
        "AVX2 CPU), "
        "fp32, or other: the one this host does not pick (make test runs the 'precision' tests so)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Set LUNGSEG_CPU_BF16 for this process and every subprocess a test starts."""
    choice = config.getoption("--cpu-precision")
    if choice == "other":
        choice = "fp32" if cpu_has_native_bf16() else "bf16"
    if choice != "host":
        os.environ[CPU_BF16_ENV] = "1" if choice == "bf16" else "0"


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"CPU precision: {'bf16-mixed' if cpu_has_native_bf16() else '32-true'} ({CPU_BF16_ENV}="
        f"{os.environ.get(CPU_BF16_ENV, 'unset')})"
    )


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A small valid dataset: 8 train, 4 val, 4 test pairs of 64 px, with gaps in the numbering."""
    root = tmp_path / "data"
    write_split(root, "train", [0, 1, 2, 3, 5, 8, 13, 21])
    write_split(root, "val", [30, 31, 32, 40], seed=1)
    write_split(root, "test", [50, 52, 54, 56], seed=2)
    return root


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose ``conf/<name>.yaml`` with overrides, as the entry points do, writing into tmp_path.
    Tests compare numbers, so everything runs on the CPU unless a test names a device (on a GPU host
    too)."""

    def _compose(*overrides: str, config_name: str = "train") -> DictConfig:
        pinned = {
            "train": "trainer.accelerator=cpu",
            "predict": "device=cpu",
            "evaluate": "device=cpu",
            "bench": "device=cpu",
        }.get(config_name)
        if pinned and not any(o.split("=")[0] == pinned.split("=")[0] for o in overrides):
            overrides = (pinned, *overrides)
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One TINY model (32 px) trained one epoch on disc phantoms, shared read-only by every test
    that only uses it."""
    return train_tiny(tmp_path_factory.mktemp("tiny"))
