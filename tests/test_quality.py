"""The loss-network-free quality measures on cases whose answer is known."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from stylenet import quality
from stylenet.gatys import optimize_image
from stylenet.image import save_image
from stylenet.losses import PerceptualLoss
from stylenet.metrics import gaussian_kernel, separable_filter
from stylenet.nets.vgg import VGGFeatures, calibrate, calibrated_state
from stylenet.tasks import StyleTransferTask

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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
    # a photo that is the style: nothing to move towards, undefined, left out of means
    assert math.isnan(quality.score(style, style, photo).colour_moved)
    assert quality.finite_mean([0.2, math.nan, 0.4]) == pytest.approx(0.3) and math.isnan(quality.finite_mean([]))


def test_a_large_image_is_measured_on_all_its_columns() -> None:
    """Past 2**16 pixels the measures read a sample: every k-th pixel of a raster whose width is a multiple
    of k was one column in k (a style network's grain sits on a 4 px grid). White with every 4th column
    black is then 3/4 of the way to black at every size, not black itself at 512 px."""
    def striped(side: int) -> torch.Tensor:
        image = torch.ones(3, side, side)
        image[:, :, ::4] = 0
        return image

    small, large = (quality.colour_distance(striped(side), torch.zeros(3, side, side)) for side in (256, 512))
    assert small > 0.5 and large == pytest.approx(small, rel=0.02)


def test_sliced_wasserstein_by_hand() -> None:
    """In one dimension every direction is +-1, so a cloud moved by c is c away (1-Wasserstein: |c|, not c^2),
    and two point masses a unit apart are 1 apart."""
    cloud = torch.randn(500, 1, generator=torch.Generator().manual_seed(0))
    assert quality.sliced_wasserstein(cloud, cloud + 3.0) == pytest.approx(3.0, rel=1e-9)
    assert quality.sliced_wasserstein(torch.zeros(40, 1), torch.ones(70, 1)) == pytest.approx(1.0, rel=1e-9)


def test_image_gradients_of_a_ramp_and_the_edge_map_of_a_turned_image() -> None:
    """Central differences of a x + b y are (b, a) inside the image; the edge map treats rows and
    columns alike, so that of a transposed image is the transposed edge map."""
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij")
    dy, dx = quality.image_gradients((0.3 * xs - 0.7 * ys).view(1, 1, 12, 10))
    torch.testing.assert_close(dx[..., 1:-1, 1:-1], torch.full((1, 1, 10, 8), 0.3))
    torch.testing.assert_close(dy[..., 1:-1, 1:-1], torch.full((1, 1, 10, 8), -0.7))
    photo = generated_photo(48)
    turned = quality.edge_map(photo.transpose(1, 2)).view(48, 48)
    torch.testing.assert_close(turned, quality.edge_map(photo).view(48, 48).T)


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
    """Same seed, same weights, computed afresh or taken from the process's cache (whose tensors no
    caller can change); each conv channel standardised on the calibration photos."""
    calibrate.cache_clear()
    a = VGGFeatures(["relu2_2"], weights="calibrated", seed=3)
    calibrate.cache_clear()
    b = VGGFeatures(["relu2_2"], weights="calibrated", seed=3)
    torch.testing.assert_close(a.weight2, b.weight2, rtol=0, atol=0)
    calibrated_state("vgg16", len(b.names), 3)["2.weight"].zero_()  # a caller's copy
    cached = VGGFeatures(["relu2_2"], weights="calibrated", seed=3)
    assert calibrate.cache_info().hits == 2
    torch.testing.assert_close(cached.weight2, b.weight2, rtol=0, atol=0)
    random = VGGFeatures(["relu2_2"], weights="random", seed=3)
    assert not torch.allclose(a.weight2, random.weight2)
    photo = generated_photo(128)[None]
    features = a(photo, ["conv1_1"])["conv1_1"]  # (1, 64, H, W): about unit scale, not vanishing
    assert 0.1 < float(features.std()) < 10


def offline_settings() -> dict:
    """configs/loss/offline.yaml's own values (over perceptual.yaml's defaults)."""
    settings = OmegaConf.to_container(OmegaConf.load(CONFIGS / "loss" / "offline.yaml"))
    settings.pop("defaults")
    return settings


def offline_objective(weights: str) -> PerceptualLoss:
    """configs/loss/offline.yaml's objective with the given VGG weights."""
    return PerceptualLoss(**{**offline_settings(), "weights": weights})


@pytest.mark.filterwarnings("ignore:VGG loss network uses")
def test_calibrated_network_transfers_more_style_than_plain_random_weights() -> None:
    """Gatys on generated images with the offline objective: the calibrated network moves texture at
    least as far towards the style as the same objective on uncalibrated random weights, keeps more
    of the photo's structure, clips less, and moves colour as far (within 0.05: on these flat
    generated colours both reach about the same point). 300 steps: at 150 the two were still level
    on structure (0.2012 against 0.2015), both far from their optimum."""
    photo, style = generated_photo(64), generated_style(64)
    scores = {}
    for weights in ("calibrated", "random"):
        torch.manual_seed(0)
        result = optimize_image(photo, [style], offline_objective(weights), iterations=300, optimizer="adam")
        scores[weights] = quality.score(photo, style, result.image)
    calibrated, random = scores["calibrated"], scores["random"]
    assert calibrated.texture_moved >= random.texture_moved > 0.3
    assert calibrated.structure >= random.structure
    assert calibrated.clipped_beyond_style <= random.clipped_beyond_style
    assert calibrated.colour_moved >= random.colour_moved - 0.05


