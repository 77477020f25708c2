"""Layer by layer: a :class:`~stylenet.nets.TransformerNet` over an image too big for one pass,
computing exactly what one pass would, in bounded memory.

Instance Normalization needs each layer's statistics over the whole image, so the network cannot
run on independent tiles without changing the result. Here it runs one layer at a time over the
whole image, in horizontal bands: each band of a layer's output is computed from the rows of the
layer's input it needs (its convolution's halo; reflection or edge padding only at the image's
borders, as in one pass), and the layer's per-channel statistics are pooled over the bands (Chan
et al. 1979). Once a layer is done it is normalised in place and the next layer starts. Every
InstanceNorm therefore sees the one-pass statistics, and memory holds about two layers'
activations, in the precision the network computes in (bf16 on the bf16 path).

The full-resolution layers (the first, and the one before the output) are the largest. On the CPU
a stored layer that only the next layer reads gives its rows back to the operating system as the
next layer's bands pass them, so storing one costs about that layer alone, not it and its
neighbour. When even that would exceed the memory budget (or, where rows cannot be given back,
storing it beside the next layer's output would), a first pass over its bands only pools its
statistics and the next layer recomputes the bands it needs (with their halo) as it goes: about an
eighth more arithmetic for the paper's network, instead of the largest activation.
"""

from __future__ import annotations

import math
import mmap
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stylenet.errors import StylenetError
from stylenet.fastpath import DepthToSpaceConv, SubpixelConv, channel_moments, is_channels_last, pool_moments
from stylenet.fastpath import Moments as PixelMoments
from stylenet.image import unit_float
from stylenet.inference.geometry import PRECISIONS, autocast, min_size, pad_to_multiple, size_multiple
from stylenet.inference.norms import FrozenInstanceNorm
from stylenet.nets.transformer import ReflectConv, ScaledTanh, TransformerNet, UpsampleConvNormReLU

#: Rows [start, stop) of one layer's input or output: (1, C, stop - start, W) on the device.
Rows = Callable[[int, int], torch.Tensor]

#: Full-resolution pixels per band: bands of the widest (full-resolution) layers stay a few tens of MB.
BAND_PIXELS = 1 << 19

#: Stored layers from this size up are mapped from the operating system (see :class:`BufferPool`):
#: glibc's largest mmap threshold, above which it would map them itself without reuse_freed_memory.
MAPPED_BYTES = 32 << 20


