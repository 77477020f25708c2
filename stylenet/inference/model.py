"""The inference model: a network ready to turn images of any size into outputs, on any device,
within a memory budget, through one code path.

``stylenet-stylize``, ``stylenet-upscale``, the notebook API (``stylenet.load_model(path)``) and
``stylenet-evaluate-sr`` all run networks through :class:`InferenceModel`. An image that fits the
memory budget runs in one pass; a larger one runs layer by layer in bands
(:mod:`stylenet.inference.layerwise`: the one-pass result, exactly, in bounded memory) when the
network is a TransformerNet, else in tiles (:mod:`stylenet.inference.tiling`) with consistent
InstanceNorm statistics (:mod:`stylenet.inference.norms`); ``tile=`` asks for tiles. The image
stays on the CPU and finished output rows are quantised band by band. Running out of memory is
retried with smaller tiles, then reported as a :class:`~stylenet.StylenetError`; it is never
swallowed. Video frames stream through :meth:`InferenceModel.stylize_frames`.

Nothing here changes the process: :func:`stylenet.fastpath.reuse_freed_memory`, which makes CPU
inference faster by changing glibc's allocator for the whole process, is the application's choice
(the command-line tools and the trainer make it).
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from stylenet.devices import resolve_device
from stylenet.errors import StylenetError, first_line
from stylenet.fastpath import inference_precision, optimize_for_inference
from stylenet.image import LoadedImage, fitting_icc_profile, from_pil, resize, resize_alpha, to_pil, unit_float
from stylenet.inference.controls import Controls, upsampled_crop
from stylenet.inference.frames import Frame, check_unit_range, stream_frames
from stylenet.inference.geometry import (
    PRECISIONS,
    check_size,
    forward,
    input_offset,
    output_scale,
    padded_pixels,
    round_up,
    size_multiple,
)
from stylenet.inference.layerwise import layerwise_bands, network_layers
from stylenet.inference.memory import (
    MEMORY_PROBE_SIDE,
    activation_bytes_per_pixel,
    check_image_memory,
    default_max_memory,
    is_out_of_memory,
    release_cached_memory,
)
from stylenet.inference.norms import (
    NormStats,
    freeze_norm_statistics,
    instance_norms,
    record_norm_statistics,
    streaming_norm_statistics,
)
from stylenet.inference.prepadded import prepadded_forward
from stylenet.inference.tiling import DEFAULT_TILE_OVERLAP, MIN_TILE, TileGrid
from stylenet.modelfile import read_model
from stylenet.styles import StyleChoice, choice_weights, style_names

log = logging.getLogger(__name__)

ImageLike = TypeVar("ImageLike", Image.Image, torch.Tensor)


@dataclass
class InferenceModel:
    """A network ready to process images: device, precision, memory budget, tiling, controls.

    Build one with :func:`stylenet.load_model` (or :meth:`from_file`); it is what
    ``stylenet-stylize`` uses per ``--model``. A copy of the network, rewritten for speed
    (:func:`stylenet.fastpath.optimize_for_inference`), is moved to ``device`` in eval mode.
    Process-wide settings are left alone: on the CPU, applications call
    :func:`stylenet.fastpath.reuse_freed_memory` themselves if they want its speed.
    """

    net: nn.Module
    metadata: dict[str, Any] = field(default_factory=dict)
    device: torch.device | str = "auto"
    #: fp32, bf16, fp16, or auto (the default, as in stylenet-stylize): bf16 where the device runs it
    #: natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs with bf16), else fp32.
    precision: str = "auto"
    #: Activation bytes one forward pass may use; None = :func:`default_max_memory`.
    max_memory: int | None = None
    #: The model file it came from (named in errors).
    source: str | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        """``precision`` and ``max_memory`` are checked whenever they are set, as the model is made or later
        (``model.precision = "bf16"`` applies to the next image; a bad value was a KeyError there). ``device`` is
        the network's: fixed once the model is made (a string set later broke every call)."""
        if name == "device" and "_by_style" in self.__dict__:  # (set last by __post_init__)
            raise StylenetError(f"device is fixed once a model is loaded ({self.device}): load it again with "
                                f"load_model(..., device={str(value)!r})")
        if name == "precision":
            if value not in (*PRECISIONS, "auto"):
                raise StylenetError(f"precision must be one of {', '.join(PRECISIONS)} or auto, got {value!r}")
            if value == "auto" and isinstance(self.__dict__.get("device"), torch.device):  # set after the model
                value = inference_precision(self.device)  # was made (__post_init__ resolves the first "auto")
        elif name == "max_memory" and value is not None and (not isinstance(value, numbers.Integral)
                                                             or isinstance(value, bool) or value <= 0):
            raise StylenetError(f"max_memory must be a number of bytes > 0 or None, got {value!r}")
        super().__setattr__(name, value)

    def __post_init__(self) -> None:
        self.device = resolve_device(str(self.device))
        if self.precision == "auto":  # bf16 where the hardware runs it natively, else fp32
            self.precision = inference_precision(self.device)
        #: a network of several styles (Dumoulin et al. 2017) runs as the single-style network of the
        #: chosen style or blend (:meth:`for_style`), one per choice, kept for the next image
        self._by_style: dict[tuple[str | float | int | None, ...], InferenceModel] = {}
        self._by_style_lock = threading.Lock()  # one model used by several threads (a web server's)
        #: per (precision, pre-padded or not): the network, its pass of one image (None where the pre-padded
        #: one does not apply) and that pass's activation bytes per pixel (:meth:`_probed`)
        self._probes: dict[tuple[str, bool], tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None,
                                                   float]] = {}
        if getattr(self.net, "styles", 1) > 1:
            self._layerwise = False
            return
        # Exact rewrites of the slow layers (sub-pixel upsampling convolutions, ...), channels_last: see
        # stylenet.fastpath. Process-wide settings (reuse_freed_memory) are the application's to make.
        self.net = optimize_for_inference(self.net.eval().requires_grad_(False), self.device).to(self.device)
        self._layerwise = network_layers(self.net) is not None

    @classmethod
    def from_file(cls, path: str | Path, *, task: str | None = "style", **options: Any) -> InferenceModel:
        """Load a model file (see :func:`stylenet.modelfile.read_model`, never unpickles code) and
        check that it is a ``task`` model (``None`` accepts any)."""
        stored = read_model(path, task=task)
        return cls(stored.net, stored.metadata, source=str(path), **options)

    @property
    def styles(self) -> list[str]:
        """The styles of the model (several for a network of several styles, else its one)."""
        return style_names(self.metadata)

    @property
    def multi(self) -> bool:
        """Whether the network holds several styles: each call then names a style or a blend."""
        return getattr(self.net, "styles", 1) > 1

    #: Single-style networks of a multi-style model kept for reuse (chosen styles and blends).
    CACHED_STYLES = 16

    def for_style(self, style: StyleChoice | None) -> InferenceModel:
        """The model of one style: a name, an index or a ``{name: weight}`` blend of a network of
        several styles (:meth:`stylenet.modelfile.StoredModel.for_style`), as a single-style
        :class:`InferenceModel` (same device, precision and budget; ``name`` is the style's or the
        blend's label). A single-style model returns itself for its own name. ``None`` on a model of
        several styles and unknown names are one-line errors listing the styles."""
        if style is None and not self.multi:
            return self
        self._check_has_styles()
        if style is None:
            raise StylenetError(f"model file {self.source!r} holds {len(self.styles)} styles: pass style= one "
                                f"of {', '.join(self.styles)}, or a {{name: weight}} blend")
        label, weights = choice_weights(self.styles, style, f"model file {self.source!r}")
        if not self.multi:
            return self
        # by label too (7:3 and 0.7:0.3 name their files apart), and by the settings it was built with: a later
        # model.precision = "bf16" applies, as it does to a single-style model
        key = (str(self.device), self.precision, self.max_memory, label, *weights)
        with self._by_style_lock:
            model = self._by_style.pop(key, None)  # put back last: the least recently used goes first
            if model is None:
                net = self.net.single_style(weights).eval()
                metadata = {k: v for k, v in self.metadata.items() if k != "styles"}
                model = InferenceModel(net, {**metadata, "style_name": label}, self.device, self.precision,
                                       self.max_memory, self.source)
                while len(self._by_style) >= self.CACHED_STYLES:
                    self._by_style.pop(next(iter(self._by_style)))
            self._by_style[key] = model
        return model

    def let_go_of_styles(self, budget: int, keep: InferenceModel | None = None) -> None:
        """Forget the single-style networks :meth:`for_style` keeps, the least recently used first, but
        ``keep``, until :attr:`weight_bytes` is at most ``budget`` (a server's memory plan)."""
        while self.weight_bytes > budget:
            with self._by_style_lock:
                victim = next((key for key, model in self._by_style.items() if model is not keep), None)
                if victim is None:
                    return
                del self._by_style[victim]

    def _check_has_styles(self) -> None:
        """A style named for a super-resolution model was refused as not among its styles ("stylized")."""
        if self.metadata.get("task") == "sr" or self.scale > 1:  # (a network wrapped directly has no metadata)
            what = f"model file {self.source!r}" if self.source else "this model"
            raise StylenetError(f"{what} is a super-resolution model ({self.name}): it has no styles to choose "
                                "from; leave the style out")

    def selected(self, styles: list[str] | None = None,
                 blends: list[dict[str, float]] | None = None) -> list[InferenceModel]:
        """The models ``stylenet-stylize`` runs: one per style named in ``styles`` and one per blend
        in ``blends``, a choice named twice once (its outputs would be the same file); with neither,
        every style of the model (one, for a single-style model)."""
        if not styles and not blends:
            return [self.for_style(name) for name in self.styles] if self.multi else [self]
        self._check_has_styles()
        chosen: dict[tuple[object, ...], InferenceModel] = {}
        for choice in [*(styles or []), *(blends or [])]:
            label, weights = choice_weights(self.styles, choice, f"model file {self.source!r}")
            key = (label, *weights)  # the same output; another choice of one label goes on to be refused
            if key not in chosen:
                chosen[key] = self.for_style(choice)
        return list(chosen.values())

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights this model holds: its network's (and copies made for another precision),
        and the single-style networks it keeps for the next image (:meth:`for_style`). What a program
        that keeps models loaded (``stylenet-serve``) counts against its memory."""
        nets = [self.net, *(probe[0] for probe in self._probes.values())]
        held = {tensor.data_ptr(): tensor.numel() * tensor.element_size()  # shared storage counted once
                for net in nets for tensor in (*net.parameters(), *net.buffers())}
        with self._by_style_lock:
            kept = list(self._by_style.values())
        return sum(held.values()) + sum(model.weight_bytes for model in kept)

    @property
    def name(self) -> str:
        """The style's name from the metadata (``{style}`` in output file names); ``x4`` etc. for
        super-resolution models."""
        return str(self.metadata.get("style_name") or (f"x{self.scale}" if self.scale > 1 else "stylized"))

    @property
    def scale(self) -> int:
        """Output side / input side (see :func:`stylenet.inference.geometry.output_scale`)."""
        return output_scale(self.net)

    def bytes_per_pixel(self) -> float:
        """Activation bytes per input pixel (:func:`activation_bytes_per_pixel`, probed once per precision
        and network); of a network of several styles, those of the single-style network each style runs as."""
        if self.multi:
            return self.for_style(self.styles[0]).bytes_per_pixel()
        return self._probed(prepadded=False)[1]

    def _probed(self, prepadded: bool) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, float]:
        """The pass of one image (the one pass, or through pre-padded buffers:
        :func:`~stylenet.inference.prepadded.prepadded_forward`, the same image bit for bit, faster on the
        CPU, None where it does not apply) and its activation bytes per input pixel, probed once per
        precision and network. The pre-padded pass allocates every layer's buffer up front, so its peak is
        about twice the one pass's: it gets its own probe."""
        key = (self.precision, prepadded)
        found = self._probes.get(key)
        if found is None or found[0] is not self.net:
            run = prepadded_forward(self.net, self.precision, self.device, keep=False) if prepadded else \
                functools.partial(forward, self.net, precision=self.precision)
            per_pixel = 0.0 if run is None else activation_bytes_per_pixel(self.net, self.device, self.precision,
                                                                          run=run)
            found = self._probes[key] = (self.net, run, per_pixel)
        return found[1], found[2]

    def budget(self) -> int:
        """Activation bytes one forward pass may use (``max_memory`` or the device's default)."""
        return self.max_memory if self.max_memory is not None else default_max_memory(self.device)

    def max_pixels(self) -> int:
        """How many input pixels one forward pass may hold under the memory budget."""
        return max(MIN_TILE * MIN_TILE, int(self.budget() / self.bytes_per_pixel()))

    # -------------------------------------------------------------------------- tensors

    @torch.inference_mode()
    def transform(self, rgb: torch.Tensor, controls: Controls | None = None, *, tile: int | None = None,
                  tile_overlap: int = DEFAULT_TILE_OVERLAP, exact_statistics: bool = False,
                  quantize: bool = False, bits: int = 8,
                  progress: Callable[[int, int], None] | None = None,
                  style: StyleChoice | None = None) -> torch.Tensor:
        """(3, H, W) float in [0, 1], or uint8 levels ``k`` meaning ``k / 255`` (an 8-bit image held
        compactly: :func:`stylenet.image.compact`), on any device (kept where it is) -> the output on the CPU,
        (3, H * scale, W * scale), float32 in [0, 1] or, with ``quantize``, rounded to ``bits``
        levels: uint8 (a quarter of the memory: what 8-bit files need) or, with ``bits=16``, uint16
        (what 16-bit files need; every step before is float32, so ``Controls(strength=0)`` returns
        the input's 16-bit levels exactly).

        ``tile`` None runs an image that fits :meth:`max_pixels` in one pass and a larger one
        layer by layer (:func:`~stylenet.inference.layerwise.layerwise_bands`: the one-pass result
        in bounded memory) if the network allows, else in tiles with exact statistics (below). An
        explicit ``tile`` (input pixels per side) forces tiling. The tiles' InstanceNorm statistics
        come from the whole image if it fits the budget, else from a thumbnail that does (the
        "thumbnail instance normalization" of Chen et al. 2022, "Towards Ultra-Resolution Neural
        Style Transfer"), or, with ``exact_statistics``, from :func:`streaming_norm_statistics`
        (exact, several times the cost). On running out of memory the tile side is halved, down to
        :data:`MIN_TILE`, then a :class:`StylenetError` is raised. ``progress(done, total)`` is
        called after every tile pass (every band, layer by layer). ``style``: a style name, index or
        ``{name: weight}`` blend (:meth:`for_style`), required by a model of several styles.
        """
        if style is not None or self.multi:
            return self.for_style(style).transform(rgb, controls, tile=tile, tile_overlap=tile_overlap,
                                                   exact_statistics=exact_statistics, quantize=quantize, bits=bits,
                                                   progress=progress)
        _check_transform(rgb, tile, tile_overlap, bits, exact_statistics=exact_statistics, quantize=quantize)
        controls = controls or Controls()
        # every piece of the image the network sees is taken less this, once it is float32 on the device
        offset = input_offset(self.net, rgb)
        offset = None if offset is None else offset.to(self.device)
        height, width = rgb.shape[-2:]
        multiple = size_multiple(self.net)
        pixels: int | None = None  # the budget, in input pixels per forward pass
        side = MIN_TILE  # the size of the memory probe
        if tile is None and self._layerwise and padded_pixels(self.net, height, width) > self.max_pixels():
            try:
                return self._run_layerwise(rgb, offset, controls, bits if quantize else None, progress)
            except Exception as err:
                if not is_out_of_memory(err):
                    raise
                release_cached_memory(self.device)
                log.warning("out of memory on %s layer by layer; retrying in tiles", self.device)
        while True:
            try:
                pixels = self.max_pixels() if pixels is None else pixels
                if tile is None and padded_pixels(self.net, height, width) <= pixels:
                    side = max(height, width)  # one tile: the whole image
                else:
                    side = max(MIN_TILE, min(tile or pixels, math.isqrt(pixels)) // multiple * multiple)
                # with no tile asked for, the result must be the one-pass result: a network that cannot
                # run layer by layer (a converted pytorch/examples model) gets exact statistics
                exact = exact_statistics or (tile is None and not self._layerwise)
                return self._run_tiles(rgb, offset, controls, side, tile_overlap, pixels, exact,
                                       bits if quantize else None, progress)
            except Exception as err:
                if not is_out_of_memory(err):
                    raise
                release_cached_memory(self.device)
                if pixels is None or side <= MIN_TILE:
                    raise StylenetError(
                        f"out of memory on {self.device} even with {side} px tiles ({first_line(err)}); "
                        "try a smaller --max-size, --precision bf16, or --device cpu") from err
                log.warning("out of memory on %s with %d px tiles; retrying with smaller tiles",
                            self.device, side)
                pixels = max(MIN_TILE * MIN_TILE, min(pixels, side * side) // 4)

    def _run_tiles(self, rgb: torch.Tensor, offset: torch.Tensor | None, controls: Controls, side: int,
                   overlap: int, pixels: int, exact_statistics: bool, bits: int | None,
                   progress: Callable[[int, int], None] | None) -> torch.Tensor:
        """One attempt at :meth:`transform` with ``side`` px tiles (one tile if the image fits), each
        taken less ``offset`` (:func:`input_offset`) for the network; ``bits`` None keeps float32, 8
        or 16 quantises finished rows to that many bits."""
        net, scale, multiple = self.net, self.scale, size_multiple(self.net)
        height, width = rgb.shape[-2:]
        overlap = min(round_up(overlap, multiple), side // 2 // multiple * multiple)
        grid = TileGrid.plan(height, width, side, overlap, multiple, scale)
        norms = len(instance_norms(net)) if grid.count > 1 else 0
        streaming = norms > 0 and exact_statistics and height * width > pixels
        done, total = 0, grid.count * (1 + (norms if streaming else 0))

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        if norms:
            stats = self._global_statistics(rgb, pixels, offset)
            if streaming:
                stats = streaming_norm_statistics(self.net, rgb, grid.rows, grid.cols, stats,
                                                  self.precision, tick, offset=offset)
            net = freeze_norm_statistics(net, stats)

        dtype = {None: torch.float32, 8: torch.uint8, 16: torch.uint16}[bits]
        top_level = float(2**bits - 1) if bits else 1.0
        if grid.count == 1:  # the whole image: its weight is 1 everywhere, so no band to blend into
            rows = self._run_tile(net, rgb, offset, controls).cpu().clamp_(0.0, 1.0)
            tick()
            return rows.mul_(top_level).round_().to(dtype) if bits else rows
        out = torch.empty(3, height * scale, width * scale, dtype=dtype)
        carry: torch.Tensor | None = None  # output rows the next row of tiles still adds to
        for index, ((top, bottom), row_weight) in enumerate(zip(grid.rows, grid.row_weights, strict=True)):
            band = torch.zeros(3, (bottom - top) * scale, width * scale)
            if carry is not None:
                band[:, : carry.shape[1]] += carry
            for (left, right), col_weight in zip(grid.cols, grid.col_weights, strict=True):
                content = None if scale == 1 or not controls.needs_content else \
                    upsampled_crop(rgb, (top, bottom), (left, right), scale, self.device)
                piece = self._run_tile(net, rgb[:, top:bottom, left:right], offset, controls, content)
                weight = row_weight.to(piece.device)[:, None] * col_weight.to(piece.device)[None, :]
                band[:, :, left * scale: right * scale] += (piece * weight).cpu()
                tick()
            next_top = grid.rows[index + 1][0] if index + 1 < len(grid.rows) else bottom
            finished = (next_top - top) * scale
            rows = band[:, :finished].clamp_(0.0, 1.0)
            out[:, top * scale: top * scale + finished] = rows.mul_(top_level).round_() if bits else rows
            carry = band[:, finished:]
        return out

    def _run_layerwise(self, rgb: torch.Tensor, offset: torch.Tensor | None, controls: Controls,
                       bits: int | None, progress: Callable[[int, int], None] | None) -> torch.Tensor:
        """:meth:`transform` layer by layer (bands taken less ``offset``, see :meth:`_run_tiles`); the
        output's rows are finished (controls, quantised) band by band, as they come."""
        height, width = rgb.shape[-2:]
        dtype = {None: torch.float32, 8: torch.uint8, 16: torch.uint16}[bits]
        top_level = float(2**bits - 1) if bits else 1.0
        out = torch.empty(3, height, width, dtype=dtype)
        bands = layerwise_bands(self.net, rgb, precision=self.precision, device=self.device, offset=offset,
                                budget=self.budget(), progress=progress)
        for top, rows in bands:
            bottom = top + rows.shape[1]
            content = unit_float(rgb[:, top:bottom], self.device) if controls.needs_content else None
            rows = controls.apply(rows, content).cpu()
            out[:, top:bottom] = rows.mul_(top_level).round_() if bits else rows
        return out

    def _run_tile(self, net: nn.Module, tile: torch.Tensor, offset: torch.Tensor | None, controls: Controls,
                  content: torch.Tensor | None = None) -> torch.Tensor:
        """One (3, h, w) tile -> (3, h * scale, w * scale) float32 on the device, controls applied
        (with ``content``, the (1, 3, h * scale, w * scale) content to blend, if given, else the tile's);
        the network takes it less ``offset``. The whole image (``net`` the model's own) runs through
        pre-padded buffers where :meth:`_prepadded_fits` (the same image, faster), else, and after
        running out of memory there, in the one pass."""
        batch = unit_float(tile, self.device).unsqueeze(0)
        centred = batch if offset is None else batch - offset
        run = self._probed(prepadded=True)[0] if net is self.net and self._prepadded_fits(*batch.shape[-2:]) \
            else None
        output = self._prepadded_or_one_pass(run, centred) if run is not None else \
            forward(net, centred, self.precision)
        if content is None and controls.needs_content:
            content = batch
        return controls.apply(output, content)[0]

    def _prepadded_or_one_pass(self, prepadded: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor
                               ) -> torch.Tensor:
        """``batch`` through the network's ``prepadded`` pass; after running out of memory there (which drops
        its buffers), through the plain one pass, whose peak is about half."""
        try:
            return prepadded(batch)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            release_cached_memory(self.device)
            log.warning("out of memory on %s through pre-padded buffers; retrying in one pass", self.device)
            return forward(self.net, batch, self.precision)

    def _prepadded_fits(self, height: int, width: int) -> bool:
        """Whether an ``height`` x ``width`` image runs through pre-padded buffers: where they apply and
        their peak fits the memory budget. Images thinner than the probe are not estimated by it
        (their borders are a larger share of their pixels), and they gain nothing."""
        run, per_pixel = self._probed(prepadded=True)
        return run is not None and min(height, width) >= MEMORY_PROBE_SIDE and \
            per_pixel * padded_pixels(self.net, height, width) <= self.budget()

    def _global_statistics(self, rgb: torch.Tensor, pixels: int, offset: torch.Tensor | None) -> NormStats:
        """InstanceNorm statistics of the whole image, from a copy downscaled to fit ``pixels`` (less
        ``offset``: resizing keeps a constant)."""
        height, width = rgb.shape[-2:]
        factor = min(1.0, math.sqrt(pixels / (height * width)))
        size = (max(1, int(height * factor)), max(1, int(width * factor)))
        if factor < 1.0:
            log.info("InstanceNorm statistics from a %dx%d copy of the %dx%d image",
                     size[1], size[0], width, height)
        copy_ = unit_float(resize(rgb, size), self.device).unsqueeze(0)
        return record_norm_statistics(self.net, copy_ if offset is None else copy_ - offset, self.precision)

    # -------------------------------------------------------------------------- images

    def process(self, image: LoadedImage, controls: Controls | None = None, *,
                size: tuple[int, int] | None = None, keep_gray: bool | None = None, quantize: bool = False,
                **tiling: Any) -> LoadedImage:
        """A decoded image -> the output image: resized to ``size`` (H, W) first if given, alpha
        re-attached (bit-exact unless resized), ICC profile passed through, greyscale inputs
        written as grey with ``keep_gray`` (None: by a super-resolution model only, which has learnt no
        colour to add, only to invent a tint); ``quantize`` rounds to the source's depth
        (``image.bits``: uint16 for 16-bit sources, which :func:`stylenet.image.save_image` writes as
        16-bit PNG or TIFF). ``tiling``: :meth:`transform`'s keyword arguments."""
        if not isinstance(image, LoadedImage):
            raise StylenetError(f"process takes a LoadedImage (stylenet.image.load_image or from_pil), got "
                                f"{type(image).__name__}; stylize takes PIL images and tensors")
        asked = [name for name in ("strength", "preserve_color") if name in tiling]
        if asked:  # stylize's keywords: here they are the controls'
            raise StylenetError(f"process takes {asked[0]} in controls=stylenet.inference.Controls(strength, "
                                "preserve_color), not as a keyword")
        if size is not None:
            check_size(size)
        _check_keep_gray(keep_gray)
        controls = controls or Controls()
        keep_gray = self.scale > 1 if keep_gray is None else keep_gray
        if keep_gray and image.was_gray:
            controls = Controls(controls.strength, controls.preserve_color, gray=True)
        if size is not None:
            check_image_memory(*size, self.scale)
        rgb = resize(image.rgb, size) if size is not None else image.rgb
        out = self.transform(rgb, controls, quantize=quantize, bits=16 if image.bits > 8 else 8, **tiling)
        gray = image.was_gray and keep_gray
        return LoadedImage(rgb=out, alpha=resize_alpha(image.alpha, tuple(out.shape[-2:])),
                           icc_profile=fitting_icc_profile(image.icc_profile, gray=gray), was_gray=gray,
                           bits=image.bits)

    def stylize(self, image: ImageLike, *, style: StyleChoice | None = None, strength: float = 1.0,
                preserve_color: bool = False, tile: int | None = None, tile_overlap: int = DEFAULT_TILE_OVERLAP,
                exact_statistics: bool = False, keep_gray: bool | None = None) -> ImageLike:
        """The notebook API: a PIL image -> a PIL image (EXIF orientation applied, alpha kept,
        mode L back for greyscale inputs with ``keep_gray``, by default from a super-resolution model
        only), or a float (or uint8) tensor (3, H, W) / (B, 3, H, W) in [0, 1] -> a float32 tensor of the same
        shape (times ``scale``), on its device, an ordinary tensor (not an inference-mode one). ``style``: for
        a model of several styles, a name (``"candy"``) or a blend (``{"candy": 0.7, "mosaic": 0.3}``)."""
        controls = Controls(strength, preserve_color)
        _check_keep_gray(keep_gray)  # read for PIL images only: a tensor is always RGB
        tiling = {"tile": tile, "tile_overlap": tile_overlap, "exact_statistics": exact_statistics, "style": style}
        if isinstance(image, torch.Tensor):  # a copy made here, outside inference mode: an ordinary tensor, which
            if image.ndim == 4:               # the caller may change in place or use in autograd
                if not len(image):
                    raise StylenetError(f"expected a (B, 3, H, W) batch with B >= 1, got {tuple(image.shape)}")
                return torch.stack([self.transform(one, controls, **tiling) for one in image]).to(image.device)
            return self.transform(image, controls, **tiling).to(image.device, copy=True)
        if not isinstance(image, Image.Image):
            hint = ("model.process(image) takes a LoadedImage" if isinstance(image, LoadedImage) else
                    "PIL.Image.fromarray(array) makes one of a uint8 (H, W, 3) array" if isinstance(image, np.ndarray)
                    else "stylenet.image.load_image or PIL.Image.open reads a file")
            raise StylenetError(f"stylize takes a PIL image or a tensor, got {type(image).__name__}: {hint}")
        result = self.process(from_pil(image), controls, keep_gray=keep_gray, quantize=True, **tiling)
        pil = to_pil(result.rgb, result.alpha)
        if result.was_gray:
            pil = pil.convert("LA" if result.alpha is not None else "L")
        if result.icc_profile:
            pil.info["icc_profile"] = result.icc_profile
        return pil

    def stylize_frames(self, frames: Iterable[Frame], *, strength: float = 1.0, preserve_color: bool = False,
                       style: StyleChoice | None = None) -> Iterator[Frame]:
        """Video or webcam frames -> stylised frames, lazily, one per frame, of the same kind: uint8
        (H, W, 3) numpy arrays (RGB) or float (3, H, W) tensors in [0, 1] (see
        :mod:`stylenet.inference.frames`). Each equals ``stylize`` of that frame alone (a PIL
        image of the array, or the tensor; float frames in fp32 within float rounding); buffers are
        kept across frames of one size.

            for out in model.stylize_frames(reader):  # e.g. imageio.v3.imiter("clip.mp4")
                writer.write(out)

        ``style``: as for :meth:`stylize`.
        """
        if style is not None or self.multi:
            return self._style_frames(iter(frames), style, strength, preserve_color)
        controls = Controls(strength, preserve_color)

        def fits(height: int, width: int) -> bool:  # one pass, as transform would run it
            return padded_pixels(self.net, height, width) <= self.max_pixels()

        # each layer written straight into the next one's padded input, in buffers kept across frames of
        # a size whose buffers fit the budget; they go before any other pass runs beside them. Kept per
        # precision: a model.precision set between frames applies to the next frame, as it does to stylize.
        kept: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}

        def centred(batch: torch.Tensor) -> torch.Tensor:  # as transform runs a frame: less its mean
            offset = input_offset(self.net, batch)
            batch = batch if offset is None else batch - offset.to(batch.device)
            if not self._prepadded_fits(*batch.shape[-2:]):
                kept.clear()
                return forward(self.net, batch, self.precision)
            if self.precision not in kept:
                kept.clear()
                run = prepadded_forward(self.net, self.precision, self.device, keep=True)
                assert run is not None  # _prepadded_fits: the pass applies
                kept[self.precision] = run
            return self._prepadded_or_one_pass(kept[self.precision], batch)

        def beyond_one_pass(rgb: torch.Tensor) -> torch.Tensor:
            kept.clear()
            return self.transform(rgb, controls)
        return stream_frames(frames, centred, self.device, controls, fits, beyond_one_pass)

    def _style_frames(self, frames: Iterator[Frame], style: StyleChoice | None, strength: float,
                      preserve_color: bool) -> Iterator[Frame]:
        """:meth:`stylize_frames` of a style (or blend): the frames run through that style's model, looked up
        again before every frame, so that a ``model.precision`` or ``max_memory`` set between frames applies
        to the next one; a stream of one model's frames keeps its buffers."""
        model = self.for_style(style)  # a bad style is refused before the first frame is asked for
        pending: list[Frame] = []

        def same_model() -> Iterator[Frame]:
            yield from pending
            pending.clear()
            for frame in frames:
                if self.for_style(style) is not model:
                    pending.append(frame)  # the next model's first frame
                    return
                yield frame

        def styled() -> Iterator[Frame]:
            nonlocal model
            while True:
                yield from model.stylize_frames(same_model(), strength=strength, preserve_color=preserve_color)
                if not pending:
                    return
                model = self.for_style(style)
        return styled()


def _check_keep_gray(keep_gray: bool | None) -> None:
    if keep_gray not in (None, True, False):  # "no" would be true
        raise StylenetError(f"keep_gray must be True, False or None (super-resolution only), got {keep_gray!r}")


def _check_transform(rgb: torch.Tensor, tile: int | None, tile_overlap: int, bits: int,
                     **flags: bool) -> None:
    """:meth:`InferenceModel.transform`'s arguments, refused with one line before any work."""
    for name, value in flags.items():
        if value not in (True, False):  # "no" would count as on
            raise StylenetError(f"{name} must be True or False, got {value!r}")
    levels = rgb.dtype == torch.uint8  # an 8-bit image's own levels (stylenet.image.compact)
    if rgb.ndim != 3 or rgb.shape[0] != 3 or not (rgb.is_floating_point() or levels) or not rgb[0].numel():
        raise StylenetError(f"expected a float or uint8 (3, H, W) image tensor, H and W >= 1, got {rgb.dtype} "
                            f"{tuple(rgb.shape)}")
    if not levels:
        check_unit_range(rgb, "image tensor")
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, numbers.Integral) or tile < MIN_TILE):
        raise StylenetError(f"tile (--tile) must be a whole number of pixels, at least {MIN_TILE}, got {tile!r}")
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, numbers.Integral) or tile_overlap < 0:
        raise StylenetError(f"tile_overlap (--tile-overlap) must be a whole number of pixels >= 0, "
                            f"got {tile_overlap!r}")
    if bits not in (8, 16):
        raise StylenetError(f"bits must be 8 or 16, got {bits}")
