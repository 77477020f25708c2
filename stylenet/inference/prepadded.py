"""One pass of a :class:`~stylenet.nets.TransformerNet` over frames of one size, each layer writing
its output straight into the padded input of the next, in buffers kept from frame to frame.

Eager PyTorch runs every layer of the network as separate passes over its activation: convolution,
InstanceNorm, ReLU, and then reflection padding, which copies the whole map once more only to add
a border of a pixel or four. On a CPU these passes, not the convolutions, take most of a frame
(README, "Speed"). Here the ReLU (or a residual block's sum) writes each normalised layer into the
interior of the next layer's input buffer, and the border is then filled from the interior's edge
rows and columns: the padding costs a few rows instead of a pass, and the ReLU no pass of its own.
The rewritten kernels (:class:`~stylenet.fastpath.SubpixelConv`,
:class:`~stylenet.fastpath.DepthToSpaceConv`) are derived and cast to the precision once per frame
size, where autocast recasts every weight on every call.

The same kernels run on the same values in the same order as in the one pass
(:func:`~stylenet.inference.geometry.forward`), so every frame is bit for bit what the one pass
gives (tests/test_frames.py). Each buffer has the memory layout in which the one pass hands that
layer its input, found once per frame size by running the one pass on a blank frame: the layout
decides which InstanceNorm kernel runs, and so the order in which it sums. A buffer is handed to a
later layer of the same shape once nothing reads it any more, so the residual blocks share two buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stylenet.fastpath import DepthToSpaceConv, SubpixelConv, is_channels_last
from stylenet.inference.geometry import (
    PRECISIONS,
    autocast,
    crop_to,
    forward,
    min_size,
    pad_to_multiple,
    size_multiple,
)
from stylenet.inference.layerwise import Layer, network_layers


@dataclass
class Step:
    """One layer of the pass: its padded input buffer, and its convolution on that buffer."""

    layer: Layer
    convolve: Callable[[torch.Tensor], torch.Tensor]  # padded input -> (1, C_out, h_out, w_out)
    buffer: torch.Tensor     # (1, C_in, h + 2 pad (+ extra), w + 2 pad (+ extra)), in the one pass's layout
    pad: int
    replicate: bool          # edge replication (a sub-pixel upsampling's input), else reflection
    height: int              # of the interior: the layer's unpadded input
    width: int

    @property
    def interior(self) -> torch.Tensor:
        """The unpadded input: a view of the buffer."""
        return self.buffer[..., self.pad: self.pad + self.height, self.pad: self.pad + self.width]

    def fill_border(self) -> None:
        """Pad the interior in place as ``F.pad`` would: rows first, then whole columns, which so
        also fills the corners (reflected, or replicated, along both axes)."""
        buffer, pad, height, width = self.buffer, self.pad, self.height, self.width
        rows, columns = slice(pad, pad + width), slice(0, height + 2 * pad)
        for r in range(1, pad + 1):
            top, bottom = (pad, pad + height - 1) if self.replicate else (pad + r, pad + height - 1 - r)
            buffer[..., pad - r, rows] = buffer[..., top, rows]
            buffer[..., pad + height - 1 + r, rows] = buffer[..., bottom, rows]
        for r in range(1, pad + 1):
            left, right = (pad, pad + width - 1) if self.replicate else (pad + r, pad + width - 1 - r)
            buffer[..., columns, pad - r] = buffer[..., columns, left]
            buffer[..., columns, pad + width - 1 + r] = buffer[..., columns, right]


class PrepaddedNetwork:
    """A TransformerNet with InstanceNorm (as :func:`~stylenet.inference.layerwise.network_layers`
    reads it) prepared for (1, 3, ``height``, ``width``) inputs, sides multiples of the network's
    and at least its ``min_size``; call it on such a batch for the float32 output."""

    def __init__(self, net: nn.Module, height: int, width: int, precision: str, device: torch.device) -> None:
        layers = network_layers(net)
        if layers is None:
            raise ValueError(f"a PrepaddedNetwork needs a TransformerNet with InstanceNorm, got {type(net).__name__}")
        self.size = (height, width)
        dtype = PRECISIONS[precision]
        # buffers no later layer reads, by shape and padding (a residual sum may then be written over its
        # own input: the same interior, element for element)
        free: dict[tuple[int, ...], list[torch.Tensor]] = {}

        def buffer(shape: tuple[int, ...], pad: int, channels_last: bool) -> torch.Tensor:
            if free.get((*shape, pad, channels_last)):
                return free[(*shape, pad, channels_last)].pop()
            layout = torch.channels_last if channels_last else torch.contiguous_format
            return torch.zeros(shape, dtype=dtype, device=device).contiguous(memory_format=layout)

        self.steps: list[Step] = []
        layouts = _input_layouts(net, layers, height, width, precision, device)
        with torch.inference_mode(), autocast(device, precision):  # kernels derived as the one pass derives them
            for layer, channels_last in zip(layers, layouts, strict=True):
                convolve, pad, extra_h, extra_w = _convolution(layer, height, width, dtype)
                shape = (1, layer.conv2d.in_channels, height + 2 * pad + extra_h, width + 2 * pad + extra_w)
                step = Step(layer, convolve, buffer(shape, pad, channels_last), pad, layer.upsamples, height, width)
                self.steps.append(step)
                # the buffer this step's output overwrites may be one its input no longer needs
                done = self.steps[-2:] if layer.residual else [] if layer.block_start else self.steps[-1:]
                for step in done:
                    key = (*step.buffer.shape, step.pad, is_channels_last(step.buffer))
                    free.setdefault(key, []).append(step.buffer)
                height, width = layer.output_side(height), layer.output_side(width)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) float32 -> the network's float32 (1, 3, H, W)."""
        first = self.steps[0]
        first.interior.copy_(batch)  # the one pass casts the padded input as its first convolution reads it
        first.fill_border()
        stream: torch.Tensor | None = None  # the residual block's input
        for step, following in zip(self.steps, self.steps[1:], strict=False):
            layer, norm = step.layer, step.layer.norm
            assert norm is not None  # network_layers: every layer but the last has one
            if layer.block_start:
                stream = step.interior
            out = F.batch_norm(step.convolve(step.buffer), None, None, norm.weight, norm.bias, training=True,
                               momentum=0.0, eps=norm.eps)
            if layer.residual and stream is not None:
                torch.add(stream, out, out=following.interior)
            elif layer.relu:
                torch.clamp_min(out, 0, out=following.interior)
            else:
                following.interior.copy_(out)
            following.fill_border()
        last = self.steps[-1]
        out = last.convolve(last.buffer)
        if last.layer.final is not None:
            out = last.layer.final(out)
        return out.float()


