"""The U-Net: shapes, size, where the noise acts."""

from __future__ import annotations

import pytest
import torch

from lungseg.models.unet import GaussianNoise, UNet


@pytest.mark.parametrize("decoder", ["transpose", "upsample"])
@pytest.mark.parametrize("shape", [(64, 64), (96, 128), (32, 160)])
def test_output_is_one_logit_map_of_the_input_size(decoder: str, shape: tuple[int, int]) -> None:
    net = UNet(base_filters=4, decoder=decoder).eval()
    out = net(torch.rand(2, 1, *shape))
    assert out.shape == (2, 1, *shape)


def test_depth_and_width_are_configurable() -> None:
    net = UNet(base_filters=8, depth=2).eval()
    assert net(torch.rand(1, 1, 20, 20)).shape == (1, 1, 20, 20)
    assert net.bottleneck[0].out_channels == 32


def test_parameter_count_at_defaults_matches_the_original() -> None:
    for decoder in ("transpose", "upsample"):
        assert sum(p.numel() for p in UNet(decoder=decoder).parameters()) == 7_765_409


def test_bad_size_and_decoder_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        UNet(base_filters=4)(torch.rand(1, 1, 40, 40))
    with pytest.raises(ValueError, match="model.decoder"):
        UNet(decoder="bilinear")  # type: ignore[arg-type]


def test_noise_acts_in_training_only() -> None:
    noise = GaussianNoise(0.1)
    x = torch.zeros(1, 1, 64, 64)
    noisy = noise.train()(x)
    assert noisy.std().item() == pytest.approx(0.1, rel=0.1)
    assert torch.equal(noise.eval()(x), x)
    net = UNet(base_filters=4, dropout=0.0, noise_std=0.5).eval()
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(net(x), net(x))  # eval: deterministic
    net.train()
    assert not torch.equal(net(x), net(x))