WARM_UP, STYLE_STEPS = 60, 100


@pytest.mark.filterwarnings("ignore:VGG loss network uses", "ignore:.*does not have many workers",
                            "ignore:.*(GPU available|TPU available|LOCAL_RANK)")
def test_short_offline_training_moves_the_measures_towards_the_style(tmp_path: Path) -> None:
    """The demo's recipe in miniature (its identity warm-up and offline objective, a small network):
    after the warm-up the network copies the photo (structure kept, nothing moved, nothing clipped);
    the style steps then move the colours and the texture towards the style's while the photo's
    structure survives. Content at the paper's relu2_2, not the demo's relu3_1: on these 64 px images
    relu3_1's 16 x 16 features of nearly flat shading hold the colours (moved 0.02-0.05 in 100 steps)."""
    torch.manual_seed(0)
    photo, style = generated_photo(64), generated_style(64)
    save_image(tmp_path / "style.png", style)
    photos = torch.stack([photo, photo.flip(-1), photo.flip(-2), photo.transpose(1, 2)])
    loader = DataLoader([{"images": p} for p in photos], batch_size=4)
    demo = OmegaConf.to_container(OmegaConf.load(CONFIGS / "experiment" / "demo.yaml"))
    settings = {**offline_settings(), **demo["loss"], "content_layers": ["relu2_2"]}
    task = StyleTransferTask(model={"channels": 8, "residual_blocks": 1}, loss=settings,
                             style={"image": str(tmp_path / "style.png"), "size": 64},
                             identity_steps=WARM_UP, saturation_weight=demo["task"]["saturation_weight"])
    held_out = photo.rot90(1, (1, 2))
    scores: dict[int, quality.Quality] = {}

    class ScoreHeldOut(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, module: StyleTransferTask, *args: object) -> None:
            if trainer.global_step in (WARM_UP, WARM_UP + STYLE_STEPS):
                with torch.no_grad():
                    output = module.net(held_out[None])[0].clamp(0, 1)
                scores[trainer.global_step] = quality.score(held_out, style, output)

    pl.Trainer(max_steps=WARM_UP + STYLE_STEPS, logger=False, enable_checkpointing=False, accelerator="cpu",
               callbacks=[ScoreHeldOut()],
               enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path).fit(task, loader)
    copied, styled = scores[WARM_UP], scores[WARM_UP + STYLE_STEPS]
    assert copied.structure > 0.9 and abs(copied.colour_moved) < 0.1 and abs(copied.texture_moved) < 0.1
    assert copied.clipped_beyond_style == 0
    assert styled.colour_moved > copied.colour_moved + 0.05
    assert styled.texture_moved > copied.texture_moved + 0.1
    assert styled.structure > 0.3


def test_structure_of_a_photo_without_edges_is_undefined_and_of_an_output_without_edges_zero() -> None:
    photo, flat = generated_photo(), torch.full((3, 32, 40), 0.5)
    assert math.isnan(quality.structure(flat, photo))  # no edges to keep: no correlation
    assert quality.structure(photo, flat) == 0.0  # every edge lost
    # a flat photo resized for validation varies by float rounding alone: still no edges (it read -0.02)
    resized = F.interpolate(torch.tensor([0.2, 0.4, 0.8]).view(1, 3, 1, 1).expand(1, 3, 96, 96), size=(64, 64),
                            mode="bilinear", antialias=True, align_corners=False)[0]
    assert math.isnan(quality.structure(resized, photo))


def test_quantile_ranks_share_ties_by_hand() -> None:
    """[3, 1, 3, 2]: 1 has rank 0, 2 rank 1, the two 3s share (2 + 3) / 2; all over N - 1 = 3."""
    ranks = quality.quantile_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(ranks, torch.tensor([2.5, 0.0, 2.5, 1.0], dtype=torch.float64) / 3)
    torch.testing.assert_close(quality.quantile_ranks(torch.tensor([5.0])), torch.tensor([0.0], dtype=torch.float64))


def test_a_flat_region_has_no_texture_however_its_pixels_are_ordered() -> None:
    """Two flat halves: the filter bank responds only near their border (within a few sigma); ranking
    equal pixels in raster order made each half a ramp, with responses everywhere."""
    image = torch.full((3, 64, 64), 0.2)
    image[:, :, 32:] = 0.7
    responses = quality.filter_bank(image).T.reshape(-1, 64, 64)  # (S*O, H, W)
    far = 3 * int(max(quality.TEXTURE_SIGMAS)) + 2  # a Gaussian's support, and the derivative's pixel
    assert responses[:, :, : 32 - far].abs().max() < 1e-6 and responses[:, :, 32 + far:].abs().max() < 1e-6
    assert responses[:, :, 30:34].abs().max() > 0.01
