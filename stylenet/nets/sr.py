"""The super-resolution network of Johnson et al. 2016 (Sec. 4.2 and supplementary material).

Layout for a factor f: c9s1-64, R64 x4, then log2(f) x u64, then c9s1-3 (x4: two upsampling
stages, x8: three). Unlike the style network there is no downsampling: the low-resolution input
is processed at its own size and upsampled inside the network. The building blocks are the style
network's (:mod:`stylenet.nets.transformer`): reflection-padded convolutions, residual blocks,
nearest x2 upsampling + 3x3 convolution (no checkerboard artefacts) and the scaled tanh that
bounds the output to [0, 1].

Normalisation defaults to none. The paper used BatchNorm (``norm="batch"`` reproduces it), but
measured here (x4, pixel loss, demo photos, 32 px patches, 1500 Adam steps, 16 channels) the same
network without normalisation reached 28.2 dB on held-out patches against 26.2 dB with BatchNorm,
whose running statistics also made validation PSNR jump by several dB between checks; Lim et al.
2017 (EDSR) removed BatchNorm from SR networks for the same reasons. InstanceNorm (the style
network's default) is worse still: it removes every image's per-channel mean and contrast after
the first layer, information that super-resolution must reproduce. Without normalisation (or with
BatchNorm in eval mode) a pixel's output does not depend on the rest of the image, so tiled
upscaling matches whole-image upscaling.
"""

from __future__ import annotations

import torch
from torch import nn

from stylenet.nets.transformer import (
    ConvNormReLU,
    ReflectConv,
    ResidualBlock,
    ScaledTanh,
    UpsampleConvNormReLU,
    check_counts,
)

FACTORS = (2, 4, 8)


class SuperResolutionNet(nn.Module):
    """Feed-forward upscaler: (B, 3, H, W) in [0, 1] -> (B, 3, factor * H, factor * W) in [0, 1].

    Any H and W work (``size_multiple`` 1), down to 5 px, the smallest side the 9x9 reflection
    padding accepts. ``channels`` is the width of every layer (64 in the paper), ``residual_blocks``
    their number (4 in the paper). Constructor arguments are primitives so model files can carry them.
    """

    size_multiple = 1
    min_size = 5

    def __init__(self, factor: int = 4, channels: int = 64, residual_blocks: int = 4,
                 norm: str = "none") -> None:
        super().__init__()
        if factor not in FACTORS:
            raise ValueError(f"model.factor must be one of {FACTORS}, got {factor}")
        check_counts({"channels": 1, "residual_blocks": 0}, {"channels": channels, "residual_blocks": residual_blocks})
        self.scale = factor
        self.config = {"factor": factor, "channels": channels, "residual_blocks": residual_blocks,
                       "norm": norm}
        self.head = ConvNormReLU(3, channels, 9, 1, norm)  # c9s1-64
        self.residuals = nn.Sequential(*(ResidualBlock(channels, norm) for _ in range(residual_blocks)))
        self.upsample = nn.Sequential(*(UpsampleConvNormReLU(channels, channels, norm)  # u64
                                        for _ in range(factor.bit_length() - 1)))
        self.tail = nn.Sequential(ReflectConv(channels, 3, 9), ScaledTanh())  # c9s1-3, no norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.upsample(self.residuals(self.head(x))))
