"""One pass of a :class:`~stylenet.nets.TransformerNet`, each layer writing its output straight into
the padded input of the next: over frames of one size in buffers kept from frame to frame, or over
one photo in buffers dropped after it.

Eager PyTorch runs every layer of the network as separate passes over its activation: convolution,
InstanceNorm, ReLU, and then reflection padding, which copies the whole map once more only to add
a border of a pixel or four. On a CPU these passes take about as long as the convolutions
(docs/experiments.md, "Frames: directions measured"). Here the ReLU (or a residual block's sum)
writes each normalised layer into the interior of the next layer's input buffer, and the border is
then filled from the interior's edge rows and columns: the padding costs a few rows instead of a
pass, and the ReLU no pass of its own.

Each convolution and InstanceNorm is the network's own module, called under the same autocast, so
the same kernels run on the same values in the same order as in the one pass
(:func:`~stylenet.inference.geometry.forward`), and every frame is bit for bit what the one pass
gives (tests/test_frames.py). Each buffer has the memory layout in which the one pass hands that
layer its input, found once per stream by running the one pass on a small blank frame: the layout
decides which InstanceNorm kernel runs, and so the order in which it sums. A buffer is handed to a
later layer of the same shape once nothing reads it any more, so the residual blocks share two buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from stylenet.errors import StylenetError
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
    buffer: torch.Tensor     # (1, C_in, h + 2 pad, w + 2 pad), in the layout the one pass gives this input;
                             # every element is written before a convolution reads it
    pad: int
    replicate: bool          # edge replication (a sub-pixel upsampling's input), else reflection
    height: int              # of the interior: the layer's unpadded input
    width: int
    channels_last: bool      # the buffer's layout

    @property
    def interior(self) -> torch.Tensor:
        """The unpadded input: a view of the buffer."""
        return self.buffer[..., self.pad: self.pad + self.height, self.pad: self.pad + self.width]

    def convolve(self) -> torch.Tensor:
        """The layer's convolution of the padded buffer, by the layer's own modules, as the one pass
        calls them once it has padded their input (:mod:`stylenet.fastpath`, ``ReflectConv``)."""
        conv = self.layer.conv
        if isinstance(conv, SubpixelConv):
            return conv.convolve(self.buffer)
        if isinstance(conv, DepthToSpaceConv):  # a stride-1 convolution: the output is the input's size
            return conv.convolve(self.buffer)[..., : self.height, : self.width]
        return self.layer.conv2d(self.buffer)

    def fill_border(self) -> None:
        """Pad the interior in place as ``F.pad`` would: rows first, then whole columns, which so
        also fills the corners (reflected, or replicated, along both axes)."""
        buffer, pad, height, width = self.buffer, self.pad, self.height, self.width
        interior_columns, all_rows = slice(pad, pad + width), slice(0, height + 2 * pad)
        for r in range(1, pad + 1):
            top, bottom = (pad, pad + height - 1) if self.replicate else (pad + r, pad + height - 1 - r)
            buffer[..., pad - r, interior_columns] = buffer[..., top, interior_columns]
            buffer[..., pad + height - 1 + r, interior_columns] = buffer[..., bottom, interior_columns]
        for r in range(1, pad + 1):
            left, right = (pad, pad + width - 1) if self.replicate else (pad + r, pad + width - 1 - r)
            buffer[..., all_rows, pad - r] = buffer[..., all_rows, left]
            buffer[..., all_rows, pad + width - 1 + r] = buffer[..., all_rows, right]


class PrepaddedNetwork:
    """The ``layers`` of a TransformerNet (:func:`~stylenet.inference.layerwise.network_layers`)
    prepared for (1, 3, ``height``, ``width``) inputs, sides multiples of the network's and at least
    its ``min_size``; ``layouts``: per layer, whether its input is channels_last in the one pass
    (:func:`input_layouts`). Call it on such a batch for the float32 output."""

    def __init__(self, layers: list[Layer], layouts: list[bool], height: int, width: int, precision: str,
                 device: torch.device) -> None:
        self.size, self.precision, self.device = (height, width), precision, device
        # buffers no later layer reads, by shape, padding and layout (a residual sum may then be written
        # over its own input: the same interior, element for element)
        free: dict[tuple[object, ...], list[torch.Tensor]] = {}
        self.steps: list[Step] = []
        for layer, channels_last in zip(layers, layouts, strict=True):
            pad = 1 if layer.upsamples else layer.conv2d.kernel_size[0] // 2
            factor = layer.conv.factor if isinstance(layer.conv, DepthToSpaceConv) else 1
            if (height + 2 * pad) % factor or (width + 2 * pad) % factor:  # DepthToSpaceConv.convolve's premise
                raise StylenetError(f"a {height}x{width} input cannot be padded for {type(layer.conv).__name__}")
            shape = (1, layer.conv2d.in_channels, height + 2 * pad, width + 2 * pad)
            reusable = free.get((shape, pad, channels_last))
            layout = torch.channels_last if channels_last else torch.contiguous_format
            buffer = reusable.pop() if reusable else torch.empty(shape, dtype=PRECISIONS[precision], device=device,
                                                                 memory_format=layout)
            self.steps.append(Step(layer, buffer, pad, layer.upsamples, height, width, channels_last))
            # the buffers the next layer's output may overwrite: those of inputs no later layer reads
            done = self.steps[-2:] if layer.residual else [] if layer.block_start else self.steps[-1:]
            for used in done:
                free.setdefault((tuple(used.buffer.shape), used.pad, used.channels_last), []).append(used.buffer)
            height, width = layer.output_side(height), layer.output_side(width)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) float32 -> the network's float32 (1, 3, H, W) (an inference tensor)."""
        if tuple(batch.shape) != (1, 3, *self.size):
            raise StylenetError(f"this network was prepared for (1, 3, {self.size[0]}, {self.size[1]}) batches, "
                                f"got {tuple(batch.shape)}")
        first = self.steps[0]
        with autocast(self.device, self.precision):
            first.interior.copy_(batch)  # the one pass casts the padded input as its first convolution reads it
            first.fill_border()
            stream: torch.Tensor | None = None  # the residual block's input
            for step, following in zip(self.steps, self.steps[1:], strict=False):
                layer, norm = step.layer, step.layer.norm
                assert norm is not None  # network_layers: every layer but the last has one
                if layer.block_start:
                    stream = step.interior
                out = norm(step.convolve())
                if layer.residual:
                    assert stream is not None  # network_layers: a residual layer follows its block's start
                    torch.add(stream, out, out=following.interior)
                else:  # network_layers: every other normalised layer is rectified
                    torch.clamp_min(out, 0, out=following.interior)
                following.fill_border()
            last = self.steps[-1]
            out = last.convolve()
            if last.layer.final is not None:
                out = last.layer.final(out)
        return out.float()


