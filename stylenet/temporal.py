"""Temporal consistency without video: synthetic motion of known flow, a warp, and the training term.

A per-frame style network flickers because a small change of its input (the camera moves, the
sensor adds noise) moves its strokes. Wang et al., AAAI 2020, "Consistent Video Style Transfer via
Compound Regularization", show that no video and no optical flow are needed to train this away:
warp a still photo by a random small motion W of known flow and ask the network to commute with
it, ``N(W(x) + noise) ~ W(N(x))``, over the pixels the warp keeps inside the image. The noise is
the noise robustness of Gupta, Johnson et al. 2017, "Characterizing and Improving Stability in
Neural Style Transfer" (a still camera's sensor noise alone makes a network flicker).

Motions are dense backward flows in pixels, (B, 2, H, W) with channels (x, y): ``warp(image,
flow)`` at pixel p is ``image`` at ``p + flow(p)`` (bilinear). A random motion composes a shift, a
zoom and a rotation about the centre (an affine map) with a smooth local deformation, a coarse grid
of random displacements upsampled bicubically, which is how Wang et al. build theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from stylenet.losses import setting_weight

Stylize = Callable[[torch.Tensor], torch.Tensor]
#: The seed of the fixed motion and noise that validation measures instability with.
VALIDATION_SEED = 20200207


@dataclass(frozen=True)
class MotionRange:
    """How large the random motions of training are: each parameter is drawn uniformly in
    [-value, value] (zoom: [1 - zoom, 1 + zoom]); the noise's standard deviation in [0, noise].
    Small, as between two video frames (Wang et al. 2020 use a few pixels and degrees)."""

    shift: float = 3.0  # pixels
    zoom: float = 0.03  # relative scale change
    rotation: float = 2.0  # degrees
    deformation: float = 1.5  # pixels, the local displacement's amplitude
    grid: int = 4  # cells per side of the local deformation's coarse grid
    noise: float = 0.02  # standard deviation, image units ([0, 1])


def pixel_grid(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 2, H, W): each pixel's own (x, y) coordinates."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device),
                            torch.arange(width, dtype=torch.float32, device=device), indexing="ij")
    return torch.stack([xs, ys])[None]


def affine_flow(height: int, width: int, *, shift: torch.Tensor, zoom: torch.Tensor,
                rotation: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) flow of a zoom and rotation about the image centre then a shift: the picture moves
    by ``-shift`` (B, 2) pixels, magnifies by ``zoom`` (B,) and turns by ``rotation`` (B,) degrees
    counter-clockwise as displayed (y pointing down)."""
    points = pixel_grid(height, width, shift.device)
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], device=shift.device).view(1, 2, 1, 1)
    angle = torch.deg2rad(rotation).view(-1, 1, 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    offset = points - centre  # (1, 2, H, W)
    x = (cos * offset[:, 0] - sin * offset[:, 1]) / zoom.view(-1, 1, 1)
    y = (sin * offset[:, 0] + cos * offset[:, 1]) / zoom.view(-1, 1, 1)
    source = torch.stack([x, y], dim=1) + centre + shift.view(-1, 2, 1, 1)
    return source - points


def deformation_flow(coarse: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 2, H, W) smooth local displacement: the (B, 2, k, k) coarse grid, upsampled bicubically."""
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)


def random_flow(batch: int, height: int, width: int, generator: torch.Generator,
                motion: MotionRange = MotionRange()) -> torch.Tensor:
    """(B, 2, H, W) random small motions on the CPU, one per sample (see :class:`MotionRange`)."""

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    flow = affine_flow(height, width, shift=uniform(batch, 2) * motion.shift,
                       zoom=1 + uniform(batch) * motion.zoom, rotation=uniform(batch) * motion.rotation)
    if motion.deformation > 0:
        coarse = uniform(batch, 2, motion.grid, motion.grid) * motion.deformation
        flow = flow + deformation_flow(coarse, height, width)
    return flow


def sample_at(images: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` (B, C, H, W) read (bilinearly, in fp32) at ``positions`` (B, 2, H', W'), pixel (x, y)
    coordinates of ``images``; and the (B, 1, H', W') mask of the positions inside the image (1)
    rather than beyond its edge (0, where the edge pixels are repeated)."""
    height, width = images.shape[-2:]
    x, y = positions[:, 0].float(), positions[:, 1].float()
    # align_corners=False: pixel centres sit at (2k + 1) / size - 1 in grid_sample's [-1, 1]
    grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)
    values = F.grid_sample(images.float(), grid.to(images.device), mode="bilinear", padding_mode="border",
                           align_corners=False)
    inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    return values, inside[:, None].float().to(images.device)


