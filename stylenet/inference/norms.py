"""InstanceNorm statistics: record them on one image, freeze them for its tiles, or compute them
exactly, layer by layer, over the tiles.

Instance Normalization (Ulyanov et al. 2016) normalises every feature map by its own mean and
variance, so tiles run independently would each get their own contrast and colour cast: visible
seams. Tiles therefore run with the whole image's statistics frozen into the network
(:class:`FrozenInstanceNorm`), so they compute what the whole image would, up to the receptive
field cut at tile borders.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stylenet.image import unit_float
from stylenet.inference.geometry import forward, min_size, round_up, size_multiple

#: Per InstanceNorm layer (by module name): per-channel input (mean, biased variance).
NormStats = dict[str, tuple[torch.Tensor, torch.Tensor]]


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


def instance_norms(net: nn.Module) -> dict[str, nn.InstanceNorm2d]:
    """Every InstanceNorm layer of ``net``, by module name, in definition order."""
    return {name: m for name, m in net.named_modules() if isinstance(m, nn.InstanceNorm2d)}


@torch.inference_mode()
def record_norm_statistics(net: nn.Module, image: torch.Tensor, precision: str = "fp32"
                           ) -> NormStats:
    """Run ``net`` on (1, 3, H, W) ``image`` and return every InstanceNorm layer's input
    ``(mean, var)`` per channel (biased variance, as InstanceNorm uses), keyed by module name.

    The recording hooks go on a copy: hooks on the caller's network would also record whatever
    another thread (the web page's other workers) runs through it meanwhile."""
    net = copy.deepcopy(net)
    stats: NormStats = {}

    def recorder(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            var, mean = torch.var_mean(inputs[0].float(), dim=(0, 2, 3), unbiased=False)
            stats[name] = (mean, var)
        return hook

    for name, m in instance_norms(net).items():
        m.register_forward_pre_hook(recorder(name))
    forward(net, image, precision)
    return stats


def freeze_norm_statistics(net: nn.Module, stats: NormStats) -> nn.Module:
    """A copy of ``net`` whose InstanceNorm layers use ``stats`` (see :func:`record_norm_statistics`).

    A copy (a few MB) rather than swapping modules in place, so the caller's network is never left
    modified, even by an exception, and can be shared between threads.
    """
    frozen = copy.deepcopy(net)
    for name, norm in instance_norms(frozen).items():
        parent_name, _, child = name.rpartition(".")
        setattr(frozen.get_submodule(parent_name), child, FrozenInstanceNorm(norm, *stats[name]))
    return frozen


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
                              tick: Callable[[], None] | None = None, *, offset: torch.Tensor | None = None
                              ) -> NormStats:
    """Exact whole-image InstanceNorm statistics of a (3, H, W) image, computed tile by tile.

    A layer's statistics depend on every earlier layer's, so they are measured one layer at a
    time, in the order of ``stats`` (the call order :func:`record_norm_statistics` recorded; its
    values are only placeholders for the layers not measured yet): the tiles run through the
    network with the earlier layers already exact and stop at the layer. Each tile contributes
    only its core (:func:`core_spans`), far from its cut edges, and the per-tile means and
    variances are pooled exactly (Chan et al. 1979). Costs about (number of layers) / 2 full
    passes, about 6 for the paper's network: an option for accelerators, not the default.
    ``tick()`` is called after every tile; the network takes each tile less ``offset`` (on the
    device; :func:`~stylenet.inference.geometry.input_offset`).
    """
    multiple, low = size_multiple(net), min_size(net)
    padded = [round_up(max(length, low), multiple) for length in rgb.shape[-2:]]
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
                                         width=round_up(max(right - left, low), multiple), pieces=pieces)
                handle = layer.register_forward_pre_hook(hook)
                tile = unit_float(rgb[:, top:bottom, left:right], device).unsqueeze(0)
                with contextlib.suppress(_LayerReached):
                    forward(frozen, tile if offset is None else tile - offset, precision)
                handle.remove()
                if tick is not None:
                    tick()
        count = sum(n for n, _, _ in pieces)
        mean = sum(n * m for n, m, _ in pieces) / count
        var = sum(n * (v + (m - mean) ** 2) for n, m, v in pieces) / count
        exact[name] = (mean.float().to(device), var.float().to(device))
    return exact