def _convolution(layer: Layer, height: int, width: int, dtype: torch.dtype
                 ) -> tuple[Callable[[torch.Tensor], torch.Tensor], int, int, int]:
    """(the convolution of ``layer`` on its padded input, the padding, extra rows, extra columns)
    for an input of ``height`` x ``width``, its kernel and bias cast to ``dtype`` once."""
    conv = layer.conv
    if isinstance(conv, SubpixelConv):
        weight, bias = conv.kernel(conv.conv.weight).to(dtype), _cast(conv.conv.bias, dtype)
        return lambda x: F.conv_transpose2d(x, weight, bias, stride=2, padding=3), 1, 0, 0
    if isinstance(conv, DepthToSpaceConv):
        factor, pad = conv.factor, conv.pad
        weight = conv.kernel().to(dtype)
        bias = None if conv.conv.bias is None else conv.conv.bias.repeat_interleave(factor**2).to(dtype)
        # rows and columns beyond the padding up to a multiple of the factor are read only by outputs cropped here
        extra_h, extra_w = (-(height + 2 * pad)) % factor, (-(width + 2 * pad)) % factor

        def depth_to_space(x: torch.Tensor) -> torch.Tensor:
            return F.pixel_shuffle(F.conv2d(x, weight, bias, stride=factor), factor)[..., :height, :width]
        return depth_to_space, pad, extra_h, extra_w
    conv2d = layer.conv2d
    weight, bias = conv2d.weight.to(dtype), _cast(conv2d.bias, dtype)
    return lambda x: F.conv2d(x, weight, bias, stride=conv2d.stride), conv2d.kernel_size[0] // 2, 0, 0


def _input_layouts(net: nn.Module, layers: list[Layer], height: int, width: int, precision: str,
                   device: torch.device) -> list[bool]:
    """Per layer, whether the one pass feeds its convolution channels_last, as found by running it
    once on a blank input: the layout an input arrives in decides the layout of the convolution's
    output (a network's first layer reads the NCHW image, for one), and with it which InstanceNorm
    kernel runs and in what order it sums."""
    found: dict[int, bool] = {}

    def record(index: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        return lambda _module, args: found.__setitem__(index, is_channels_last(args[0]))

    hooks = [layer.conv.register_forward_pre_hook(record(index)) for index, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            forward(net, torch.zeros(1, 3, height, width, device=device), precision)
    finally:
        for hook in hooks:
            hook.remove()
    return [found.get(index, True) for index in range(len(layers))]


def _cast(bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if bias is None else bias.to(dtype)


def prepadded_forward(net: nn.Module, precision: str, device: torch.device
                      ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``forward(net, batch, precision)`` for (1, 3, H, W) frames, through a :class:`PrepaddedNetwork`
    per frame size (padded to the network's multiple, output cropped, as the one pass does); None
    where it does not apply: networks other than a TransformerNet with InstanceNorm, and devices
    other than the CPU, where it was measured (``stylenet-bench --sections frames``), and precisions
    other than fp32 and bf16."""
    if device.type != "cpu" or precision not in ("fp32", "bf16") or network_layers(net) is None:
        return None
    multiple, smallest = size_multiple(net), min_size(net)
    prepared: PrepaddedNetwork | None = None

    def run(batch: torch.Tensor) -> torch.Tensor:
        nonlocal prepared
        height, width = batch.shape[-2:]
        padded = pad_to_multiple(batch, multiple, smallest)
        if prepared is None or prepared.size != tuple(padded.shape[-2:]):
            prepared = PrepaddedNetwork(net, *padded.shape[-2:], precision, device)
        return crop_to(prepared(padded), height, width)
    return run
