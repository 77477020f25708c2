"""Network geometry: any image size in, a valid network input through, the same size (times
``scale``) out, in one function every way of running a model shares.

A network declares

* ``size_multiple`` (default 1): H and W of its input must be multiples of it (4 for
  :class:`~stylenet.nets.TransformerNet`: two stride-2 convolutions, two x2 upsamplings);
* ``min_size`` (default ``max(8, 2 * size_multiple)``): the smallest input side its reflection
  pads accept (a 9x9 reflection pad needs 5 px; TransformerNet's 3x3 pads at 1/4 scale need 8 px);
* ``scale`` (default 1): output side / input side, e.g. 4 for a x4 super-resolution network.

Inputs are padded at the bottom/right to the network's multiple (reflection, so the network sees
image-like content, not a dark border; edge replication for inputs smaller than the padding, down
to 1x1) and the output is cropped back. :func:`padded_forward` is the one geometry of
:class:`~stylenet.inference.InferenceModel`, its tiles and statistics passes, and the ONNX and
``.pt2`` exports: the padding enters InstanceNorm's statistics, so they must all pad alike.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stylenet.errors import StylenetError
from stylenet.image import unit_float
from stylenet.nets.transformer import ConditionalInstanceNorm2d, TransformerNet

#: ``--precision`` names -> autocast dtypes (fp32 runs without autocast).
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def size_multiple(net: nn.Module) -> int:
    """H and W of the network's input must be multiples of this."""
    return int(getattr(net, "size_multiple", 1))


def min_size(net: nn.Module) -> int:
    """The smallest input side the network's reflection pads accept (see the module docstring)."""
    return int(getattr(net, "min_size", max(8, 2 * size_multiple(net))))


def output_scale(net: nn.Module) -> int:
    """Output side / input side: 1 for style networks, 2/4/8 for super-resolution networks."""
    return int(getattr(net, "scale", 1))


def check_size(size: object) -> None:
    """A requested output size: (height, width) in whole pixels >= 1, else one line (``size=30``
    was a TypeError, ``(True, 40)`` a picture one pixel high)."""
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(
            isinstance(side, numbers.Integral) and not isinstance(side, bool) and side >= 1 for side in size):
        raise StylenetError(f"size must be (height, width) in whole pixels >= 1, got {size!r}")


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def padded_pixels(net: nn.Module, height: int, width: int) -> int:
    """How many pixels the network runs on for a ``height`` x ``width`` input, once
    :func:`pad_to_multiple` has padded it: what a memory budget must count (a 1 x 20000 strip runs
    as 8 x 20000)."""
    multiple, smallest = size_multiple(net), min_size(net)
    return round_up(max(height, smallest), multiple) * round_up(max(width, smallest), multiple)


def pad_to_multiple(images: torch.Tensor, multiple: int, min_size: int = 1) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right to multiples of ``multiple`` and at least ``min_size``.

    Sides of at least ``max(min_size, multiple)`` (every size the ONNX and ``.pt2`` exports accept)
    are reflected by ``(-side) % multiple`` pixels, 0 when the side is already a multiple: padding
    enters the InstanceNorm statistics, so this one formula, with no branch on the remainder, is
    what every way of running a model uses (:func:`padded_forward`), and torch.export keeps H and W
    dynamic through it. Smaller images (eager runs only) are padded up to ``min_size`` too:
    reflection where it fits (no dark border for the network to react to), edge replication for
    sides smaller than the padding (reflection cannot pad more than side - 1 pixels), so even a 1x1
    input gets a valid network input.
    """
    height, width = images.shape[-2:]
    floor = max(min_size, multiple)
    if height >= floor and width >= floor:  # provably true while exporting (AnySizeNetwork checks it)
        if multiple <= 1:
            return images
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if isinstance(pad_h, int) and isinstance(pad_w, int) and pad_h == pad_w == 0:
            return images  # eager and aligned: the zero pad would only copy (symbolic sizes never get here)
        return F.pad(images, (0, pad_w, 0, pad_h), mode="reflect")
    pad_h = round_up(max(height, min_size), multiple) - height
    pad_w = round_up(max(width, min_size), multiple) - width
    if pad_h == 0 and pad_w == 0:
        return images
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)


def crop_to(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The top-left ``height`` x ``width`` of (..., H', W'), H' >= height, W' >= width: what undoes
    :func:`pad_to_multiple` on a network's output.

    Eager sizes give a view. Symbolic sizes (torch.export) give negative constant padding, i.e. a
    cropped copy: a slice is contiguous only when nothing is cut, and torch.export would specialise
    the program to whichever case its example input had (a 64 px example then refuses 30 px)."""
    if isinstance(height, int) and isinstance(width, int):
        return images[..., :height, :width]
    return F.pad(images, (0, width - images.shape[-1], 0, height - images.shape[-2]))


