"""The seed's enhanced U-Net: input noise, conv-BN encoder with spatial dropout, and a
skip-connected decoder.

Layer by layer it follows the original Keras notebook (``Conv2D(relu)`` then ``BatchNormalization``,
``MaxPooling2D`` then ``SpatialDropout2D``); the output is one channel of **logits** (the sigmoid
lives in the loss and the metrics, which keeps mixed precision stable).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Decoder = Literal["transpose", "upsample"]


class GaussianNoise(nn.Module):
    """Additive zero-mean Gaussian noise in training only (Keras ``GaussianNoise``)."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.std > 0:
            return x + torch.randn_like(x) * self.std
        return x


class ConvReLUBN(nn.Sequential):
    """Two 3x3 'same' convolutions, each followed by ReLU and BatchNorm (the notebook's order)."""

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float = 0.1) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            # eps 1e-3 as Keras; momentum in PyTorch's convention (Keras' 0.99 is 0.01 here).
            layers += [
                nn.Conv2d(c_in, out_channels, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(out_channels, eps=1e-3, momentum=bn_momentum),
            ]
        super().__init__(*layers)


class Up(nn.Module):
    """Double the resolution: a 2x2 stride-2 transposed conv (README) or upsample + 2x2 conv + ReLU
    (notebook)."""

    def __init__(self, in_channels: int, out_channels: int, mode: Decoder) -> None:
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        elif mode == "upsample":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(in_channels, out_channels, 2, padding="same"),
                nn.ReLU(inplace=True),
            )
        else:
            raise ValueError(f"model.decoder must be 'transpose' or 'upsample', not {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class DecoderBlock(nn.Module):
    """Upsample, concatenate the encoder's skip output, then two conv-BN layers."""

    def __init__(
        self, in_channels: int, out_channels: int, mode: Decoder, bn_momentum: float = 0.1
    ) -> None:
        super().__init__()
        self.up = Up(in_channels, out_channels, mode)
        self.conv = ConvReLUBN(2 * out_channels, out_channels, bn_momentum)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """U-Net with ``depth`` levels of ``base_filters * 2**i`` channels and a bottleneck of twice the
    deepest."""

    def __init__(
        self,
        in_channels: int = 1,
        base_filters: int = 32,
        depth: int = 4,
        dropout: float = 0.5,
        noise_std: float = 0.1,
        decoder: Decoder = "transpose",
        bn_momentum: float = 0.1,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        widths = [base_filters * 2**i for i in range(depth)]
        self.noise = GaussianNoise(noise_std)
        self.encoders = nn.ModuleList()
        c_in = in_channels
        for width in widths:
            self.encoders.append(ConvReLUBN(c_in, width, bn_momentum))
            c_in = width
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout2d(dropout)  # Keras SpatialDropout2D: drops whole feature maps
        self.bottleneck = ConvReLUBN(widths[-1], 2 * widths[-1], bn_momentum)
        self.decoders = nn.ModuleList(
            DecoderBlock(2 * width, width, decoder, bn_momentum) for width in reversed(widths)
        )
        self.head = nn.Conv2d(widths[0], 1, 1)
        # Deep supervision: a 1x1 logit head on each coarser decoder output (deepest first), trained
        # through forward_with_aux; forward() never uses them, so inference and export are
        # unchanged.
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(width, 1, 1) for width in list(reversed(widths))[:-1])
            if deep_supervision
            else nn.ModuleList()
        )
        self.divisor = 2**depth

    @property
    def deep_supervision(self) -> bool:
        """Whether the net has auxiliary heads for :meth:`forward_with_aux`."""
        return len(self.aux_heads) > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images in [0, 1] -> (N, 1, H, W) logits; H and W must be multiples of
        2**depth."""
        return self._run(x, aux=False)[0]

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and, with ``deep_supervision``, the auxiliary logits at 1/2**(depth-1) ... 1/2 of
        the input size."""
        return self._run(x, aux=True)

    def _run(self, x: torch.Tensor, aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.shape[-2] % self.divisor or x.shape[-1] % self.divisor:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} must be a multiple of {self.divisor}"
            )
        x = self.noise(x)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.dropout(self.pool(x))
        x = self.bottleneck(x)
        aux_logits: list[torch.Tensor] = []
        for i, (decoder, skip) in enumerate(zip(self.decoders, reversed(skips), strict=True)):
            x = decoder(x, skip)
            if aux and i < len(self.aux_heads):
                aux_logits.append(self.aux_heads[i](x))
        return self.head(x), aux_logits
