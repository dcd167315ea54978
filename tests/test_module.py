"""The LightningModule: Keras' L2 reproduced exactly, metrics, and checkpoints that rebuild the
model alone."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from lungseg.data.datamodule import LungDataModule
from lungseg.metrics.pixels import BinnedAUROC, pixel_metrics
from lungseg.training.module import LungSegModule, conv_kernels
from tests.helpers import LOSS, NET, OPT, make_module


def test_l2_equals_keras_definition_value_and_gradient() -> None:
    module = make_module(kernel_l2=0.01)
    kernels = conv_kernels(module.net)
    n_conv = sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in module.net.modules())
    assert len(kernels) == n_conv and all(k.dim() == 4 for k in kernels)
    # Keras: loss += l2 * reduce_sum(square(kernel)) for each regularised kernel.
    expected = 0.01 * sum(
        float(np.square(k.detach().numpy().astype(np.float64)).sum()) for k in kernels
    )
    penalty = module.l2_penalty()
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    for name, param in module.net.named_parameters():
        if any(param is k for k in kernels):
            torch.testing.assert_close(param.grad, 2 * 0.01 * param.detach())
        else:  # biases, BatchNorm: untouched by the regulariser
            assert param.grad is None or torch.count_nonzero(param.grad) == 0, name


def test_training_step_adds_l2_to_bce() -> None:
    module = make_module(kernel_l2=0.01, channels_last=False)
    batch = {"image": torch.rand(2, 1, 16, 16), "mask": (torch.rand(2, 1, 16, 16) > 0.5).float()}
    torch.manual_seed(0)
    with_l2 = module.training_step(batch, 0)
    module.hparams.kernel_l2 = 0.0
    torch.manual_seed(0)
    without = module.training_step(batch, 0)
    expected = 0.01 * sum(k.pow(2).sum() for k in conv_kernels(module.net)).item()
    assert (with_l2 - without).item() == pytest.approx(expected, rel=1e-4)


def test_metrics_match_numpy_on_known_predictions() -> None:
    rng = np.random.default_rng(0)
    target = rng.random(5000) < 0.3
    probs = np.clip(target * 0.6 + rng.random(5000) * 0.5, 0, 1).astype(np.float32)
    m = pixel_metrics("x/")
    m.update(torch.from_numpy(probs), torch.from_numpy(target).long())
    out = {k: v.item() for k, v in m.compute().items()}
    pred = probs >= 0.5
    tp, fp = (pred & target).sum(), (pred & ~target).sum()
    fn, tn = (~pred & target).sum(), (~pred & ~target).sum()
    assert out["x/accuracy"] == pytest.approx((tp + tn) / 5000)
    assert out["x/precision"] == pytest.approx(tp / (tp + fp))
    assert out["x/recall"] == pytest.approx(tp / (tp + fn))
    assert out["x/specificity"] == pytest.approx(tn / (tn + fp))
    assert out["x/iou"] == pytest.approx(tp / (tp + fp + fn))
    assert out["x/dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn)) == out["x/f1"]
    # AUROC from probabilities = P(score of a positive > score of a negative)
    pos, neg = probs[target], probs[~target]
    exact = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert out["x/auroc"] == pytest.approx(exact, abs=2e-3)
    assert out["x/auroc"] > out["x/accuracy"] - 0.2  # not (sens + spec) / 2 of a thresholded mask


def test_binned_auroc_state_equals_torchmetrics() -> None:
    from torchmetrics.classification import BinaryAUROC

    probs, target = torch.rand(20000), (torch.rand(20000) > 0.6).long()
    ours, theirs = BinnedAUROC(thresholds=50), BinaryAUROC(thresholds=50)
    ours.update(probs, target)
    theirs.update(probs, target)
    assert torch.equal(ours.confmat, theirs.confmat)
    assert ours.compute() == theirs.compute()


def test_checkpoint_alone_rebuilds_the_model(tmp_path: Path) -> None:
    module = make_module()
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = LungSegModule.load_from_checkpoint(path, weights_only=True).eval()
    x = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(loaded(x), module.eval()(x))
    assert loaded.hparams.net["base_filters"] == 4


def test_plateau_schedule_steps_only_on_epochs_that_validate(tiny_dataset: Path) -> None:
    """With validation every 2nd epoch, ReduceLROnPlateau (which reads val/loss) steps on those
    epochs only, instead of failing on the epochs without a val/loss."""
    plateau = {
        "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
        "_partial_": True,
        "mode": "min",
        "factor": 0.5,
        "patience": 0,
    }
    module = make_module(scheduler=plateau)
    trainer = L.Trainer(
        max_epochs=4,
        check_val_every_n_epoch=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=LungDataModule(str(tiny_dataset), image_size=32, batch_size=4))
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.frequency == 2 and scheduler.scheduler.last_epoch == 2  # epochs 2 and 4


def test_deep_supervision_objective_is_the_weighted_mean_of_head_losses() -> None:
    net = {**NET, "depth": 3, "deep_supervision": True}
    module = LungSegModule(net=net, optimizer=OPT, loss=LOSS, kernel_l2=0.0, channels_last=False)
    batch = {"image": torch.rand(2, 1, 16, 16), "mask": (torch.rand(2, 1, 16, 16) > 0.5).float()}
    objective = module.training_step(batch, 0)
    logits, aux = module.net.forward_with_aux(batch["image"])
    assert [a.shape[-1] for a in aux] == [4, 8]  # 1/4 and 1/2 of the input, deepest first
    bce = nn.functional.binary_cross_entropy_with_logits
    up = [
        nn.functional.interpolate(a, size=(16, 16), mode="bilinear", align_corners=False)
        for a in aux
    ]
    by_hand = (
        bce(logits, batch["mask"])
        + 0.25 * bce(up[0], batch["mask"])
        + 0.5 * bce(up[1], batch["mask"])
    ) / 1.75
    assert objective.item() == pytest.approx(by_hand.item(), rel=1e-5)
    objective.backward()  # the aux heads are trained
    assert all(
        h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in module.net.aux_heads
    )
    # eval forward ignores the aux heads: the main logits alone, as without deep supervision
    module.eval()
    torch.testing.assert_close(
        module(batch["image"]), module.net.forward_with_aux(batch["image"])[0]
    )
    assert not LungSegModule(net=NET, optimizer=OPT, loss=LOSS).net.deep_supervision
