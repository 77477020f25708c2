"""Inference: any image, any size, any device, bounded memory, through ONE code path.

``stylenet-stylize``, the notebook API (``stylenet.load_model(path).stylize(...)``) and the training
preview all run networks through this module, and so can any image-to-image network that declares

* ``size_multiple`` (default 1): H and W of its input must be multiples of it (4 for
  :class:`~stylenet.nets.TransformerNet`: two stride-2 convolutions, two x2 upsamplings);
* ``min_size`` (default ``max(8, 2 * size_multiple)``): the smallest input side its reflection
  pads accept (a 9x9 reflection pad needs 5 px; TransformerNet's 3x3 pads at 1/4 scale need 8 px);
* ``scale`` (default 1): output side / input side, e.g. 4 for a x4 super-resolution network.

The pieces, and why:

* **Any size**: inputs are padded at the bottom/right to the network's multiple (reflection, so the
  network sees image-like content, not a dark border; edge replication for inputs smaller than the
  padding, down to 1x1) and the output is cropped back, so output size == input size x ``scale``.
* **Tiles with consistent InstanceNorm statistics**: Instance Normalization (Ulyanov et al. 2016)
  normalises every feature map by its own mean and variance, so running tiles independently gives
  each tile its own contrast and colour cast: visible seams. When an image needs several tiles,
  a first pass over the whole image records every InstanceNorm layer's per-channel mean/var; the
  tiles then run with those statistics frozen (the layers are swapped for
  :class:`FrozenInstanceNorm`), so they compute what the whole image would, up to the receptive
  field cut at tile borders. An image beyond the memory budget gets its statistics from a
  thumbnail (consistent across tiles, but not the full-size values: Chen et al. 2022's
  "thumbnail instance normalization") or, on request, exactly from
  :func:`streaming_norm_statistics`, layer by layer over the tiles. Tiles overlap and are blended with
  linear ramps that are 0 at a tile's inner edges (where the cut receptive field hurts most) and
  sum to 1 everywhere, so the blend adds no seams of its own. Tile origins are multiples of
  ``size_multiple`` so every tile sees the same stride-2 sampling grid as the whole image.
* **Bounded memory**: a tile's activation memory is estimated from a tiny probe pass, tiles are
  sized to ``max_memory``, the image stays on the CPU (only tiles and a downscaled statistics copy
  go to the device), and finished output rows are quantised band by band, to uint8, or to uint16
  for 16-bit sources (tiles, blend and controls stay float32, so 16 bits survive). Running out of
  memory is retried with smaller tiles, then reported as a :class:`~stylenet.StylenetError`; it is
  never swallowed.
* **One geometry**: every pass pads and crops through :func:`padded_forward`, which the ONNX and
  ``.pt2`` exports call too, so all of them see the same padding (it enters InstanceNorm's statistics).
* **Controls** (:class:`Controls`) are per-pixel, so they are applied tile by tile: ``strength``
  blends with the content; ``preserve_color`` is the luminance-only transfer of Gatys et al. 2016,
  "Preserving Color in Neural Artistic Style Transfer" (Sec. 2): keep the content's chroma,
  take the stylised luminance.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from stylenet import StylenetError
from stylenet.fastpath import inference_precision, optimize_for_inference, reuse_freed_memory
from stylenet.image import LoadedImage, to_pil

log = logging.getLogger(__name__)

__all__ = [
    "CPU_MAX_MEMORY",
    "DEFAULT_TILE_OVERLAP",
    "MIN_TILE",
    "PRECISIONS",
    "Controls",
    "FrozenInstanceNorm",
    "InferenceModel",
    "NormStats",
    "activation_bytes_per_pixel",
    "core_spans",
    "crop_to",
    "default_max_memory",
    "first_line",
    "freeze_norm_statistics",
    "luma",
    "match_histogram",
    "pad_to_multiple",
    "padded_forward",
    "record_norm_statistics",
    "resize",
    "resolve_device",
    "run_network",
    "streaming_norm_statistics",
    "target_size",
    "tile_spans",
    "tile_weights",
]

#: ``--precision`` names -> autocast dtypes (fp32 runs without autocast).
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Overlap between neighbouring tiles, in input pixels. Measured with scripts/tile_check.py: the
#: paper's network has a receptive field of ~100 px, but a tile's output only drifts within ~20 px of
#: a cut, and the ramp gives those pixels almost no weight.
DEFAULT_TILE_OVERLAP = 64
#: No automatic or retried tile gets smaller than this (input pixels per side).
MIN_TILE = 64
#: Per-forward-pass activation budget on the CPU when ``max_memory`` is not given.
CPU_MAX_MEMORY = 800_000_000  # 0.8 GB: a 1024x1024 photo still runs in one pass (fp32 or bf16)
#: Per InstanceNorm layer (by module name): per-channel input (mean, biased variance).
NormStats = dict[str, tuple[torch.Tensor, torch.Tensor]]
#: BT.601 luma weights (JPEG's YCbCr); they sum to 1, which :func:`Controls.apply` relies on.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# ------------------------------------------------------------------------------ network geometry


def size_multiple(net: nn.Module) -> int:
    """H and W of the network's input must be multiples of this."""
    return int(getattr(net, "size_multiple", 1))


