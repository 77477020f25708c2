"""Colour operations on image tensors: BT.601 luma, and per-channel histogram matching.

Luma serves colour preservation (inference's controls and the Gatys baseline alike); histogram
matching is the super-resolution post-processing of Johnson et al. 2016 (Sec. 4.2).
"""

from __future__ import annotations

import torch

#: BT.601 luma weights (JPEG's YCbCr); they sum to 1, which colour preservation relies on.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 luma Y of (..., 3, H, W), keeping the channel dimension: (..., 1, H, W)."""
    weights = torch.tensor(LUMA_WEIGHTS, device=rgb.device, dtype=rgb.dtype).view(3, 1, 1)
    return (rgb * weights).sum(dim=-3, keepdim=True)


def match_histogram(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Give each channel of ``image`` the histogram of the same channel of ``reference``: the
    post-processing Johnson et al. 2016 apply to super-resolved outputs (Sec. 4.2), matching the
    output's colour distribution to the low-resolution input's.

    (3, H, W) uint8, uint16 (16-bit sources), or float in [0, 1], and a (3, h, w) reference of any
    size and of any of those types -> the same dtype and shape. Works on the image's levels (8-bit
    for uint8 and float, 16-bit for uint16, so a 16-bit output keeps its depth) with a monotone
    lookup table: each level maps to the lowest reference level whose cumulative frequency reaches
    the level's mid-rank (the middle of the quantiles its pixels occupy, which keeps the mean
    unbiased)."""
    top = 65535 if image.dtype == torch.uint16 else 255

    def levels(rgb: torch.Tensor) -> torch.Tensor:
        if rgb.dtype in (torch.uint8, torch.uint16):
            whole = rgb.to(torch.int64)
            if (rgb.dtype == torch.uint16) == (top == 65535):
                return whole
            return whole * 257 if top == 65535 else (whole + 128) // 257
        return rgb.float().clamp(0, 1).mul(top).round().to(torch.int64)

    def frequencies(channel: torch.Tensor) -> torch.Tensor:
        return torch.bincount(channel.flatten(), minlength=top + 1).double() / channel.numel()

    source, target = levels(image.cpu()), levels(reference.cpu())
    out = torch.empty_like(source)
    for c in range(3):
        counts = frequencies(source[c])
        mid_rank = counts.cumsum(0) - counts / 2
        lut = torch.searchsorted(frequencies(target[c]).cumsum(0), mid_rank).clamp_(max=top)
        out[c] = lut[source[c]]
    if image.dtype in (torch.uint8, torch.uint16):
        return out.to(torch.int32).to(image.dtype)
    return out.float() / top