def padded_forward(net: nn.Module, images: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
    """``net`` on (B, C, H, W) of any size: :func:`pad_to_multiple`, run, :func:`crop_to` the
    input's size times the network's ``scale``. ``style``: the blend weights a network of several
    styles takes (:class:`~stylenet.nets.TransformerNet`), passed on when given.

    The single geometry of every way a model runs: :class:`InferenceModel` (``stylenet-stylize``,
    the notebook API, tiles, statistics passes) and the ONNX and ``.pt2`` exports, whose wrapper
    (:class:`stylenet.export.AnySizeNetwork`) calls this function. InstanceNorm statistics include
    the padding, so different padding would mean different pixels on the same image."""
    height, width = images.shape[-2:]
    scale = output_scale(net)
    padded = pad_to_multiple(images, size_multiple(net), min_size(net))
    output = net(padded) if style is None else net(padded, style)
    return crop_to(output, height * scale, width * scale)


def input_offset(net: nn.Module, image: torch.Tensor) -> torch.Tensor | None:
    """The per-channel mean of the (3, H, W) or (1, 3, H, W) ``image`` as (3, 1, 1) float32, for every
    input of ``net`` made from the image to be taken less it; None for networks where that would
    change the result (any but a TransformerNet whose first layer is instance-normalised).

    InstanceNorm removes any per-channel constant from its input, and a convolution of a
    reflection-padded input turns a per-channel constant offset of the input into one of the
    output, so the first layer, and with it the whole network, computes the same image from
    ``x - mean`` as from ``x``. It computes it more precisely: a bright or dark photo of low
    contrast gives the first convolution outputs whose per-channel mean is many times their spread,
    and bf16 keeps 8 bits of the whole value; an input around 0 leaves them for the spread. Every
    pass over one image (tiles, statistics, bands) must take the same offset."""
    first = getattr(net, "encoder", [None])[0]
    if not (isinstance(net, TransformerNet) and isinstance(first, nn.Sequential) and len(first) > 1
            and isinstance(first[1], (nn.InstanceNorm2d, ConditionalInstanceNorm2d))):
        return None
    # uint8 levels (stylenet.image.compact) as the float image they stand for: the same mean, bit for bit
    return unit_float(image).reshape(3, -1).mean(dim=1, dtype=torch.float32).reshape(3, 1, 1)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``precision`` on ``device``; nothing for fp32."""
    dtype = PRECISIONS[precision]
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def forward(net: nn.Module, batch: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """(B, 3, H, W) on the network's device -> float32 (B, 3, H * scale, W * scale): pad, run, crop."""
    with autocast(batch.device, precision):
        output = padded_forward(net, batch)
    return output.float()


@torch.inference_mode()
def run_network(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> the network's float32 (3, H * scale, W * scale) output in one pass, on
    the network's device. For previews of small images; :class:`InferenceModel` is the full tool."""
    device = next(net.parameters()).device
    batch = image.to(device, torch.float32).unsqueeze(0)
    offset = input_offset(net, batch)
    return forward(net, batch if offset is None else batch - offset.to(device))[0]
