"""The image transformation network of Johnson et al. 2016 (supplementary material, Table 1).

Layout: c9s1-32, d64, d128, R128 x5, u64, u32, c9s1-3, with the two changes everyone adopted
after the paper: Instance Normalization (Ulyanov et al. 2016) instead of BatchNorm, and reflection
padding on every convolution instead of 40 px of input padding. Upsampling is nearest x2 followed
by a 3x3 convolution, never a transposed convolution, which avoids checkerboard artefacts
(Odena et al. 2016, "Deconvolution and Checkerboard Artifacts").
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("instance", "batch", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Instance norm (affine, no running statistics), batch norm, or none (an identity: what
    super-resolution networks train best with, see :mod:`stylenet.nets.sr`), by name."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"model.norm must be one of {NORMS}, got {kind!r}")


class ReflectConv(nn.Sequential):
    """KxK convolution with reflection padding, so the output keeps size H/stride x W/stride
    without the dark borders that zero padding leaves in stylised images."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(
            nn.ReflectionPad2d(kernel_size // 2),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Autocast runs reflection padding in fp32: a bf16 activation would be copied at twice the
        # width only for the convolution to cast it back. Padding is exact in any dtype, so it runs
        # in the input's (1.3x faster inference, and training, in bf16 on a CPU; stylenet-bench).
        with torch.autocast(x.device.type, enabled=False):
            x = self[0](x)
        return self[1](x)


class ConvNormReLU(nn.Sequential):
    """The paper's cKsS-N / dN block: convolution, normalisation, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, norm: str) -> None:
        super().__init__(
            ReflectConv(in_channels, out_channels, kernel_size, stride),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """RN: two 3x3 conv+norm layers with an identity shortcut (He et al. 2016, as in the paper's
    supplementary Fig. 1, with padding so input and output sizes match)."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormReLU(channels, channels, 3, 1, norm),
            ReflectConv(channels, channels, 3),
            make_norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpsampleConvNormReLU(nn.Sequential):
    """uN: nearest-neighbour x2 upsampling then a 3x3 conv block (replaces the paper's
    fractionally-strided convolution; same output size, no checkerboard)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            ConvNormReLU(in_channels, out_channels, 3, 1, norm),
        )


class ScaledTanh(nn.Module):
    """Maps the last conv to [0, 1] with 0.5 * (tanh(x) + 1): the paper's scaled tanh, rescaled
    from its [0, 255] to our [0, 1] image range, so every output is a valid image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (torch.tanh(x) + 1.0)


class TransformerNet(nn.Module):
    """Feed-forward style network: (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1].

    H and W must be multiples of 4 (two stride-2 downsamplings, two x2 upsamplings); the
    inference code pads other sizes. ``channels`` is the width of the first layer (32 in the
    paper, 16 for the half-width variant of the released InstanceNorm models); the deeper layers
    use 2x and 4x that width. Constructor arguments are primitives so checkpoints can carry them.
    """

    size_multiple = 4

    def __init__(self, channels: int = 32, residual_blocks: int = 5, norm: str = "instance") -> None:
        super().__init__()
        if channels < 1 or residual_blocks < 0:
            raise ValueError(f"model.channels must be >= 1 and model.residual_blocks >= 0, got "
                             f"{channels} and {residual_blocks}")
        c1, c2, c3 = channels, 2 * channels, 4 * channels
        self.config = {"channels": channels, "residual_blocks": residual_blocks, "norm": norm}
        self.encoder = nn.Sequential(
            ConvNormReLU(3, c1, 9, 1, norm),  # c9s1-32
            ConvNormReLU(c1, c2, 3, 2, norm),  # d64
            ConvNormReLU(c2, c3, 3, 2, norm),  # d128
        )
        self.residuals = nn.Sequential(*(ResidualBlock(c3, norm) for _ in range(residual_blocks)))
        self.decoder = nn.Sequential(
            UpsampleConvNormReLU(c3, c2, norm),  # u64
            UpsampleConvNormReLU(c2, c1, norm),  # u32
            ReflectConv(c1, 3, 9),  # c9s1-3, no norm
            ScaledTanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.residuals(self.encoder(x)))
