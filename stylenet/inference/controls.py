"""Controls: what the user asked to do with a network's output, pixel by pixel.

Per-pixel, so they are applied tile by tile: ``strength`` blends with the content;
``preserve_color`` is the luminance-only transfer of Gatys et al. 2016, "Preserving Color in
Neural Artistic Style Transfer" (Sec. 2): keep the content's chroma, take the stylised luminance.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stylenet.errors import StylenetError
from stylenet.image import unit_float
from stylenet.image.colour import luma


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
        if isinstance(self.strength, bool) or not isinstance(self.strength, numbers.Real) or \
                not 0.0 <= self.strength <= 1.0:
            raise StylenetError(f"strength must be a number in [0, 1], got {self.strength!r}")
        for name in ("preserve_color", "gray"):
            if getattr(self, name) not in (True, False):  # "no" would count as on
                raise StylenetError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def needs_content(self) -> bool:
        return self.strength < 1.0 or self.preserve_color

    def apply(self, output: torch.Tensor, content: torch.Tensor | None) -> torch.Tensor:
        """Combine (..., 3, H, W) ``output`` with the ``content``; clamp to [0, 1].

        Colour preservation adds the luminance difference to every channel of the content: since
        the BT.601 weights sum to 1 this changes Y by exactly that difference and leaves
        Cb ~ B - Y and Cr ~ R - Y, the content's chroma, unchanged. A (B, 3, h, w) content smaller
        than the output (a super-resolution network's input) is upsampled to it, bicubic, first.
        """
        if content is not None and content.shape[-2:] != output.shape[-2:]:
            content = F.interpolate(content, size=output.shape[-2:], mode="bicubic")
        if content is not None and self.preserve_color:
            output = content + (luma(output) - luma(content))
        if content is not None and self.strength < 1.0:
            output = torch.lerp(content, output, self.strength)
        if self.gray:
            output = luma(output).expand_as(output)
        return output.clamp(0.0, 1.0)


#: Input pixels on each side that bicubic interpolation reads (its four taps reach two pixels out).
BICUBIC_REACH = 2


def upsampled_crop(image: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], scale: int,
                   device: torch.device) -> torch.Tensor:
    """The bicubic ``scale`` x upsampling of the whole (3, H, W) ``image`` (float, or uint8 levels), cropped to
    the output of input ``rows`` x ``cols``, as (1, 3, h * scale, w * scale) float32 on ``device``: computed
    from that region with the pixels around it that bicubic reads, so a tile's content matches its
    neighbours' (a tile upsampled alone clamps at its own edges: seams where the controls blend it in,
    with no overlap to hide them)."""
    height, width = image.shape[-2:]
    top, left = max(0, rows[0] - BICUBIC_REACH), max(0, cols[0] - BICUBIC_REACH)
    bottom, right = min(height, rows[1] + BICUBIC_REACH), min(width, cols[1] + BICUBIC_REACH)
    region = unit_float(image[:, top:bottom, left:right], device)[None]
    region = F.interpolate(region, size=((bottom - top) * scale, (right - left) * scale), mode="bicubic")
    return region[..., (rows[0] - top) * scale: (rows[1] - top) * scale,
                  (cols[0] - left) * scale: (cols[1] - left) * scale]
