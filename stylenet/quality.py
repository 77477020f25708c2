"""Does an output look like style transfer? Measures that do not use any loss network.

A falling training loss says only that the loss network's statistics moved; these measures judge the
pictures themselves, so they can compare a network, a Gatys result and a plain photo on equal terms
(and cannot be gamed by the objective they are meant to check). Each compares images of any sizes:

* **colour**: the sliced 1-Wasserstein distance between two images' RGB pixel distributions (the
  mean, over fixed random directions, of the distance between the sorted projections);
* **texture**: the same distance between the distributions of a fixed filter bank's responses
  (Gaussian-derivative filters, 3 scales x 4 orientations, on rank-normalised luminance: a monotone
  change of brightness or a colour histogram match leaves it nearly unchanged);
* **structure**: the Pearson correlation of the photo's and the output's edge maps (gradient
  magnitude of lightly smoothed luminance), 1 for the photo itself, ~0 once its edges are gone (0 for
  an output without edges; undefined, NaN, for a photo without any, which means then leave out);
* **clipping**: the share of channel values saturated at 0 or 1.

"Moved" is ``1 - d(output, style) / d(photo, style)``: 0 for the photo itself, 1 for the style image
itself (:func:`score`), undefined for a photo that is the style. Plain torch: usable in validation, the
report script and tests alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from stylenet.image.colour import luma
from stylenet.metrics import gaussian_kernel, separable_filter

#: Filter-bank scales (Gaussian sigma, px) and orientations of the texture measure.
TEXTURE_SIGMAS = (1.0, 2.0, 4.0)
TEXTURE_ORIENTATIONS = 4
#: Random projection directions of the sliced Wasserstein distances, and quantiles compared.
PROJECTIONS, QUANTILES = 64, 256
#: Smoothing of luminance before the edge map: ignores pixel-scale grain a style adds.
EDGE_SIGMA = 1.5
#: An edge map whose values span less than this is flat: far below one 8-bit step's smoothed gradient (about
#: 5e-4), far above the float rounding a resize leaves in a flat image (about 1e-8).
FLAT_EDGES = 1e-5
#: A channel value at most this far from 0 or 1 counts as saturated (half an 8-bit level).
SATURATION_EPS = 0.5 / 255


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between two point clouds ``a`` (N, D) and ``b`` (M, D).

    Each cloud is projected on ``PROJECTIONS`` fixed unit directions (seeded: the measure is
    deterministic) and summarised by ``QUANTILES`` quantiles, so clouds of different sizes compare."""
    generator = torch.Generator().manual_seed(seed)
    directions = F.normalize(torch.randn(a.shape[1], PROJECTIONS, generator=generator, dtype=torch.float64), dim=0)
    levels = (torch.arange(QUANTILES, dtype=torch.float64) + 0.5) / QUANTILES
    qa = torch.quantile(subsample(a.double() @ directions), levels, dim=0)  # (Q, P)
    qb = torch.quantile(subsample(b.double() @ directions), levels, dim=0)  # (Q, P)
    return float((qa - qb).abs().mean())


def subsample(values: torch.Tensor, limit: int = 1 << 16) -> torch.Tensor:
    """At most ``limit`` rows, a fixed random choice (torch.quantile refuses very large inputs). Not every
    k-th row: of a raster whose width is a multiple of k that keeps every k-th column alone, and a style
    network's grain sits on just such a grid (its two x2 upsamplings)."""
    if values.shape[0] <= limit:
        return values
    return values[torch.randperm(values.shape[0], generator=torch.Generator().manual_seed(0))[:limit]]


