"""Super-resolution protocol of Johnson et al. 2016 (Sec. 4.2): how low-resolution inputs are made
and how outputs are scored, shared by training, validation and ``stylenet-evaluate-sr``.

Degradation (:func:`degrade`): Gaussian blur with sigma 1.0, then bicubic downsampling by the
factor, as in the paper. The paper does not say which bicubic; ours is torch's
``F.interpolate(mode="bicubic", antialias=True)``: Keys' cubic with a = -0.5 stretched by the factor,
the kernel of PIL's ``BICUBIC`` resize and of MATLAB's ``imresize`` (which made Set5/Set14/BSD100's
LR images), rather than a point-sampling cubic that aliases. It runs batched on the training device,
so LR patches are made on the fly, and the result is rounded to 8 bits as an LR image file would be.

Scores (:func:`sr_scores`) follow the SR literature's MATLAB scripts: the luma Y of BT.601
"studio swing" YCbCr, ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`` for RGB in [0, 1], so Y
lies in [16/255, 235/255]; ``scale`` pixels are shaved off every border (the upscaler cannot know
what lies beyond the image); PSNR and SSIM use a data range of 1.0, i.e. 255 on 8-bit Y (not the
219 of the studio range). SSIM is Wang et al. 2004: 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
K2 = 0.03, population (co)variances, the mean of the map over the valid region; it equals
scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
Everything here is plain torch: the evaluation CLI imports neither Lightning nor Hydra.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: BT.601 RGB -> Y weights for RGB in [0, 1] and Y in [0, 255], and the offset (ITU-R BT.601, as in
#: MATLAB's rgb2ycbcr).
Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0
#: Paper Sec. 4.2: "blurring with a Gaussian kernel of width sigma = 1.0".
BLUR_SIGMA = 1.0
SSIM_SIGMA, SSIM_RADIUS, SSIM_K1, SSIM_K2 = 1.5, 5, 0.01, 0.03


def gaussian_kernel(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``2 * radius + 1`` taps (default radius ceil(3 sigma)), float64."""
    radius = math.ceil(3 * sigma) if radius is None else radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def separable_filter(images: torch.Tensor, kernel: torch.Tensor, padding: str | None) -> torch.Tensor:
    """Filter every channel of (B, C, H, W) with the outer product of ``kernel`` with itself.

    ``padding`` ``"reflect"`` keeps the size (edge replication for images smaller than the kernel);
    ``None`` gives the valid part only, as SSIM needs."""
    channels, radius = images.shape[1], len(kernel) // 2
    if padding is not None:
        small = min(images.shape[-2:]) <= radius
        images = F.pad(images, (radius,) * 4, mode="replicate" if small else padding)
    weight = kernel.to(images)
    images = F.conv2d(images, weight.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(images, weight.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def modcrop(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Crop the bottom/right so H and W are multiples of ``factor`` (the SR benchmarks' convention),
    so that LR x factor is exactly the HR size."""
    height, width = images.shape[-2:]
    return images[..., : height - height % factor, : width - width % factor]


def degrade(hr: torch.Tensor, factor: int, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """HR (B, 3, H, W) in [0, 1], H and W multiples of ``factor`` -> LR (B, 3, H/f, W/f): Gaussian
    blur (sigma 1.0), antialiased bicubic downsampling, clamped and rounded to 8-bit levels."""
    height, width = hr.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(f"HR size {width}x{height} is not a multiple of the factor {factor} (use modcrop)")
    blurred = separable_filter(hr.float(), gaussian_kernel(sigma), "reflect")
    lr = F.interpolate(blurred, size=(height // factor, width // factor), mode="bicubic", antialias=True,
                       align_corners=False)
    return lr.clamp(0, 1).mul(255).round().div(255)


def upscale_bicubic(lr: torch.Tensor, factor: int) -> torch.Tensor:
    """The baseline every SR table compares with: bicubic upsampling of the LR image, clamped.

    The cubic of PIL's ``BICUBIC`` and MATLAB's ``imresize`` (Keys, a = -0.5), the one SR tables use;
    ``antialias=True`` selects it in torch, whose plain ``bicubic`` has a = -0.75 (0.1-0.2 dB higher).
    Equal to PIL's everywhere; to MATLAB's away from the edges, where the two pixels nearest each edge
    differ (PIL and torch reweight the taps inside the image, MATLAB pads symmetrically)."""
    return F.interpolate(lr.float(), scale_factor=factor, mode="bicubic", align_corners=False,
                         antialias=True).clamp(0, 1)


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of (..., 3, H, W) RGB in [0, 1] -> (..., 1, H, W) in [16/255, 235/255]."""
    weights = torch.tensor(Y_WEIGHTS, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return ((images * weights).sum(dim=-3, keepdim=True) + Y_OFFSET) / 255.0


def shave(images: torch.Tensor, border: int) -> torch.Tensor:
    """Drop ``border`` pixels on every side of (..., H, W)."""
    if border <= 0:
        return images
    return images[..., border:-border, border:-border]


def psnr(images: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image of (B, C, H, W): 10 log10(R^2 / MSE) in dB, float64;
    +inf for identical images."""
    mse = (images.double() - target.double()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def ssim(images: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image of (B, C, H, W), averaged over channels,
    float64. Both sides must be at least 11 px (the window)."""
    window = 2 * SSIM_RADIUS + 1
    if min(images.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window} px, got "
                         f"{tuple(images.shape[-2:])}")
    x, y = images.double(), target.double()
    kernel = gaussian_kernel(SSIM_SIGMA, SSIM_RADIUS)
    mu_x, mu_y, xx, yy, xy = (separable_filter(t, kernel, None) for t in (x, y, x * x, y * y, x * y))
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


def sr_scores(output: torch.Tensor, target: torch.Tensor, border: int) -> dict[str, torch.Tensor]:
    """PSNR (dB) and SSIM per image on the Y channel with ``border`` px shaved (use the factor)."""
    if output.shape != target.shape:
        raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} differ in shape")
    y_out, y_target = shave(rgb_to_y(output.double()), border), shave(rgb_to_y(target.double()), border)
    return {"psnr": psnr(y_out, y_target), "ssim": ssim(y_out, y_target)}
