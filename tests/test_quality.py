"""The loss-network-free quality measures on cases whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from stylenet import quality
from stylenet.metrics import gaussian_kernel, separable_filter
from stylenet.nets.vgg import VGGFeatures


def generated_photo(size: int = 96) -> torch.Tensor:
    """Smooth shading with a few hard-edged shapes: a photo's structure."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.stack([0.3 + 0.4 * x, 0.5 * y + 0.2, 0.6 - 0.3 * x * y])
    image[:, 20:50, 30:70] = torch.tensor([0.9, 0.8, 0.2]).view(3, 1, 1)
    image[:, ((x - 0.3) ** 2 + (y - 0.75) ** 2) < 0.02] = torch.tensor([0.1, 0.2, 0.7]).view(3, 1)
    return image


def generated_style(size: int = 80) -> torch.Tensor:
    """Fine diagonal stripes in a purple / orange palette: a distinct texture and colours."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    stripes = (torch.sin((x + y).float() * 2 * math.pi / 6) > 0).float()
    purple, orange = torch.tensor([0.5, 0.1, 0.6]).view(3, 1, 1), torch.tensor([0.95, 0.6, 0.1]).view(3, 1, 1)
    return stripes * purple + (1 - stripes) * orange


def histogram_match(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each channel's values replaced by the reference channel's value of the same rank."""
    out = torch.empty_like(image)
    for c in range(3):
        order = image[c].flatten().argsort()
        levels = torch.quantile(reference[c].flatten(), torch.linspace(0, 1, order.numel()))
        out[c].view(-1)[order] = levels
    return out


def test_the_photo_itself_moved_nothing_and_the_style_itself_all_the_way() -> None:
    photo, style = generated_photo(), generated_style()
    itself = quality.score(photo, style, photo)
    assert itself.colour_moved == pytest.approx(0, abs=1e-9) and itself.texture_moved == pytest.approx(0, abs=1e-9)
    assert itself.structure == pytest.approx(1.0)
    styled = quality.score(photo, style, style)
    assert styled.colour_moved == pytest.approx(1.0) and styled.texture_moved == pytest.approx(1.0)


def test_a_colour_histogram_match_moves_colour_but_not_texture() -> None:
    photo, style = generated_photo(), generated_style()
    matched = histogram_match(photo, style)
    result = quality.score(photo, style, matched)
    # per-channel matching reaches the style's marginals, not its joint palette: most of the way
    assert result.colour_moved > 0.5
    assert abs(result.texture_moved) < 0.25 and result.colour_moved > 2.5 * abs(result.texture_moved)
    assert result.structure > 0.7


def test_a_blur_destroys_structure_the_more_the_stronger() -> None:
    photo = generated_photo()
    scores = [quality.structure(photo, separable_filter(photo[None].double(), gaussian_kernel(sigma), "reflect")[0])
              for sigma in (1.0, 4.0, 8.0, 16.0)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 0.9 and scores[2] < 0.65 and scores[3] < 0.4


def test_clipping_counts_saturated_values_beyond_the_style() -> None:
    photo, style = generated_photo(), generated_style()
    output = photo.clone()
    output[:, :10, :] = 1.0  # 10 of 96 rows blown out
    assert quality.score(photo, style, output).clipped_beyond_style == pytest.approx(10 / 96, rel=1e-6)
    assert quality.saturated(torch.tensor([0.0, 0.5 / 255, 0.5, 1.0])) == 0.75


def test_calibrated_loss_network_is_deterministic_with_unit_variance_channels() -> None:
    """Same seed, same weights; each conv channel standardised on the calibration photos."""
    a = VGGFeatures(["relu2_2"], weights="calibrated", seed=3)
    b = VGGFeatures(["relu2_2"], weights="calibrated", seed=3)
    torch.testing.assert_close(a.weight2, b.weight2, rtol=0, atol=0)
    random = VGGFeatures(["relu2_2"], weights="random", seed=3)
    assert not torch.allclose(a.weight2, random.weight2)
    photo = generated_photo(128)[None]
    features = a(photo, ["conv1_1"])["conv1_1"]  # (1, 64, H, W): about unit scale, not vanishing
    assert 0.1 < float(features.std()) < 10