@dataclass
class Layer:
    """One convolution of the network as the one pass runs it, and what follows it."""

    conv: nn.Module  # ReflectConv, DepthToSpaceConv, or SubpixelConv (nearest x2 upsampling + conv)
    norm: nn.InstanceNorm2d | None = None
    relu: bool = False
    residual: bool = False     # adds the residual block's input after the norm
    block_start: bool = False  # first layer of a residual block: its input is the block's input
    final: nn.Module | None = None  # ScaledTanh after the last layer

    @property
    def conv2d(self) -> nn.Conv2d:
        return self.conv.conv if isinstance(self.conv, (SubpixelConv, DepthToSpaceConv)) else self.conv[1]

    @property
    def upsamples(self) -> bool:
        return isinstance(self.conv, SubpixelConv)

    def output_side(self, side: int) -> int:
        """Output height (or width) for an input ``side``."""
        if self.upsamples:
            return 2 * side
        kernel, stride = self.conv2d.kernel_size[0], self.conv2d.stride[0]
        return (side + 2 * (kernel // 2) - kernel) // stride + 1

    def input_rows(self, start: int, stop: int) -> tuple[int, int]:
        """The input rows ``[first, last)`` that output rows ``[start, stop)`` read, padding included:
        ``first`` is negative and ``last`` beyond the input at its borders."""
        if self.upsamples:
            return start // 2 - 1, stop // 2 + 1
        kernel, stride = self.conv2d.kernel_size[0], self.conv2d.stride[0]
        return start * stride - kernel // 2, (stop - 1) * stride - kernel // 2 + kernel

    def rows(self, read: Rows, height: int, start: int, stop: int) -> torch.Tensor:
        """Output rows ``[start, stop)`` (even, for upsampling) from the input rows ``read`` gives;
        ``height`` is the input's. Padding as in one pass at the image's borders, neighbours inside."""
        # edge replication is what reflecting the upsampled image is (SubpixelConv)
        pad, mode = (1, "replicate") if self.upsamples else (self.conv2d.kernel_size[0] // 2, "reflect")
        first, last = self.input_rows(start, stop)
        band = read(max(first, 0), min(last, height))
        with torch.autocast(band.device.type, enabled=False):  # padding is exact: keep the dtype
            band = F.pad(band, (pad, pad, max(0, -first), max(0, last - height)), mode=mode)
        if self.upsamples:
            return self.conv.convolve(band)
        if isinstance(self.conv, DepthToSpaceConv):
            factor, width = self.conv.factor, band.shape[-1] - 2 * pad
            band = F.pad(band, (0, -band.shape[-1] % factor, 0, -band.shape[-2] % factor))
            return self.conv.convolve(band)[..., : stop - start, :width]
        return self.conv2d(band)


def network_layers(net: nn.Module) -> list[Layer] | None:
    """The layers of a :class:`TransformerNet` with InstanceNorm, as built or as
    :func:`stylenet.fastpath.optimize_for_inference` rewrote it; None for any other network."""
    if not isinstance(net, TransformerNet):
        return None
    layers = [Layer(block[0], block[1], relu=True) for block in net.encoder]
    for block in net.residuals:
        first, second, norm = block.body
        layers += [Layer(first[0], first[1], relu=True, block_start=True), Layer(second, norm, residual=True)]
    for block in net.decoder:
        if isinstance(block, UpsampleConvNormReLU):
            conv = block[1][0]
            if isinstance(conv, ReflectConv):  # not rewritten: the same image through the sub-pixel form
                if not isinstance(block[0], nn.Upsample) or block[0].mode != "nearest":
                    return None
                conv = SubpixelConv(conv[1])
            layers.append(Layer(conv, block[1][1], relu=True))
        elif isinstance(block, (ReflectConv, DepthToSpaceConv)):
            layers.append(Layer(block))
        elif isinstance(block, ScaledTanh) and layers[-1].norm is None:
            layers[-1].final = block
        else:
            return None
    norms = [layer.norm for layer in layers if layer.norm is not None]
    if not all(isinstance(norm, nn.InstanceNorm2d) and norm.affine and not norm.track_running_stats
               for norm in norms):
        return None
    return layers


class Moments:
    """Per-channel moments of one layer's output, pooled exactly over its bands
    (:func:`stylenet.fastpath.channel_moments`, :func:`~stylenet.fastpath.pool_moments`)."""

    def __init__(self) -> None:
        self.total: PixelMoments | None = None

    def add(self, x: torch.Tensor) -> None:
        self.total = pool_moments(self.total, channel_moments(x))

    def frozen(self, norm: nn.InstanceNorm2d) -> FrozenInstanceNorm:
        """``norm`` with these statistics (the biased variance InstanceNorm uses)."""
        assert self.total is not None
        count, mean, squares = self.total
        return FrozenInstanceNorm(norm, mean.float(), (squares / count).float())


def _normalize(x: torch.Tensor, norm: FrozenInstanceNorm, relu: bool) -> torch.Tensor:
    y = norm(x)
    return y.relu_() if relu else y


def _spans(length: int, rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + rows, length)) for start in range(0, length, rows)]


@dataclass(frozen=True)
class Plan:
    """How the layers run on one image: which are recomputed instead of stored, band sizes."""

    layers: list[Layer]
    recompute: list[bool]
    rows: list[int]      # output rows per band, per layer
    heights: list[int]   # output height per layer
    widths: list[int]
    height: int          # the padded input's
    width: int

    @property
    def passes(self) -> int:
        """Bands of all layers: what progress counts (a recomputed layer's second pass happens
        inside the next layer's bands, so it counts once)."""
        return sum(math.ceil(h / r) for h, r in zip(self.heights, self.rows, strict=True))


def plan(layers: list[Layer], height: int, width: int, precision: str, budget: int | None,
         band_pixels: int = BAND_PIXELS, streamed: bool = False) -> Plan:
    """Bands of about ``band_pixels`` full-resolution pixels (rows a multiple of 8, so every
    layer's bands are even); a full-resolution layer is recomputed when storing it would take more
    than ``budget`` bytes (None: never) beside the next layer's output, or, where ``streamed``
    (:meth:`BufferPool.release_rows`: the rows a layer has read are given back as it goes), alone."""
    band = max(8, band_pixels // width // 8 * 8)
    heights, widths, channels = [], [], []
    side_h, side_w = height, width
    for layer in layers:
        side_h, side_w = layer.output_side(side_h), layer.output_side(side_w)
        heights.append(side_h)
        widths.append(side_w)
        channels.append(layer.conv2d.out_channels)
    size = PRECISIONS[precision].itemsize  # what activations are stored in
    sizes = [c * h * w * size for c, h, w in zip(channels, heights, widths, strict=True)]
    recompute = [budget is not None and index + 1 < len(layers) and heights[index] == height
                 and sizes[index] + (0 if streamed else sizes[index + 1]) > budget for index in range(len(layers))]
    rows = [max(2, band * h // height // 2 * 2) for h in heights]
    return Plan(layers, recompute, rows, heights, widths, height, width)


@torch.inference_mode()
def layerwise_bands(net: nn.Module, image: torch.Tensor, *, precision: str = "fp32",
                    device: torch.device | None = None, budget: int | None = None,
                    band_pixels: int = BAND_PIXELS, progress: Callable[[int, int], None] | None = None,
                    offset: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Run TransformerNet ``net`` layer by layer over the (3, H, W) ``image`` (kept where it is;
    bands go to ``device``, the network's by default) and yield ``(top, rows)``: the output's rows
    from ``top`` down, float32 (3, rows, W) on the device, top to bottom.

    The same image as :func:`~stylenet.inference.geometry.padded_forward` in one pass, up to
    rounding (``budget``: see :func:`plan`). ``progress(done, total)`` is called after every band.
    ``offset`` ((3, 1, 1) on the device): what the network takes every band of the image less
    (:func:`~stylenet.inference.geometry.input_offset`)."""
    layers = network_layers(net)
    if layers is None:
        raise StylenetError(f"layer-by-layer inference needs a TransformerNet with InstanceNorm, got "
                            f"{type(net).__name__}")
    device = device or next(net.parameters()).device
    height, width = image.shape[-2:]
    padded = pad_to_multiple(image.unsqueeze(0), size_multiple(net), min_size(net))
    pool = BufferPool(device, MAPPED_BYTES)
    steps = plan(layers, *padded.shape[-2:], precision, budget, band_pixels, streamed=pool.releases)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, steps.passes)

    def image_rows(start: int, stop: int) -> torch.Tensor:
        rows = unit_float(padded[..., start:stop, :], device)
        return rows if offset is None else rows - offset

    read: Rows = image_rows
    source_height = steps.height
    stream: torch.Tensor | None = None  # the residual blocks' running sum

    def run(layer: Layer, start: int, stop: int) -> torch.Tensor:
        # autocast per band, never across a yield: the caller's code must not run under it
        with autocast(device, precision):
            out = layer.rows(read, source_height, start, stop)
            return layer.final(out) if layer.final is not None else out

    for index, layer in enumerate(steps.layers):
        out_height, rows = steps.heights[index], steps.rows[index]
        spans = _spans(out_height, rows)
        release = _releaser(layer, read, pool)
        if index == len(steps.layers) - 1:
            for start, stop in spans:
                out = run(layer, start, stop)
                release(stop)
                tick()
                if start < height:
                    yield start, out[0, :, : min(stop, height) - start, :width].float()
            return
        moments = Moments()
        if steps.recompute[index]:
            for start, stop in spans:
                moments.add(run(layer, start, stop))
                tick()
            read = _recomputed(layer, read, source_height, out_height, moments.frozen(layer.norm))
            source_height = out_height
            continue
        over = _overwritable(layer, read, rows)
        stored = _store(layer, spans, out_height, run, tick, pool, moments, over,
                        release=release if over is None else None)
        read, stream = _next_reader(layer, steps.layers[index + 1], stored, moments.frozen(layer.norm), spans,
                                    read, stream, device, precision)
        del stored  # only the readers hold stored layers: a layer no reader needs goes back to the pool now
        if all(steps.recompute[index + 1: -1]):  # no later layer is stored: nothing will reuse the free buffers
            pool.free.clear()
        source_height = out_height


def _store(layer: Layer, spans: list[tuple[int, int]], out_height: int,
           run: Callable[[Layer, int, int], torch.Tensor], tick: Callable[[], None], pool: BufferPool,
           moments: Moments, over: torch.Tensor | None = None,
           release: Callable[[int], None] | None = None) -> torch.Tensor:
    """Run ``layer`` band by band into one stored activation, accumulating its statistics; after
    each band, ``release(stop)`` (:func:`_releaser`) with the band's last row.

    ``over`` (see :func:`_overwritable`): the layer's input, which it alone reads; an output of its
    shape and dtype is written over it one band behind, since the next band still reads the rows
    just above its own (its halo). A residual block's second layer so needs no buffer of its own:
    the blocks hold one stored layer besides their input instead of two."""
    stored: torch.Tensor | None = None
    behind: tuple[int, int, torch.Tensor] | None = None  # a band computed, not yet written over its input
    for start, stop in spans:
        out = run(layer, start, stop)
        if stored is None:
            channels_last = is_channels_last(out)
            shape = (1, out.shape[1], out_height, out.shape[-1])
            if over is not None and over.shape == shape and over.dtype == out.dtype:
                stored = over  # in any layout, writing rows [start, stop) leaves the other rows alone
            else:
                stored, over = pool.empty(shape, out.dtype, channels_last), None
        moments.add(out)
        if behind is not None:
            stored[..., behind[0]:behind[1], :] = behind[2]
            behind = None
        if over is None:
            stored[..., start:stop, :] = out
        else:
            behind = (start, stop, out)
        if release is not None:
            release(stop)
        tick()
    if behind is not None:
        stored[..., behind[0]:behind[1], :] = behind[2]
    assert stored is not None and layer.norm is not None
    return stored


def _releaser(layer: Layer, read: Rows, pool: BufferPool) -> Callable[[int], None]:
    """``release(stop)`` for ``layer``, to call once its output rows above ``stop`` are done: the
    rows of its stored input that no later band reads go back to the operating system, when the
    layer alone reads that input (its bands go top to bottom, each reading from a halo above its
    own first row). Storing a full-resolution layer then costs about that layer, not it and its
    neighbour (:func:`plan`). A no-op for an input read again (a residual block's) or not mapped."""
    stored: torch.Tensor | None = getattr(read, "only_reader", None)
    released = 0  # rows [0, released) given back

    def release(stop: int) -> None:
        nonlocal released
        unread = max(released, layer.input_rows(stop, stop + 1)[0])
        if stored is not None and unread > released:
            pool.release_rows(stored, released, unread)
            released = unread
    return release


def _overwritable(layer: Layer, read: Rows, rows: int) -> torch.Tensor | None:
    """The stored input of ``layer`` if the layer may write its output over it (:func:`_store`):
    no other layer reads it, the layer keeps its size, and its bands are at least its halo tall
    (so the band written one behind is above every row the next band reads)."""
    stored: torch.Tensor | None = getattr(read, "only_reader", None)
    conv = layer.conv2d
    if stored is None or layer.upsamples or isinstance(layer.conv, DepthToSpaceConv):
        return None
    if conv.stride != (1, 1) or conv.in_channels != conv.out_channels or rows < conv.kernel_size[0] // 2:
        return None
    return stored


def _next_reader(layer: Layer, following: Layer, stored: torch.Tensor, norm: nn.Module,
                 spans: list[tuple[int, int]], read: Rows, stream: torch.Tensor | None, device: torch.device,
                 precision: str) -> tuple[Rows, torch.Tensor | None]:
    """How the next layer reads ``layer``'s stored, not yet normalised output (and the residual
    blocks' running sum after it)."""
    if layer.block_start:
        stream = _stored_input(read)
    if layer.residual and stream is not None:  # the block's output: its input plus this layer's
        with autocast(device, precision):
            for start, stop in spans:
                stream[..., start:stop, :] += norm(stored[..., start:stop, :])
        read = _reader(stream)
        if not following.block_start:  # the last block: only the next layer reads the sum
            stream = None
    elif following.block_start:  # a residual block's input is read twice: normalise it in place
        with autocast(device, precision):
            for start, stop in spans:
                band = stored[..., start:stop, :]
                band.copy_(_normalize(band, norm, layer.relu))
        read = _reader(stored)
    else:  # normalised as the next layer reads it: no pass over the stored layer for it
        read = _normalized_reader(stored, norm, layer.relu)
    return read, stream


class BufferPool:
    """Memory for the stored layers, handed back to the pool when a layer's tensor dies and reused
    for a later one (the smallest free buffer that fits). The allocator could leave the freed
    layers as holes too small for the next one; a pool keeps the peak at the layers alive at once.

    On the CPU, buffers of at least ``mapped_bytes`` are mapped from the operating system for this
    call alone (anonymous private mappings), not taken from malloc: with
    :func:`~stylenet.fastpath.reuse_freed_memory` (which the command-line tools switch on) malloc
    keeps every block it ever held, and the next image's layers, placed among the small blocks
    allocated in between, would grow its heap by another layer or two."""

    def __init__(self, device: torch.device, mapped_bytes: int = MAPPED_BYTES) -> None:
        self.device = device
        self.mapped_bytes = mapped_bytes
        self.free: list[torch.Tensor] = []
        self.mappings: dict[int, mmap.mmap] = {}  # by address: the mapped buffers alive

    @property
    def releases(self) -> bool:
        """Whether :meth:`release_rows` gives memory back: mapped buffers, and Linux's ``madvise``,
        which frees the pages at once (elsewhere ``MADV_DONTNEED`` is only a hint)."""
        return (self.device.type == "cpu" and bool(_MAP_FLAGS) and sys.platform.startswith("linux")
                and hasattr(mmap, "MADV_DONTNEED"))

    def release_rows(self, stored: torch.Tensor, start: int, stop: int) -> None:
        """Give rows ``[start, stop)`` of the (1, C, H, W) ``stored`` tensor, which nothing reads any
        more, back to the operating system: the whole pages inside them (``MADV_DONTNEED``; a later
        touch finds a fresh zeroed page). Rows are one span of memory in channels_last, one per
        channel in NCHW."""
        mapping = self.mappings.get(stored.untyped_storage().data_ptr())
        if mapping is None or not self.releases:
            return
        item, page = stored.element_size(), mmap.PAGESIZE
        _, channel_stride, row_stride, _ = stored.stride()
        planes = [0] if row_stride > channel_stride else range(0, stored.shape[1] * channel_stride, channel_stride)
        for plane in planes:
            begin = (stored.storage_offset() + plane + start * row_stride) * item
            end = (stored.storage_offset() + plane + stop * row_stride) * item
            begin, end = -(-begin // page) * page, end // page * page
            if end > begin:
                mapping.madvise(mmap.MADV_DONTNEED, begin, end - begin)

    def empty(self, shape: tuple[int, int, int, int], dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
        """An uninitialised (N, C, H, W) tensor, contiguous in the given layout."""
        size = math.prod(shape) * dtype.itemsize
        fitting = [buffer for buffer in self.free if buffer.numel() >= size]
        if fitting:
            buffer = min(fitting, key=torch.Tensor.numel)
            del self.free[next(i for i, other in enumerate(self.free) if other is buffer)]  # in place: see below
        elif self.free:  # every free buffer is too small: the decoder's layers only grow, so let them go
            self.free.clear()
            return self.empty(shape, dtype, channels_last)
        elif self.device.type == "cpu" and size >= self.mapped_bytes and _MAP_FLAGS:
            mapping = _mapped(size)
            buffer = torch.frombuffer(mapping, dtype=torch.uint8)
            self.mappings[buffer.data_ptr()] = mapping
            weakref.finalize(buffer, self._unmapped, buffer.data_ptr())
        else:
            buffer = torch.empty(size, dtype=torch.uint8, device=self.device)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        strides = torch.empty(shape, device="meta", memory_format=layout).stride()
        tensor = buffer[:size].view(dtype).as_strided(shape, strides)
        weakref.finalize(tensor, self.free.append, buffer)  # the list every finaliser appends to
        return tensor

    def _unmapped(self, address: int) -> None:
        """The buffer at ``address`` died: its mapping goes, unmapped with its last reference."""
        del self.mappings[address]


#: Anonymous private mappings (POSIX); elsewhere (0) the pool's buffers come from the allocator.
_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS if hasattr(mmap, "MAP_ANONYMOUS") else 0


def _mapped(size: int) -> mmap.mmap:
    """``size`` zeroed bytes of their own: unmapped (the memory given back to the operating system)
    when the last reference to them dies, a tensor's view of them included."""
    return mmap.mmap(-1, size, flags=_MAP_FLAGS)


def _reader(stored: torch.Tensor) -> Rows:
    def read(start: int, stop: int) -> torch.Tensor:
        return stored[..., start:stop, :]
    read.stored = stored  # type: ignore[attr-defined]
    return read


def _normalized_reader(stored: torch.Tensor, norm: FrozenInstanceNorm, relu: bool) -> Rows:
    def read(start: int, stop: int) -> torch.Tensor:
        return _normalize(stored[..., start:stop, :], norm, relu)
    read.only_reader = stored  # type: ignore[attr-defined]  # the next layer alone reads it: see _overwritable
    return read


def _stored_input(read: Rows) -> torch.Tensor:
    """The whole tensor behind a stored layer's reader (a residual block's input is one)."""
    stored = getattr(read, "stored", None)
    if stored is None:
        raise StylenetError("a residual block's input must be stored, not recomputed")
    return stored


def _recomputed(layer: Layer, read: Rows, height: int, out_height: int, norm: FrozenInstanceNorm) -> Rows:
    """Rows of ``layer``'s normalised output computed on demand from ``read`` (its input)."""
    align = 2 if layer.upsamples else 1

    def rows(start: int, stop: int) -> torch.Tensor:
        first, last = start - start % align, min(out_height, stop + stop % align)
        out = _normalize(layer.rows(read, height, first, last), norm, layer.relu)
        return out[..., start - first: stop - first, :]
    return rows


def layerwise_forward(net: nn.Module, image: torch.Tensor, **options: object) -> torch.Tensor:
    """(3, H, W) -> the network's float32 (3, H, W) output, computed by :func:`layerwise_bands`."""
    return torch.cat([rows for _, rows in layerwise_bands(net, image, **options)], dim=1)  # type: ignore[arg-type]