def warp(images: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` (B, C, H, W) sampled at ``p + flow(p)`` (bilinear), and the (B, 1, H, W) mask of the
    pixels whose source lies inside the image (1) rather than beyond its edge (0). Computed in fp32."""
    height, width = images.shape[-2:]
    return sample_at(images, pixel_grid(height, width, flow.device) + flow.float())


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, C, H, W) ``values`` over the pixels where the (B, 1, H, W) ``mask`` is 1."""
    return (values * mask).sum() / (mask.sum() * values.shape[1]).clamp_min(1.0)


def temporal_loss(stylize: Stylize, images: torch.Tensor, output: torch.Tensor, flow: torch.Tensor,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """``||N(W(x) + noise) - W(N(x))||^2``, the mean over the pixels W keeps inside the image (Wang
    et al. 2020, eq. 6; the noise: Gupta et al. 2017). ``output`` is ``N(images)``; gradients flow
    into both sides, so the network learns to commute with the motion rather than to chase it."""
    moved, mask = warp(images, flow)
    if noise is not None:
        moved = (moved + noise.to(moved)).clamp(0.0, 1.0)
    target, _ = warp(output, flow)
    return masked_mean((stylize(moved.to(images.dtype)).float() - target).square(), mask)


def split_temporal_weight(loss: Mapping[str, Any]) -> tuple[dict[str, Any], float]:
    """A ``loss`` config -> (the :class:`~stylenet.losses.PerceptualLoss` settings, ``temporal_weight``).
    The term is the style task's, not the loss network's: PerceptualLoss (and the Gatys optimiser,
    the quality report, model files' recorded objective) never see the key."""
    settings = dict(loss)
    return settings, setting_weight(settings.pop("temporal_weight", 0.0), "loss.temporal_weight")


def warping_error(current: torch.Tensor, previous: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """E_warp of one pair of frames, in 0-255 units: the mean absolute difference between frame t
    (``current``) and frame t-1 (``previous``) warped by the true motion ``flow`` (frame t at p shows
    what frame t-1 showed at p + flow(p)), over the pixels that stay visible. The temporal warping
    error of Lai et al., ECCV 2018, "Learning Blind Video Temporal Consistency", with an absolute
    instead of a squared difference, so that it reads as grey levels."""
    warped, mask = warp(previous, flow)
    return masked_mean((current.float() - warped).abs(), mask) * 255


#: Standard deviation of the sensor noise of a still camera, in validation and in stylenet-stability
#: (image units: 2 grey levels).
SENSOR_NOISE = 2.0 / 255


class TemporalConsistency:
    """The style task's temporal term (``loss.temporal_weight``) and its validation measures.

    Each training step draws its motions (of :class:`MotionRange`'s default size) and noise from a
    generator seeded by the run's ``seed``, the step and the DDP rank, so a resumed run draws what the
    uninterrupted one drew, each process of a DDP run draws its own (the first what a single process
    draws), and runs of other seeds other motions. ``seed`` defaults to torch's (``stylenet-train``
    seeds torch with ``seed=`` before it builds the task). With ``weight`` 0 the term costs nothing: no
    motion is drawn and the network runs once per step, as without this class."""

    def __init__(self, weight: float, seed: int | None = None) -> None:
        self.weight, self.motion = float(weight), MotionRange()
        self.seed = torch.initial_seed() if seed is None else int(seed)

    def add_term(self, terms: dict[str, torch.Tensor], stylize: Stylize, images: torch.Tensor,
                 output: torch.Tensor, step: int, rank: int = 0) -> dict[str, torch.Tensor]:
        """``terms`` with ``temporal`` (unweighted) added and ``total`` increased by weight x it."""
        if not self.weight:
            return terms
        # the CPU generator keeps 32 bits of its seed: other ranks' and seeds' lie ~2**31 steps away from seed 0's
        # first rank's (whose draws are those of before the seed took part)
        generator = torch.Generator().manual_seed(
            (int(step) ^ int(rank) * 0x9E3779B1 ^ self.seed * 0x85EBCA6B) & 0xFFFFFFFF)
        batch, _, height, width = images.shape
        flow = random_flow(batch, height, width, generator, self.motion).to(images.device)
        sigma = torch.rand(batch, 1, 1, 1, generator=generator) * self.motion.noise
        noise = torch.randn(images.shape, generator=generator) * sigma
        term = temporal_loss(stylize, images, output, flow, noise.to(images.device))
        return {**terms, "temporal": term, "total": terms["total"] + self.weight * term}

    @torch.no_grad()
    def instability(self, stylize: Stylize, images: torch.Tensor, output: torch.Tensor) -> dict[str, torch.Tensor]:
        """Validation's measures, in 0-255 units, with a fixed motion and noise: ``temporal/e_warp``
        (:func:`warping_error` of N(x) and N(W(x)) under a random motion of :class:`MotionRange`'s
        size) and ``temporal/flicker`` (mean |N(x + sensor noise) - N(x)|, a still camera)."""
        generator = torch.Generator().manual_seed(VALIDATION_SEED)
        batch, _, height, width = images.shape
        flow = random_flow(batch, height, width, generator, self.motion).to(images.device)
        moved, _ = warp(images, flow)
        e_warp = warping_error(stylize(moved.to(images.dtype)), output, flow)
        noise = torch.randn(images.shape, generator=generator).to(images) * SENSOR_NOISE
        flicker = (stylize((images + noise).clamp(0.0, 1.0)).float() - output.float()).abs().mean() * 255
        return {"temporal/e_warp": e_warp, "temporal/flicker": flicker}
