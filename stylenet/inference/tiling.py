"""Tiling: which tiles cover an image, and the weights that blend their outputs without seams.

Tiles overlap and are blended with linear ramps that are 0 at a tile's inner edges (where the cut
receptive field hurts most) and sum to 1 everywhere, so the blend adds no seams of its own. Tile
origins are multiples of ``size_multiple`` so every tile sees the same stride-2 sampling grid as
the whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stylenet.inference.geometry import round_up

#: Overlap between neighbouring tiles, in input pixels. Measured with scripts/tile_check.py: the
#: paper's network has a receptive field of ~100 px, but a tile's output only drifts within ~20 px of
#: a cut, and the ramp gives those pixels almost no weight.
DEFAULT_TILE_OVERLAP = 64
#: No automatic or retried tile gets smaller than this (input pixels per side).
MIN_TILE = 64


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
    even = math.ceil((length + (count - 1) * round_up(overlap, multiple)) / count)
    tile = min(tile, round_up(even, multiple))
    step = round_up(math.ceil((length - tile) / (count - 1)), multiple)
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
class TileGrid:
    """Tile layout of one image, in input pixels, and its blending weights in output pixels."""

    rows: list[tuple[int, int]]
    cols: list[tuple[int, int]]
    row_weights: list[torch.Tensor]
    col_weights: list[torch.Tensor]

    @classmethod
    def plan(cls, height: int, width: int, tile: int, overlap: int, multiple: int, scale: int) -> TileGrid:
        """Tiles of at most ``tile`` input px overlapping by ``overlap``; weights for ``scale`` x outputs."""
        rows = tile_spans(height, tile, overlap, multiple)
        cols = tile_spans(width, tile, overlap, multiple)
        return cls(rows, cols, tile_weights(scaled_spans(rows, scale), overlap * scale),
                   tile_weights(scaled_spans(cols, scale), overlap * scale))

    @property
    def count(self) -> int:
        """The number of tiles."""
        return len(self.rows) * len(self.cols)


def scaled_spans(spans: list[tuple[int, int]], scale: int) -> list[tuple[int, int]]:
    """Spans in input pixels -> the same spans in output pixels."""
    return [(start * scale, stop * scale) for start, stop in spans]
