"""Single-pass inference: any image size through a network that needs multiples of 4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right up to multiples of ``multiple``: reflection where the
    image is large enough (no dark border for the network to react to), edge replication for tiny
    images whose side is smaller than the padding."""
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)


@torch.inference_mode()
def run_network(net: nn.Module, image: torch.Tensor, multiple: int = 4) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> the network's (3, H', W') output, cropped back to the input's size
    (times the network's ``scale``, 1 for style networks)."""
    height, width = image.shape[-2:]
    scale = getattr(net, "scale", 1)
    output = net(pad_to_multiple(image.unsqueeze(0), multiple))  # (1, 3, H'', W'')
    return output[0, :, : height * scale, : width * scale].float()
