"""The faster training step computes the same training: the L2 term's gradient added in a hook,
fused Adam, and the memory format chosen per device and stage (docs/TRAINING-PROFILE.md)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lungseg import runtime
from lungseg.artifacts.checkpoint import TrainedModel
from lungseg.data.datamodule import LungDataModule
from lungseg.training.module import LungSegModule, conv_kernels, match_state_layout
from tests.helpers import LOSS

# The original network's shape at a test's size: 4 levels, dropout and input noise on, the
# configured Adam.
NET = {"_target_": "lungseg.models.unet.UNet", "base_filters": 8, "depth": 4}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3, "eps": 1e-7}


def step_gradients(channels_last: bool, l2: str) -> dict[str, torch.Tensor]:
    """The gradients of one training step on a fixed batch, the L2 term's from backpropagating it
    through the loss (``l2="loss"``, the Keras form), added by ``on_before_optimizer_step``
    (``"hook"``, the training path), or left out (``"none"``)."""
    torch.manual_seed(0)
    module = LungSegModule(
        net=NET, optimizer=ADAM, loss=LOSS, kernel_l2=0.01, channels_last=channels_last
    )
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(2, 1, 32, 32, generator=g),
        "mask": (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float(),
    }
    torch.manual_seed(100)  # the same noise and dropout in every variant
    if l2 == "loss":
        (module.loss_fn(module(batch["image"]), batch["mask"]) + module.l2_penalty()).backward()
    else:
        module.training_step(batch, 0).backward()
        if l2 == "hook":
            module.on_before_optimizer_step(module.configure_optimizers()["optimizer"])
    return {name: p.grad for name, p in module.net.named_parameters()}


@pytest.mark.parametrize("channels_last", [False, True])
def test_l2_hook_gives_the_gradient_of_the_keras_loss_term(channels_last: bool) -> None:
    """One step's gradients, not parameters after several steps: a rounding-sized difference can
    flip a max-pool or ReLU decision a few steps later, and which host's kernels do so is luck."""
    reference = step_gradients(channels_last, "loss")
    hook, none = step_gradients(channels_last, "hook"), step_gradients(channels_last, "none")
    for name, expected in reference.items():
        scale = expected.abs().max().item()
        assert (hook[name] - expected).abs().max().item() <= 1e-5 * scale, name
        assert same_layout(hook[name], expected), name  # the layout contract fused Adam relies on
    # the tolerance sees the L2 term: without it the kernels' gradients are far off, and 1 % of it
    # is seen too
    kernels = [n for n in reference if n.endswith("weight") and reference[n].ndim == 4]
    assert all(
        (none[n] - reference[n]).abs().max() > 1e-3 * reference[n].abs().max() for n in kernels
    )


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_adam_steps_like_the_for_loop_adam(channels_last: bool) -> None:
    """Four Adam steps on the same fixed gradients, the parameters in the training layout: fused
    equals for-loop to fp32 rounding (torch's fused CPU Adam once misread non-contiguous strides).
    """
    torch.manual_seed(0)
    net = LungSegModule(net=NET, optimizer=ADAM, loss=LOSS, channels_last=channels_last).net
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    grads = [{n: torch.randn_like(p) for n, p in net.named_parameters()} for _ in range(4)]
    results = []
    for fused in (False, True):
        params = {n: nn.Parameter(p.detach().clone()) for n, p in net.named_parameters()}
        optimizer = instantiate_adam(list(params.values()), fused)
        for step in grads:
            for n, p in params.items():
                p.grad = step[n].clone()
            optimizer.step()
        results.append(params)
    for n, p in results[0].items():
        # lr 1e-3: four steps move each entry ~4e-3
        assert (results[1][n] - p).abs().max().item() <= 1e-6, n
        assert same_layout(results[1][n], p), n
    assert any(p.stride() != p.contiguous().stride() for p in results[1].values()) == channels_last


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same strides wherever a dimension has more than one element (a size-1 dimension's stride
    is free)."""
    return a.shape == b.shape and all(
        x == y for x, y, n in zip(a.stride(), b.stride(), a.shape, strict=True) if n > 1
    )


def instantiate_adam(params: list[nn.Parameter], fused: bool) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=ADAM["lr"], eps=ADAM["eps"], fused=fused)


def test_both_layouts_compute_the_same_gradients() -> None:
    """NCHW (training on AVX2) and channels_last run the same operations: the gradients of a step
    agree to fp32 rounding (Adam's first steps, about lr * sign(g), turn such rounding into lr-sized
    differences where g ~ 0, which is why parameters are not compared across layouts)."""
    grads = []
    for channels_last in (True, False):
        torch.manual_seed(0)
        module = LungSegModule(net=NET, optimizer=ADAM, loss=LOSS, channels_last=channels_last)
        g = torch.Generator().manual_seed(0)
        batch = {
            "image": torch.rand(2, 1, 32, 32, generator=g),
            "mask": (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float(),
        }
        torch.manual_seed(100)
        module.training_step(batch, 0).backward()
        module.on_before_optimizer_step(module.configure_optimizers()["optimizer"])
        grads.append({name: p.grad for name, p in module.net.named_parameters()})
    for name, g in grads[1].items():
        assert (grads[0][name] - g).abs().max() <= 1e-3 * g.abs().max(), name


def test_l2_gradient_is_the_penalty_gradient_also_where_a_kernel_has_none() -> None:
    module = LungSegModule(net=NET, optimizer=ADAM, loss=LOSS, kernel_l2=0.01, channels_last=True)
    module.l2_penalty().backward()
    expected = [k.grad.clone() for k in conv_kernels(module.net)]
    module.zero_grad(set_to_none=True)
    kernels = conv_kernels(module.net)
    # one kernel already has a gradient, the others none
    kernels[0].grad = torch.ones_like(kernels[0])
    module.add_l2_gradient()
    torch.testing.assert_close(kernels[0].grad, expected[0] + 1)
    for k, e in zip(kernels[1:], expected[1:], strict=True):
        torch.testing.assert_close(k.grad, e)
        assert k.grad.stride() == k.stride()  # the layout contract fused Adam relies on
    module.zero_grad(set_to_none=True)
    module.add_l2_gradient(scale=1024.0)  # gradients still scaled by a GradScaler
    torch.testing.assert_close(kernels[1].grad, 1024 * expected[1])


def test_optimizer_state_takes_the_parameters_layout() -> None:
    """torch's fused CPU Adam updates the wrong elements when state and parameter strides differ (a
    checkpoint trained channels_last, resumed in NCHW); match_state_layout is what on_train_start
    does about it."""
    conv = nn.Conv2d(3, 4, 3)
    grad = torch.randn_like(conv.weight)
    results = []
    for fused in (False, True):
        p = nn.Parameter(conv.weight.detach().clone())
        optimizer = torch.optim.Adam([p], lr=0.1, fused=fused)
        p.grad = grad.clone()
        optimizer.step()
        for key in ("exp_avg", "exp_avg_sq"):  # as restored from a channels_last checkpoint
            optimizer.state[p][key] = optimizer.state[p][key].contiguous(
                memory_format=torch.channels_last
            )
        assert match_state_layout(optimizer) == 2 and match_state_layout(optimizer) == 0
        p.grad = grad.clone()
        optimizer.step()
        results.append(p.detach())
    torch.testing.assert_close(results[1], results[0])


def test_auto_layout_trains_nchw_only_on_a_cpu_without_avx512(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for avx512, train_cpu in ((False, False), (True, True)):
        monkeypatch.setattr(runtime, "cpu_has_avx512", lambda avx512=avx512: avx512)
        assert runtime.use_channels_last("auto", "cpu", training=True) is train_cpu
        assert runtime.use_channels_last("auto", "cpu", training=False) is True
        assert runtime.use_channels_last("auto", "cuda", training=True) is True
    assert runtime.use_channels_last(False, "cuda", training=False) is False  # as set
    with pytest.raises(runtime.LungsegError, match="module.channels_last"):
        runtime.use_channels_last("yes")
    # a checkpoint trained with auto is run channels_last at inference; one trained with a setting,
    # as set
    assert TrainedModel(nn.Identity(), None, {"channels_last": "auto"}).channels_last is True  # type: ignore[arg-type]
    assert TrainedModel(nn.Identity(), None, {"channels_last": False}).channels_last is False  # type: ignore[arg-type]


def test_fit_lays_the_net_out_for_the_stage(
    tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "cpu_has_avx512", lambda: False)
    module = LungSegModule(net={**NET, "depth": 2}, optimizer=ADAM, loss=LOSS)
    layouts = []

    def channels_last(pl_module: L.LightningModule) -> bool:
        return pl_module.net.encoders[1][0].weight.is_contiguous(memory_format=torch.channels_last)

    class Layout(L.Callback):
        def on_train_batch_start(
            self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object
        ) -> None:
            layouts.append(("fit", channels_last(pl_module)))

        def on_test_batch_start(
            self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object
        ) -> None:
            layouts.append(("test", channels_last(pl_module)))

    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        limit_test_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[Layout()],
    )
    data = LungDataModule(str(tiny_dataset), image_size=32, batch_size=4)
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data)
    assert layouts == [("fit", False), ("test", True)]
