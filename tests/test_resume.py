"""Safe resume: ckpt_path= continues only under the config the checkpoint was trained with
(max_epochs may grow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungseg.errors import LungsegError
from lungseg.train import train
from lungseg.training.resume import config_changes
from tests.helpers import TINY

BASE = (
    *TINY,
    "trainer.max_epochs=1",
    "test=false",
    "~logger",
    "~callbacks.prediction_grid",
    "~callbacks.lr_monitor",
    "optimizer.lr=1e-2",
)


@pytest.fixture
def last_ckpt(compose_cfg, tiny_dataset: Path) -> Path:
    train(compose_cfg(f"data.root={tiny_dataset}", *BASE))
    return (
        Path(compose_cfg(f"data.root={tiny_dataset}", *BASE).paths.output_dir)
        / "checkpoints"
        / "last.ckpt"
    )


def test_resume_refuses_a_changed_recipe_with_a_diff_and_allows_more_epochs(
    compose_cfg, tiny_dataset: Path, last_ckpt: Path
) -> None:
    resume = (f"data.root={tiny_dataset}", f"ckpt_path={last_ckpt}")
    with pytest.raises(LungsegError, match=r"1 setting\(s\) differ") as err:
        train(compose_cfg(*resume, *BASE, "optimizer.lr=1e-3"))
    assert "optimizer.lr: 0.01 in the checkpoint, 0.001 now" in str(err.value)
    assert "resume.allow_changes=true" in str(err.value)
    with pytest.raises(LungsegError, match="refused to resume") as err:  # another recipe altogether
        train(compose_cfg(*resume, *BASE, "+experiment=demo"))
    # what demo sets and TINY does not
    for key in ("model.dropout", "model.noise_std", "data.synthesize"):
        assert f"  {key}: " in str(err.value)
    with pytest.raises(LungsegError, match="augment|train_transform"):
        train(compose_cfg(*resume, *BASE, "augment=strong"))
    with pytest.raises(LungsegError, match="scheduler"):
        train(compose_cfg(*resume, *BASE, "scheduler=cosine"))

    metrics = train(compose_cfg(*resume, *BASE, "trainer.max_epochs=2", "data.num_workers=0"))
    # more epochs and another worker count: the same training, continued
    assert metrics["epochs"] == 2
    metrics = train(
        compose_cfg(
            *resume, *BASE, "trainer.max_epochs=3", "optimizer.lr=1e-3", "resume.allow_changes=true"
        )
    )
    assert metrics["epochs"] == 3


def test_config_changes_lists_checked_keys_only() -> None:
    old = {
        "optimizer": {"lr": 1e-3},
        "trainer": {"max_epochs": 5, "precision": "32-true"},
        "data": {"cache": True},
        "model": {"depth": 4},
    }
    new = {
        "optimizer": {"lr": 1e-3},
        "trainer": {"max_epochs": 9, "precision": "bf16-mixed"},
        "data": {"cache": False},
        "model": {"depth": 4, "deep_supervision": True},
    }
    assert config_changes(old, new) == [
        ("model.deep_supervision", "<unset>", True),
        ("trainer.precision", "32-true", "bf16-mixed"),
    ]