def min_size(net: nn.Module) -> int:
    """The smallest input side the network's reflection pads accept (see the module docstring)."""
    return int(getattr(net, "min_size", max(8, 2 * size_multiple(net))))


def output_scale(net: nn.Module) -> int:
    """Output side / input side: 1 for style networks, 2/4/8 for super-resolution networks."""
    return int(getattr(net, "scale", 1))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


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
    pad_h = _round_up(max(height, min_size), multiple) - height
    pad_w = _round_up(max(width, min_size), multiple) - width
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


def padded_forward(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``net`` on (B, C, H, W) of any size: :func:`pad_to_multiple`, run, :func:`crop_to` the
    input's size times the network's ``scale``.

    The single geometry of every way a model runs: :class:`InferenceModel` (``stylenet-stylize``,
    the notebook API, tiles, statistics passes) and the ONNX and ``.pt2`` exports, whose wrapper
    (:class:`stylenet.export.AnySizeNetwork`) calls this function. InstanceNorm statistics include
    the padding, so different padding would mean different pixels on the same image."""
    height, width = images.shape[-2:]
    scale = output_scale(net)
    output = net(pad_to_multiple(images, size_multiple(net), min_size(net)))
    return crop_to(output, height * scale, width * scale)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    dtype = PRECISIONS[precision]
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _forward(net: nn.Module, batch: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """(B, 3, H, W) on the network's device -> float32 (B, 3, H * scale, W * scale): pad, run, crop."""
    with _autocast(batch.device, precision):
        output = padded_forward(net, batch)
    return output.float()


@torch.inference_mode()
def run_network(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> the network's float32 (3, H * scale, W * scale) output in one pass, on
    the network's device. For previews of small images; :class:`InferenceModel` is the full tool."""
    device = next(net.parameters()).device
    return _forward(net, image.to(device).unsqueeze(0))[0]


# ------------------------------------------------------------------------------ devices and memory


def resolve_device(name: str = "auto", *, hint: str = "--device cpu") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; an explicit device must exist.

    ``hint`` is how the caller's users ask for the CPU (``--device cpu`` on argparse command
    lines, ``device=cpu`` for Hydra overrides), so the error for a missing device says what to type.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise StylenetError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise StylenetError(f"device {name!r} is not available on this machine (try {hint})")
    return device


def default_max_memory(device: torch.device) -> int:
    """Activation budget of one forward pass: 80% of the free GPU memory, half of MPS's recommended
    working set, :data:`CPU_MAX_MEMORY` on the CPU (the image and output stay in RAM beside it)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() * 0.5)
    return CPU_MAX_MEMORY


class _PeakTensorMemory(TorchDispatchMode):
    """Counts the bytes of every tensor that every operation allocates, and frees them when the
    tensor dies: the peak of live activations, including the internals of fused modules that
    forward hooks never see. (A ``__torch_dispatch__`` mode, PyTorch's documented extension point.)"""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._storages: set[int] = set()

    def _free(self, pointer: int, size: int) -> None:
        self._storages.discard(pointer)
        self.live -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor._is_view():
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() in self._storages:  # in-place results and other aliases
                continue
            self._storages.add(storage.data_ptr())
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._free, storage.data_ptr(), storage.nbytes())
        return out


@torch.inference_mode()
def activation_bytes_per_pixel(net: nn.Module, device: torch.device, precision: str = "fp32") -> float:
    """Peak activation bytes per input pixel, measured on one small probe pass.

    The probe counts every tensor the pass allocates (:class:`_PeakTensorMemory`); the process
    needs somewhat more (allocator slack, oneDNN's scratch buffers and reordered weights), so the
    estimate is 1.3x that peak: the measured peak RSS of 1024x1024 passes of the paper's network on
    the CPU is 0.87x to 1.0x the estimate (fp32 and bf16, with and without the fast paths).
    """
    side = _round_up(max(64, min_size(net)), size_multiple(net))
    probe = torch.zeros(1, 3, side, side, device=device)
    with _PeakTensorMemory() as memory:
        _forward(net, probe, precision)
    return 1.3 * memory.peak / (side * side)


def _is_out_of_memory(err: BaseException) -> bool:
    """CUDA raises OutOfMemoryError, the CPU and MPS allocators a RuntimeError with a message."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def first_line(err: BaseException) -> str:
    """An exception as one line for a user-facing message (its first line, or its type)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


# ------------------------------------------------------------------------------ resizing and colour


def target_size(height: int, width: int, *, scale: float = 1.0,
                max_size: int | None = None) -> tuple[int, int]:
    """``(H, W)`` after multiplying by ``scale`` and capping the long side at ``max_size``."""
    if scale <= 0:
        raise StylenetError(f"--scale must be positive, got {scale}")
    if max_size is not None and max_size < 1:
        raise StylenetError(f"--max-size must be at least 1, got {max_size}")
    factor = scale
    if max_size is not None and max(height, width) * factor > max_size:
        factor = max_size / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of (C, H, W) to ``size`` (no-op when already that size); float32
    out, whatever float dtype comes in (PyTorch's CPU kernel has no half-precision version)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image.unsqueeze(0).float(), size=size, mode="bilinear", antialias=True,
                         align_corners=False).squeeze(0)


def _resize_alpha(alpha: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """Alpha follows the pixels; at the same size it is returned untouched (bit-exact)."""
    if alpha is None or tuple(alpha.shape[-2:]) == tuple(size):
        return alpha
    top = 65535.0 if alpha.dtype == torch.uint16 else 255.0
    resized = resize(alpha.float(), size).round().clamp(0, top)
    return resized.to(torch.int32).to(alpha.dtype)


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


@dataclass(frozen=True)
class Controls:
    """What the user asked to do with the network's output, per pixel (so per tile).

    ``strength`` blends the output with the content (0 returns the content, 1 the full style);
    ``preserve_color`` keeps the content's chroma and takes the stylised luminance (Gatys et al.
    2016, "Preserving Color", luminance-only transfer); ``gray`` writes luminance only (for
    greyscale inputs with ``--keep-gray``). For networks with ``scale`` > 1 the content is
    upsampled (bicubic) to the output's size first.
    """

    strength: float = 1.0
    preserve_color: bool = False
    gray: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise StylenetError(f"strength must be in [0, 1], got {self.strength}")

    @property
    def needs_content(self) -> bool:
        return self.strength < 1.0 or self.preserve_color

    def apply(self, output: torch.Tensor, content: torch.Tensor | None) -> torch.Tensor:
        """Combine (..., 3, H, W) ``output`` with the ``content`` of the same size; clamp to [0, 1].

        Colour preservation adds the luminance difference to every channel of the content: since
        the BT.601 weights sum to 1 this changes Y by exactly that difference and leaves
        Cb ~ B - Y and Cr ~ R - Y, the content's chroma, unchanged.
        """
        if content is not None and self.preserve_color:
            output = content + (luma(output) - luma(content))
        if content is not None and self.strength < 1.0:
            output = torch.lerp(content, output, self.strength)
        if self.gray:
            output = luma(output).expand_as(output)
        return output.clamp(0.0, 1.0)


# ------------------------------------------------------------------------------ InstanceNorm statistics


class FrozenInstanceNorm(nn.Module):
    """An ``nn.InstanceNorm2d`` that normalises with stored per-channel statistics.

    ``F.batch_norm`` in eval mode computes exactly ``(x - mean) / sqrt(var + eps) * w + b`` with
    given statistics, which is what the InstanceNorm layer computed on the whole image. Statistics
    and parameters stay float32 (low-precision variances lose the small channels); the CPU and CUDA
    kernels compute in float32 for bf16/fp16 inputs too, so those are not cast to float32 and back
    (two extra passes over every activation of every tile).
    """

    def __init__(self, norm: nn.InstanceNorm2d, mean: torch.Tensor, var: torch.Tensor) -> None:
        super().__init__()
        self.norm = norm
        self.register_buffer("mean", mean.float())
        self.register_buffer("var", var.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = x.device.type in ("cpu", "cuda")  # kernels that take low-precision x with fp32 statistics
        out = F.batch_norm(x if mixed else x.float(), self.mean, self.var, self.norm.weight, self.norm.bias,
                           training=False, momentum=0.0, eps=self.norm.eps)
        return out.to(x.dtype)


def _instance_norms(net: nn.Module) -> dict[str, nn.InstanceNorm2d]:
    return {name: m for name, m in net.named_modules() if isinstance(m, nn.InstanceNorm2d)}


@torch.inference_mode()
def record_norm_statistics(net: nn.Module, image: torch.Tensor, precision: str = "fp32"
                           ) -> NormStats:
    """Run ``net`` on (1, 3, H, W) ``image`` and return every InstanceNorm layer's input
    ``(mean, var)`` per channel (biased variance, as InstanceNorm uses), keyed by module name."""
    stats: NormStats = {}

    def recorder(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            var, mean = torch.var_mean(inputs[0].float(), dim=(0, 2, 3), unbiased=False)
            stats[name] = (mean, var)
        return hook

    handles = [m.register_forward_pre_hook(recorder(name)) for name, m in _instance_norms(net).items()]
    try:
        _forward(net, image, precision)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def freeze_norm_statistics(net: nn.Module, stats: NormStats) -> nn.Module:
    """A copy of ``net`` whose InstanceNorm layers use ``stats`` (see :func:`record_norm_statistics`).

    A copy (a few MB) rather than swapping modules in place, so the caller's network is never left
    modified, even by an exception, and can be shared between threads.
    """
    frozen = copy.deepcopy(net)
    for name, norm in _instance_norms(frozen).items():
        parent_name, _, child = name.rpartition(".")
        setattr(frozen.get_submodule(parent_name), child, FrozenInstanceNorm(norm, *stats[name]))
    return frozen


# ------------------------------------------------------------------------------ tiling


def tile_spans(length: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """``[start, stop)`` tiles covering ``range(length)``: at most ``tile`` long, overlapping by at
    least ``overlap``, starting at multiples of ``multiple`` (the whole image's sampling grid), with
    the steps evened out so no tile is a sliver. One span when the length fits in one tile.

    The tiles are shrunk to the even size their count needs, so neighbours overlap by about
    ``overlap`` rather than by whatever the full size leaves over (2048 px in 1516 px tiles would
    otherwise overlap by 984 px and compute the image 2.2 times)."""
    if length <= tile:
        return [(0, length)]
    step = max(multiple, (tile - overlap) // multiple * multiple)
    count = math.ceil((length - tile) / step) + 1
    even = math.ceil((length + (count - 1) * _round_up(overlap, multiple)) / count)
    tile = min(tile, _round_up(even, multiple))
    step = _round_up(math.ceil((length - tile) / (count - 1)), multiple)
    return [(i * step, min(i * step + tile, length)) for i in range(count)]


def tile_weights(spans: list[tuple[int, int]], overlap: int) -> list[torch.Tensor]:
    """1-D blending weights, one per span, normalised so that they sum to 1 at every position.

    At a tile's inner edges (never at the image border) the outer quarter of ``overlap`` gets
    weight 0: those pixels saw reflection padding instead of their neighbours and are off by up to
    0.15 at the very edge (scripts/tile_check.py). The middle half ramps linearly to 1, so
    neighbouring tiles cross-fade instead of meeting at a seam. A 2-D tile's weight is the outer
    product of its row and column weights; the tiles form a grid, so the 2-D weights also sum to 1
    and no full-size weight accumulator is needed.
    """
    halo = overlap // 4
    ramp = max(1, overlap - 2 * halo)
    weights = []
    for index, (start, stop) in enumerate(spans):
        from_start = torch.arange(stop - start, dtype=torch.float32)
        weight = torch.ones(stop - start)
        if index > 0:
            weight = torch.minimum(weight, ((from_start - halo + 0.5) / ramp).clamp(0.0, 1.0))
        if index < len(spans) - 1:
            weight = torch.minimum(weight, ((from_start.flip(0) - halo + 0.5) / ramp).clamp(0.0, 1.0))
        weights.append(weight)
    total = torch.zeros(spans[-1][1])
    for (start, stop), weight in zip(spans, weights, strict=True):
        total[start:stop] += weight
    return [weight / total[start:stop] for (start, stop), weight in zip(spans, weights, strict=True)]


@dataclass(frozen=True)
class _Grid:
    """Tile layout of one image, in input pixels, and its blending weights in output pixels."""

    rows: list[tuple[int, int]]
    cols: list[tuple[int, int]]
    row_weights: list[torch.Tensor]
    col_weights: list[torch.Tensor]

    @classmethod
    def plan(cls, height: int, width: int, tile: int, overlap: int, multiple: int, scale: int) -> _Grid:
        rows = tile_spans(height, tile, overlap, multiple)
        cols = tile_spans(width, tile, overlap, multiple)
        return cls(rows, cols, tile_weights(_scaled(rows, scale), overlap * scale),
                   tile_weights(_scaled(cols, scale), overlap * scale))

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)


def _scaled(spans: list[tuple[int, int]], scale: int) -> list[tuple[int, int]]:
    return [(start * scale, stop * scale) for start, stop in spans]


def core_spans(spans: list[tuple[int, int]], multiple: int, padded_length: int) -> list[tuple[int, int]]:
    """Disjoint ``[start, stop)`` pieces of an axis, one inside each tile of ``spans``: cut at the
    middle of every overlap (on the sampling grid), so each piece is as far from its tile's cut
    edges as possible. The last piece runs to ``padded_length``: the whole image is padded to the
    network's multiple too, and its InstanceNorm statistics include that padding."""
    cuts = [0, *((stop + following) // 2 // multiple * multiple
                 for (_, stop), (following, _) in itertools.pairwise(spans)), padded_length]
    return list(itertools.pairwise(cuts))


class _LayerReached(Exception):
    """Raised by a hook to end a forward pass once the layer being measured has seen its input."""


def _measure_core(module: nn.Module, inputs: tuple[torch.Tensor, ...], *, rows: tuple[int, int],
                  cols: tuple[int, int], width: int, pieces: list[tuple[int, torch.Tensor, torch.Tensor]]
                  ) -> None:
    """Forward pre-hook: per-channel (count, mean, var) of the layer input inside a tile's core
    (``rows``/``cols`` in tile pixels; ``width``: the padded tile width, to find the layer's scale)."""
    x = inputs[0].float()
    factor = x.shape[-1] / width
    core = x[..., int(rows[0] * factor): int(rows[1] * factor), int(cols[0] * factor): int(cols[1] * factor)]
    var, mean = torch.var_mean(core, dim=(0, 2, 3), unbiased=False)
    pieces.append((core[0, 0].numel(), mean.double().cpu(), var.double().cpu()))
    raise _LayerReached


def streaming_norm_statistics(net: nn.Module, rgb: torch.Tensor, rows: list[tuple[int, int]],
                              cols: list[tuple[int, int]], stats: NormStats, precision: str = "fp32",
                              tick: Callable[[], None] | None = None) -> NormStats:
    """Exact whole-image InstanceNorm statistics of a (3, H, W) image, computed tile by tile.

    A layer's statistics depend on every earlier layer's, so they are measured one layer at a
    time, in the order of ``stats`` (the call order :func:`record_norm_statistics` recorded; its
    values are only placeholders for the layers not measured yet): the tiles run through the
    network with the earlier layers already exact and stop at the layer. Each tile contributes
    only its core (:func:`core_spans`), far from its cut edges, and the per-tile means and
    variances are pooled exactly (Chan et al. 1979). Costs about (number of layers) / 2 full
    passes, about 6 for the paper's network: an option for accelerators, not the default.
    ``tick()`` is called after every tile.
    """
    multiple, low = size_multiple(net), min_size(net)
    padded = [_round_up(max(length, low), multiple) for length in rgb.shape[-2:]]
    row_cores, col_cores = core_spans(rows, multiple, padded[0]), core_spans(cols, multiple, padded[1])
    device = next(net.parameters()).device
    exact = dict(stats)
    for name in stats:
        frozen = freeze_norm_statistics(net, exact)
        layer = frozen.get_submodule(name)
        pieces: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        for (top, bottom), (core_top, core_bottom) in zip(rows, row_cores, strict=True):
            for (left, right), (core_left, core_right) in zip(cols, col_cores, strict=True):
                hook = functools.partial(_measure_core, rows=(core_top - top, core_bottom - top),
                                         cols=(core_left - left, core_right - left),
                                         width=_round_up(max(right - left, low), multiple), pieces=pieces)
                handle = layer.register_forward_pre_hook(hook)
                tile = rgb[:, top:bottom, left:right].to(device, torch.float32).unsqueeze(0)
                with contextlib.suppress(_LayerReached):
                    _forward(frozen, tile, precision)
                handle.remove()
                if tick is not None:
                    tick()
        count = sum(n for n, _, _ in pieces)
        mean = sum(n * m for n, m, _ in pieces) / count
        var = sum(n * (v + (m - mean) ** 2) for n, m, v in pieces) / count
        exact[name] = (mean.float().to(device), var.float().to(device))
    return exact


# ------------------------------------------------------------------------------ the model


ImageLike = TypeVar("ImageLike", Image.Image, torch.Tensor)


@dataclass
class InferenceModel:
    """A network ready to process images: device, precision, memory budget, tiling, controls.

    Build one with :func:`stylenet.load_model` (or :meth:`from_file`); it is what
    ``stylenet-stylize`` uses per ``--model``. The network is moved to ``device`` in eval mode.
    """

    net: nn.Module
    metadata: dict[str, Any] = field(default_factory=dict)
    device: torch.device | str = "auto"
    #: fp32, bf16, fp16, or auto: bf16 where the device runs it natively (what stylenet-stylize uses).
    precision: str = "fp32"
    #: Activation bytes one forward pass may use; None = :func:`default_max_memory`.
    max_memory: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in (*PRECISIONS, "auto"):
            raise StylenetError(f"precision must be one of {', '.join(PRECISIONS)} or auto, "
                                f"got {self.precision!r}")
        self.device = resolve_device(str(self.device))
        if self.precision == "auto":  # bf16 where the hardware runs it natively, else fp32
            self.precision = inference_precision(self.device)
        # Exact rewrites of the slow layers (sub-pixel upsampling convolutions, ...), channels_last: see
        # stylenet.fastpath. On the CPU, freed activations are kept for the next layer rather than
        # unmapped and page-faulted in again (1.4-1.8x at 1024 px on 2 cores; the process keeps its peak).
        self.net = optimize_for_inference(self.net.eval().requires_grad_(False), self.device).to(self.device)
        if self.device.type == "cpu":
            reuse_freed_memory()
        self._bytes_per_pixel: float | None = None

    @classmethod
    def from_file(cls, path: str | Path, *, task: str | None = "style", **options: Any) -> InferenceModel:
        """Load a model file (see :func:`stylenet.export.load_model`, never unpickles code) and
        check that it is a ``task`` model (``None`` accepts any)."""
        from stylenet.export import load_model

        exported = load_model(path, task=task)
        return cls(exported.net, exported.metadata, **options)

    @property
    def name(self) -> str:
        """The style's name from the metadata (``{style}`` in output file names); ``x4`` etc. for
        super-resolution models."""
        return str(self.metadata.get("style_name") or (f"x{self.scale}" if self.scale > 1 else "stylized"))

    @property
    def scale(self) -> int:
        return output_scale(self.net)

    def bytes_per_pixel(self) -> float:
        """Activation bytes per input pixel (:func:`activation_bytes_per_pixel`, probed once)."""
        if self._bytes_per_pixel is None:
            self._bytes_per_pixel = activation_bytes_per_pixel(self.net, self.device, self.precision)
        return self._bytes_per_pixel

    def max_pixels(self) -> int:
        """How many input pixels one forward pass may hold under the memory budget."""
        budget = self.max_memory if self.max_memory is not None else default_max_memory(self.device)
        return max(MIN_TILE * MIN_TILE, int(budget / self.bytes_per_pixel()))

    # -------------------------------------------------------------------------- tensors

    @torch.inference_mode()
    def transform(self, rgb: torch.Tensor, controls: Controls | None = None, *, tile: int | None = None,
                  tile_overlap: int = DEFAULT_TILE_OVERLAP, exact_statistics: bool = False,
                  quantize: bool = False, bits: int = 8,
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """(3, H, W) float in [0, 1] (on any device; kept where it is) -> the output on the CPU,
        (3, H * scale, W * scale), float32 in [0, 1] or, with ``quantize``, rounded to ``bits``
        levels: uint8 (a quarter of the memory: what 8-bit files need) or, with ``bits=16``, uint16
        (what 16-bit files need; every step before is float32, so ``Controls(strength=0)`` returns
        the input's 16-bit levels exactly).

        ``tile`` None picks tiles automatically (none if the image fits :meth:`max_pixels`); an
        explicit ``tile`` (input pixels per side) forces tiling. The tiles' InstanceNorm
        statistics come from the whole image if it fits the budget, else from a thumbnail that
        does (the "thumbnail instance normalization" of Chen et al. 2022, "Towards Ultra-Resolution
        Neural Style Transfer"), or, with ``exact_statistics``, from
        :func:`streaming_norm_statistics` (exact, several times the cost). On running out of
        memory the tile side is halved, down to :data:`MIN_TILE`, then a :class:`StylenetError` is
        raised. ``progress(done, total)`` is called after every tile pass.
        """
        if rgb.ndim != 3 or rgb.shape[0] != 3 or not rgb.is_floating_point():
            raise StylenetError(f"expected a float (3, H, W) image tensor, got {rgb.dtype} "
                                f"{tuple(rgb.shape)}")
        if tile is not None and tile < MIN_TILE:
            raise StylenetError(f"--tile must be at least {MIN_TILE} px, got {tile}")
        if tile_overlap < 0:
            raise StylenetError(f"--tile-overlap must be >= 0, got {tile_overlap}")
        if bits not in (8, 16):
            raise StylenetError(f"bits must be 8 or 16, got {bits}")
        controls = controls or Controls()
        height, width = rgb.shape[-2:]
        multiple = size_multiple(self.net)
        pixels: int | None = None  # the budget, in input pixels per forward pass
        side = MIN_TILE  # the size of the memory probe
        while True:
            try:
                pixels = self.max_pixels() if pixels is None else pixels
                if tile is None and height * width <= pixels:
                    side = max(height, width)  # one tile: the whole image
                else:
                    side = max(MIN_TILE, min(tile or pixels, math.isqrt(pixels)) // multiple * multiple)
                return self._run_tiles(rgb, controls, side, tile_overlap, pixels, exact_statistics,
                                       bits if quantize else None, progress)
            except Exception as err:
                if not _is_out_of_memory(err):
                    raise
                _release_cached_memory(self.device)
                if pixels is None or side <= MIN_TILE:
                    raise StylenetError(
                        f"out of memory on {self.device} even with {side} px tiles ({first_line(err)}); "
                        "try a smaller --max-size, --precision bf16, or --device cpu") from err
                log.warning("out of memory on %s with %d px tiles; retrying with smaller tiles",
                            self.device, side)
                pixels = max(MIN_TILE * MIN_TILE, min(pixels, side * side) // 4)

    def _run_tiles(self, rgb: torch.Tensor, controls: Controls, side: int, overlap: int, pixels: int,
                   exact_statistics: bool, bits: int | None, progress: Callable[[int, int], None] | None
                   ) -> torch.Tensor:
        """One attempt at :meth:`transform` with ``side`` px tiles (one tile if the image fits);
        ``bits`` None keeps float32, 8 or 16 quantises finished rows to that many bits."""
        net, scale, multiple = self.net, self.scale, size_multiple(self.net)
        height, width = rgb.shape[-2:]
        overlap = min(_round_up(overlap, multiple), side // 2 // multiple * multiple)
        grid = _Grid.plan(height, width, side, overlap, multiple, scale)
        norms = len(_instance_norms(net)) if grid.count > 1 else 0
        streaming = norms > 0 and exact_statistics and height * width > pixels
        done, total = 0, grid.count * (1 + (norms if streaming else 0))

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        if norms:
            stats = self._global_statistics(rgb, pixels)
            if streaming:
                stats = streaming_norm_statistics(self.net, rgb, grid.rows, grid.cols, stats,
                                                  self.precision, tick)
            net = freeze_norm_statistics(net, stats)

        dtype = {None: torch.float32, 8: torch.uint8, 16: torch.uint16}[bits]
        top_level = float(2**bits - 1) if bits else 1.0
        out = torch.empty(3, height * scale, width * scale, dtype=dtype)
        carry: torch.Tensor | None = None  # output rows the next row of tiles still adds to
        for index, ((top, bottom), row_weight) in enumerate(zip(grid.rows, grid.row_weights, strict=True)):
            band = torch.zeros(3, (bottom - top) * scale, width * scale)
            if carry is not None:
                band[:, : carry.shape[1]] += carry
            for (left, right), col_weight in zip(grid.cols, grid.col_weights, strict=True):
                piece = self._run_tile(net, rgb[:, top:bottom, left:right], controls)
                weight = row_weight.to(piece.device)[:, None] * col_weight.to(piece.device)[None, :]
                band[:, :, left * scale: right * scale] += (piece * weight).cpu()
                tick()
            next_top = grid.rows[index + 1][0] if index + 1 < len(grid.rows) else bottom
            finished = (next_top - top) * scale
            rows = band[:, :finished].clamp_(0.0, 1.0)
            out[:, top * scale: top * scale + finished] = rows.mul_(top_level).round_() if bits else rows
            carry = band[:, finished:]
        return out

    def _run_tile(self, net: nn.Module, tile: torch.Tensor, controls: Controls) -> torch.Tensor:
        """One (3, h, w) tile -> (3, h * scale, w * scale) float32 on the device, controls applied."""
        batch = tile.to(self.device, torch.float32).unsqueeze(0)
        output = _forward(net, batch, self.precision)
        content = None
        if controls.needs_content and self.scale == 1:
            content = batch
        elif controls.needs_content:
            content = F.interpolate(batch, scale_factor=self.scale, mode="bicubic")
        return controls.apply(output, content)[0]

    def _global_statistics(self, rgb: torch.Tensor, pixels: int
                           ) -> NormStats:
        """InstanceNorm statistics of the whole image, from a copy downscaled to fit ``pixels``."""
        height, width = rgb.shape[-2:]
        factor = min(1.0, math.sqrt(pixels / (height * width)))
        size = (max(1, int(height * factor)), max(1, int(width * factor)))
        if factor < 1.0:
            log.info("InstanceNorm statistics from a %dx%d copy of the %dx%d image",
                     size[1], size[0], width, height)
        copy_ = resize(rgb, size).to(self.device, torch.float32).unsqueeze(0)
        return record_norm_statistics(self.net, copy_, self.precision)

    # -------------------------------------------------------------------------- images

    def process(self, image: LoadedImage, controls: Controls | None = None, *,
                size: tuple[int, int] | None = None, keep_gray: bool = False, quantize: bool = False,
                **tiling: Any) -> LoadedImage:
        """A decoded image -> the output image: resized to ``size`` (H, W) first if given, alpha
        re-attached (bit-exact unless resized), ICC profile passed through, greyscale inputs
        written as grey with ``keep_gray``; ``quantize`` rounds to the source's depth
        (``image.bits``: uint16 for 16-bit sources, which :func:`stylenet.image.save_image` writes as
        16-bit PNG or TIFF). ``tiling``: :meth:`transform`'s keyword arguments."""
        controls = controls or Controls()
        if keep_gray and image.was_gray:
            controls = Controls(controls.strength, controls.preserve_color, gray=True)
        rgb = resize(image.rgb, size) if size is not None else image.rgb
        out = self.transform(rgb, controls, quantize=quantize, bits=16 if image.bits > 8 else 8, **tiling)
        return LoadedImage(rgb=out, alpha=_resize_alpha(image.alpha, tuple(out.shape[-2:])),
                           icc_profile=image.icc_profile, was_gray=image.was_gray and keep_gray, bits=image.bits)

    def stylize(self, image: ImageLike, *, strength: float = 1.0, preserve_color: bool = False,
                tile: int | None = None, tile_overlap: int = DEFAULT_TILE_OVERLAP,
                exact_statistics: bool = False, keep_gray: bool = False) -> ImageLike:
        """The notebook API: a PIL image -> a PIL image (EXIF orientation applied, alpha kept,
        mode L back for greyscale inputs with ``keep_gray``), or a float tensor (3, H, W) /
        (B, 3, H, W) in [0, 1] -> a float tensor of the same shape (times ``scale``)."""
        controls = Controls(strength, preserve_color)
        tiling = {"tile": tile, "tile_overlap": tile_overlap, "exact_statistics": exact_statistics}
        if isinstance(image, torch.Tensor):
            if image.ndim == 4:
                return torch.stack([self.transform(one, controls, **tiling) for one in image])
            return self.transform(image, controls, **tiling)
        if not isinstance(image, Image.Image):
            raise TypeError(f"stylize() takes a PIL image or a tensor, got {type(image).__name__}")
        result = self.process(_from_pil(image), controls, keep_gray=keep_gray, quantize=True, **tiling)
        pil = to_pil(result.rgb, result.alpha)
        if result.was_gray:
            pil = pil.convert("LA" if result.alpha is not None else "L")
        if result.icc_profile:
            pil.info["icc_profile"] = result.icc_profile
        return pil


def _from_pil(image: Image.Image) -> LoadedImage:
    """A PIL image -> :class:`LoadedImage` with the same mode handling as files get.

    Uses ``stylenet.image``'s decoder so that 16-bit, palette-with-transparency, LA etc. behave
    exactly as ``load_image`` does; ``stylenet.image`` has no public PIL entry point (yet).
    """
    from stylenet.image import _decode, _rgb_icc

    upright = ImageOps.exif_transpose(image)
    rgb, alpha, was_gray = _decode(upright)
    rgb_t = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
    alpha_t = None if alpha is None else torch.from_numpy(alpha.copy())[None]
    return LoadedImage(rgb=rgb_t, alpha=alpha_t, icc_profile=_rgb_icc(image.info.get("icc_profile")),
                       was_gray=was_gray)