#: The side of the blank frame :func:`input_layouts` runs: big enough that no map of the network is
#: a single pixel (where NCHW and channels_last are the same strides), small enough to cost nothing.
PROBE_SIDE = 32


def input_layouts(net: nn.Module, layers: list[Layer], precision: str, device: torch.device) -> list[bool] | None:
    """Per layer, whether the one pass feeds its convolution channels_last, as found by running it
    once on a small blank frame; None if some layer's module is not what the one pass calls (a
    network not rewritten by :func:`~stylenet.fastpath.optimize_for_inference`, whose layers
    :func:`~stylenet.inference.layerwise.network_layers` wraps anew).

    The layout an input arrives in decides the layout of the convolution's output (a network's
    first layer reads the NCHW image, for one), and with it which InstanceNorm kernel runs and in
    what order it sums. It follows from the layouts of the input and the weights, not from the size."""
    found: dict[int, bool] = {}

    def record(index: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        return lambda _module, args: found.__setitem__(index, is_channels_last(args[0]))

    side = max(PROBE_SIDE, min_size(net))
    hooks = [layer.conv.register_forward_pre_hook(record(index)) for index, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            forward(net, torch.zeros(1, 3, side, side, device=device), precision)
    finally:
        for hook in hooks:
            hook.remove()
    return [found[index] for index in range(len(layers))] if len(found) == len(layers) else None


def prepadded_forward(net: nn.Module, precision: str, device: torch.device, *, keep: bool
                      ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``forward(net, batch, precision)`` for (1, 3, H, W) batches, through a :class:`PrepaddedNetwork`
    (padded to the network's multiple, output cropped, as the one pass does); None where it does not
    apply: networks other than a TransformerNet with InstanceNorm as
    :func:`~stylenet.fastpath.optimize_for_inference` rewrites it, devices other than the CPU, where
    it was measured (``stylenet-bench --sections frames``), and precisions other than fp32 and bf16.

    ``keep``: the buffers are kept for the next batch of the same size (one stream of frames, on one
    thread: prepared anew only when the size changes); else each call prepares its own and frees them
    as it returns (photos: nothing held between images, and calls from several threads at once)."""
    if device.type != "cpu" or precision not in ("fp32", "bf16"):
        return None
    layers = network_layers(net)
    layouts = None if layers is None else input_layouts(net, layers, precision, device)
    if layers is None or layouts is None:
        return None
    multiple, smallest = size_multiple(net), min_size(net)
    prepared: PrepaddedNetwork | None = None

    def run(batch: torch.Tensor) -> torch.Tensor:
        nonlocal prepared
        height, width = batch.shape[-2:]
        padded = pad_to_multiple(batch, multiple, smallest)
        network = prepared
        if network is None or network.size != tuple(padded.shape[-2:]):
            prepared = network = None  # the last size's buffers go before this size's are made
            network = PrepaddedNetwork(layers, layouts, *padded.shape[-2:], precision, device)
            prepared = network if keep else None
        try:
            return crop_to(network(padded), height, width)
        except BaseException:  # out of memory, say: the buffers go, and the next batch starts afresh
            prepared = None
            raise
    return run
