"""Inference: running a network on any image, any size, any device, in bounded memory, through one code path.

``stylenet-stylize``, the notebook API (``stylenet.load_model(path).stylize(...)``) and the training
preview all run networks through this package, and so can any image-to-image network that declares

* ``size_multiple`` (default 1): H and W of its input must be multiples of it (4 for
  :class:`~stylenet.nets.TransformerNet`: two stride-2 convolutions, two x2 upsamplings);
* ``min_size`` (default ``max(8, 2 * size_multiple)``): the smallest input side its reflection
  pads accept (a 9x9 reflection pad needs 5 px; TransformerNet's 3x3 pads at 1/4 scale need 8 px);
* ``scale`` (default 1): output side / input side, e.g. 4 for a x4 super-resolution network.

The pieces, and why:

* **Any size**: inputs are padded at the bottom/right to the network's multiple (reflection, so the
  network sees image-like content, not a dark border; edge replication for inputs smaller than the
  padding, down to 1x1) and the output is cropped back, so output size == input size x ``scale``.
* **Exact beyond the memory budget**: a TransformerNet too big for one pass runs layer by layer over
  the whole image in horizontal bands (:mod:`~stylenet.inference.layerwise`), so every InstanceNorm
  gets the whole image's statistics and the result is the one-pass result, in about two layers'
  activations. Other networks, and ``tile=``/``--tile``, run in tiles:
* **Tiles with consistent InstanceNorm statistics**: Instance Normalization (Ulyanov et al. 2016)
  normalises every feature map by its own mean and variance, so running tiles independently gives
  each tile its own contrast and colour cast: visible seams. When an image needs several tiles,
  a first pass over the whole image records every InstanceNorm layer's per-channel mean/var; the
  tiles then run with those statistics frozen (the layers are swapped for
  :class:`FrozenInstanceNorm`), so they compute what the whole image would, up to the receptive
  field cut at tile borders. A tiled image beyond the memory budget gets its statistics from a
  thumbnail (consistent across tiles, but not the full-size values: Chen et al. 2022's
  "thumbnail instance normalization") or, on request, exactly from
  :func:`streaming_norm_statistics`, layer by layer over the tiles. Tiles overlap and are blended with
  linear ramps that are 0 at a tile's inner edges (where the cut receptive field hurts most) and
  sum to 1 everywhere, so the blend adds no seams of its own. Tile origins are multiples of
  ``size_multiple`` so every tile sees the same stride-2 sampling grid as the whole image.
* **Video frames** stream through :meth:`InferenceModel.stylize_frames`, which keeps its buffers across
  frames of one size (:mod:`~stylenet.inference.frames`).
* **Bounded memory**: a tile's activation memory is estimated from a tiny probe pass, tiles are
  sized to ``max_memory``, the image stays on the CPU (only tiles and a downscaled statistics copy
  go to the device), and finished output rows are quantised band by band, to uint8, or to uint16
  for 16-bit sources (tiles, blend and controls stay float32, so 16 bits survive). Running out of
  memory is retried in the plain one pass (after the faster pre-padded one) or with smaller tiles, then
  reported as a :class:`~stylenet.StylenetError`; it is never swallowed.
* **One geometry**: every pass pads and crops through :func:`padded_forward`, which the ONNX and
  ``.pt2`` exports call too, so all of them see the same padding (it enters InstanceNorm's statistics).
* **Precision**: every pass over an image takes it less its per-channel mean
  (:func:`~stylenet.inference.geometry.input_offset`), which an instance-normalised first layer
  cannot see, so bf16 keeps its bits for the image's detail rather than its overall brightness
  (on a bright, low-contrast photo, 0.3 instead of 1.5 grey levels of mean error against float64).
* **Controls** (:class:`Controls`) are per-pixel, so they are applied tile by tile: ``strength``
  blends with the content; ``preserve_color`` is the luminance-only transfer of Gatys et al. 2016,
  "Preserving Color in Neural Artistic Style Transfer" (Sec. 2): keep the content's chroma,
  take the stylised luminance.

The modules, one concept each: :mod:`~stylenet.inference.geometry` (padding, cropping, the one
forward pass), :mod:`~stylenet.inference.memory` (budget and probe), :mod:`~stylenet.inference.layerwise`,
:mod:`~stylenet.inference.frames`, :mod:`~stylenet.inference.prepadded` (the one pass on the CPU, faster),
:mod:`~stylenet.inference.tiling`,
:mod:`~stylenet.inference.norms` (InstanceNorm statistics), :mod:`~stylenet.inference.controls` and
:mod:`~stylenet.inference.model` (:class:`InferenceModel`); their public names are importable from
``stylenet.inference``.
"""

from __future__ import annotations

from stylenet.inference.controls import Controls
from stylenet.inference.geometry import (
    PRECISIONS,
    crop_to,
    min_size,
    output_scale,
    pad_to_multiple,
    padded_forward,
    run_network,
    size_multiple,
)
from stylenet.inference.layerwise import layerwise_bands, layerwise_forward
from stylenet.inference.memory import CPU_MAX_MEMORY, activation_bytes_per_pixel, default_max_memory
from stylenet.inference.model import InferenceModel
from stylenet.inference.norms import (
    FrozenInstanceNorm,
    NormStats,
    core_spans,
    freeze_norm_statistics,
    record_norm_statistics,
    streaming_norm_statistics,
)
from stylenet.inference.tiling import DEFAULT_TILE_OVERLAP, MIN_TILE, tile_spans, tile_weights

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
    "freeze_norm_statistics",
    "layerwise_bands",
    "layerwise_forward",
    "min_size",
    "output_scale",
    "pad_to_multiple",
    "padded_forward",
    "record_norm_statistics",
    "run_network",
    "size_multiple",
    "streaming_norm_statistics",
    "tile_spans",
    "tile_weights",
]