def colour_points(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (H*W, 3) RGB pixels."""
    return image.float().reshape(3, -1).T


def filter_bank(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (H*W, S*O) responses of oriented first-derivative-of-Gaussian filters.

    Luminance is rank-normalised first (each pixel replaced by its quantile in the image), so the
    responses describe spatial patterns rather than the palette or the overall contrast."""
    brightness = luma(image.float())[None].double()  # (1, 1, H, W)
    ranked = quantile_ranks(brightness.flatten()).view_as(brightness)
    responses = []
    for sigma in TEXTURE_SIGMAS:
        smooth = separable_filter(ranked, gaussian_kernel(sigma), "reflect")
        dy, dx = image_gradients(smooth)
        for k in range(TEXTURE_ORIENTATIONS):
            angle = math.pi * k / TEXTURE_ORIENTATIONS
            # sigma-normalised derivative: comparable magnitudes across scales
            responses.append((math.cos(angle) * dx + math.sin(angle) * dy) * sigma)
    return torch.cat(responses, dim=1).reshape(len(responses), -1).T.float()


def quantile_ranks(values: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N,) each value's rank over N - 1, in [0, 1]; equal values share their mean rank.

    Ties are common (8-bit photos, flat or clipped regions). Ranked one after the other, as
    ``argsort`` ranks them (in raster order, say), a flat region would become a ramp of the ranking's
    own making, which the filter bank would then count as texture."""
    _, group, counts = torch.unique(values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()  # (groups,) one past each group's last 0-based rank
    mean_ranks = ends - (counts.double() + 1) / 2
    return mean_ranks[group] / max(1, values.numel() - 1)


def image_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences of (B, C, H, W) along H and W, replicate-padded to keep the size."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    dy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    dx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    return dy, dx


def edge_map(image: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of smoothed luminance, (H*W,)."""
    smooth = separable_filter(luma(image.float())[None].double(), gaussian_kernel(EDGE_SIGMA), "reflect")
    dy, dx = image_gradients(smooth)
    return (dy.square() + dx.square()).sqrt().flatten()


def colour_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Sliced Wasserstein distance between the RGB pixel distributions of two (3, H, W) images."""
    return sliced_wasserstein(colour_points(a), colour_points(b))


def texture_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Sliced Wasserstein distance between the filter-bank response distributions of two images."""
    return sliced_wasserstein(filter_bank(a), filter_bank(b), seed=1)


def structure(photo: torch.Tensor, output: torch.Tensor) -> float:
    """Correlation of the photo's and the output's edge maps (the output resized to the photo's size)."""
    if output.shape[-2:] != photo.shape[-2:]:
        output = F.interpolate(output[None].float(), size=photo.shape[-2:], mode="bilinear",
                               antialias=True, align_corners=False)[0]
    edges = torch.stack([edge_map(photo), edge_map(output)])
    flat = edges.amax(dim=1) - edges.amin(dim=1) < FLAT_EDGES  # a map without variance has no correlation
    if flat[0]:
        return math.nan  # no structure to keep
    return 0.0 if flat[1] else float(torch.corrcoef(edges)[0, 1])


def saturated(image: torch.Tensor) -> float:
    """Share of channel values within half an 8-bit level of 0 or 1."""
    image = image.float()
    return float(((image <= SATURATION_EPS) | (image >= 1 - SATURATION_EPS)).float().mean())


def moved(photo_to_style: float, output_to_style: float) -> float:
    """How far the output moved from the photo towards the style: 0 = not at all, 1 = all the way;
    undefined (NaN, left out of means) for a photo that already is the style."""
    return 1.0 - output_to_style / photo_to_style if photo_to_style > 0 else math.nan


def finite_mean(values: list[float]) -> float:
    """The mean of the defined measures (NaN: a photo a measure cannot judge); NaN if none is."""
    defined = [value for value in values if math.isfinite(value)]
    return sum(defined) / len(defined) if defined else math.nan


@dataclass(frozen=True)
class Quality:
    """The measures of one (photo, style, output) triplet; see the module docstring."""

    colour_moved: float
    texture_moved: float
    structure: float
    clipped_beyond_style: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


#: the results issue's targets for the measures (network; Gatys needs texture >= 0.5).
TARGETS = {"colour_moved": 0.6, "texture_moved": 0.35, "structure": 0.3, "clipped_beyond_style": 0.01}


def score(photo: torch.Tensor, style: torch.Tensor, output: torch.Tensor) -> Quality:
    """All measures for one triplet of (3, H, W) images in [0, 1] (sizes may differ)."""
    return Quality(
        colour_moved=moved(colour_distance(photo, style), colour_distance(output, style)),
        texture_moved=moved(texture_distance(photo, style), texture_distance(output, style)),
        structure=structure(photo, output),
        clipped_beyond_style=max(0.0, saturated(output) - saturated(style)),
    )
