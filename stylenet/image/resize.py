"""Resizing and cropping image tensors: one antialiased resize, and the shapes built on it.

Every resize in stylenet (training crops, style images, inference's ``--scale``/``--max-size``,
statistics thumbnails, Gatys' pyramid, alpha bands) is :func:`resize`, so they all filter alike.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from stylenet.errors import StylenetError
from stylenet.image.formats import DEFAULT_MAX_PIXELS, ImageError, unit_float


def scaled_shape(height: int, width: int, factor: float) -> tuple[int, int]:
    """``(H, W)`` times ``factor``, rounded, at least 1 px a side. An exact half goes to the even
    neighbour (Python's ``round``): a video's frames then keep even sides, which 4:2:0 needs."""
    return max(1, round(height * factor)), max(1, round(width * factor))


def long_side_shape(height: int, width: int, size: int | None) -> tuple[int, int]:
    """``(H, W)`` with the longer side ``size`` and the aspect ratio kept; ``None`` keeps the shape."""
    if size is None:
        return height, width
    if size < 1:
        raise StylenetError(f"size must be a positive number of pixels, got {size}")
    return scaled_shape(height, width, size / max(height, width))


def short_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """``(H, W)`` with the shorter side ``size`` and the aspect ratio kept."""
    return scaled_shape(height, width, size / min(height, width))


#: Pixels beyond which a resized image is refused: 2^32, 48 GiB as float32 RGB, what no machine this
#: runs on holds; a --scale typo, then, not a size anyone works at (an upscaled 12 MP photo is 200 MP).
MAX_SCALED_PIXELS = 1 << 32


def target_size(height: int, width: int, *, scale: float = 1.0,
                max_size: int | None = None) -> tuple[int, int]:
    """``(H, W)`` after multiplying by ``scale`` and capping the long side at ``max_size``."""
    if not (math.isfinite(scale) and scale > 0):
        raise StylenetError(f"--scale must be a finite number > 0, got {scale}")
    if max_size is not None and max_size < 1:
        raise StylenetError(f"--max-size must be at least 1, got {max_size}")
    capped = max_size is not None and max(height, width) * scale > max_size
    shape = long_side_shape(height, width, max_size) if capped else (height * scale, width * scale)
    if shape[0] * shape[1] > MAX_SCALED_PIXELS:  # in floats: a huge scale is no overflow
        raise StylenetError(f"--scale {scale:g}{' and --max-size make' if capped else ' makes'} this {width}x{height} "
                            f"image {shape[1]:.6g}x{shape[0]:.6g} px, beyond {MAX_SCALED_PIXELS} pixels")
    return shape if capped else scaled_shape(height, width, scale)


def resize(image: torch.Tensor, size: tuple[int, int], *, clamp: bool = False) -> torch.Tensor:
    """Antialiased bilinear resize of (C, H, W) to ``size`` (H, W); the image itself when it is
    already that size. Float32 out, whatever float dtype comes in (PyTorch's CPU kernel has no
    half-precision version), and uint8 levels ``k`` as ``k / 255`` (:func:`~stylenet.image.unit_float`).
    ``clamp`` clips a resized image to [0, 1]: bilinear filtering with antialiasing overshoots
    slightly at edges, and a valid image must stay in range."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    resized = F.interpolate(unit_float(image).unsqueeze(0), size=size, mode="bilinear", antialias=True,
                            align_corners=False).squeeze(0)
    return resized.clamp_(0, 1) if clamp else resized


def resize_short_side(image: torch.Tensor, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """A (3, H, W) image in [0, 1] resized so that its shorter side is ``size`` (training photos).

    A photo so elongated that the copy would exceed ``max_pixels`` (a 1 x 30000 strip is 256 x 7.7M
    at 256 px) is an :class:`ImageError`, as a decompression bomb is, not gigabytes allocated."""
    height, width = image.shape[-2:]
    shape = short_side_shape(height, width, size)
    if shape[0] * shape[1] > max_pixels:
        raise ImageError(f"a {width}x{height} px photo would be {shape[1]}x{shape[0]} px at {size} px on its short "
                         f"side, over {max_pixels} pixels")
    return resize(image, shape, clamp=True)


def resize_long_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """A (3, H, W) image in [0, 1] resized so that its longer side is ``size`` (style images)."""
    return resize(image, long_side_shape(*image.shape[-2:], size), clamp=True)


def resize_alpha(alpha: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """An integer alpha band (1, H, W) resized with the pixels it belongs to; at the same size it is
    returned untouched (bit-exact)."""
    if alpha is None or tuple(alpha.shape[-2:]) == tuple(size):
        return alpha
    top = 65535.0 if alpha.dtype == torch.uint16 else 255.0
    resized = resize(alpha.float(), size).round().clamp(0, top)
    return resized.to(torch.int32).to(alpha.dtype)


def crop(image: torch.Tensor, size: int, rng: random.Random | None) -> torch.Tensor:
    """A size x size crop: random when ``rng`` is given, centred otherwise."""
    height, width = image.shape[-2:]
    top = rng.randint(0, height - size) if rng else (height - size) // 2
    left = rng.randint(0, width - size) if rng else (width - size) // 2
    return image[:, top: top + size, left: left + size]


def training_sample(photo: torch.Tensor, path: object, scale_size: int, size: int,
                    rng: random.Random | None) -> torch.Tensor:
    """One training sample of a photo (Sec. 4.1: COCO photos at 256x256): the short side resized to
    ``scale_size``, then a ``size`` x ``size`` crop, random with ``rng``, centred without, as
    pytorch/examples cuts them (the paper's Lua code resized whole photos to the square, squashing their
    shapes; a crop keeps them, so a style's strokes are learnt at one aspect ratio). Training and
    ``stylenet-prepare``'s shards both cut this way, so prepared data is what training would have cut.
    A photo too elongated to resize is an :class:`ImageError` naming ``path``."""
    try:
        return crop(resize_short_side(photo, scale_size), size, rng)
    except ImageError as err:
        raise ImageError(f"cannot use image {str(path)!r}: {err}") from None
