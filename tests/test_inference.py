"""Tests for stylenet.inference and the notebook API: sizes, tiles, controls, image modes, memory."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms
from torch import nn

import stylenet
from stylenet import StylenetError
from stylenet.image import load_image, luma, target_size
from stylenet.inference import (
    Controls,
    InferenceModel,
    core_spans,
    freeze_norm_statistics,
    pad_to_multiple,
    record_norm_statistics,
    run_network,
    tile_spans,
    tile_weights,
)
from stylenet.modelfile import save_model
from stylenet.nets import SuperResolutionNet, TransformerNet
from tests.conftest import make_photo


def tiny_net(seed: int = 0, residual_blocks: int = 1) -> TransformerNet:
    torch.manual_seed(seed)
    return TransformerNet(channels=8, residual_blocks=residual_blocks).eval()


def photo(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth colourful (3, H, W) image in [0, 1], with some texture."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    phases = torch.rand(3, 2, generator=generator) * 6
    smooth = torch.stack([torch.sin(5 * x + p[0]) * torch.cos(4 * y + p[1]) for p in phases]) * 0.4 + 0.5
    return (smooth + 0.05 * torch.rand(3, height, width, generator=generator)).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / float(((a - b) ** 2).mean()))


def chroma(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 Cb, Cr (unscaled: B - Y, R - Y)."""
    y = luma(rgb)
    return torch.cat([rgb[2:3] - y, rgb[0:1] - y])


@pytest.fixture(scope="module")
def model() -> InferenceModel:
    return InferenceModel(tiny_net(), {"task": "style", "style_name": "test"}, device="cpu", precision="fp32")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return save_model(tmp_path / "test.safetensors", tiny_net(), {"task": "style", "style_name": "test"})


# ------------------------------------------------------------------------------------ sizes


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(height=st.integers(1, 70), width=st.integers(1, 70))
def test_output_size_equals_input_size(model: InferenceModel, height: int, width: int) -> None:
    out = model.transform(photo(height, width))
    assert out.shape == (3, height, width)
    assert out.dtype == torch.float32 and out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("height,width", [(1, 1), (1, 9), (3, 2), (7, 8), (8, 8), (9, 13)])
def test_tiny_inputs_work(model: InferenceModel, height: int, width: int) -> None:
    assert model.transform(photo(height, width)).shape == (3, height, width)


def test_pad_to_multiple_reflects_and_replicates() -> None:
    image = torch.arange(30.0).view(1, 1, 5, 6)
    padded = pad_to_multiple(image, 4, min_size=8)
    assert padded.shape[-2:] == (8, 8)
    assert torch.equal(padded[..., :5, :6], image)
    assert torch.equal(padded[0, 0, 5, :6], image[0, 0, 3])  # reflection, not a copy of the edge
    tiny = pad_to_multiple(torch.ones(1, 3, 1, 1), 4, min_size=8)
    assert tiny.shape[-2:] == (8, 8) and torch.equal(tiny, torch.ones(1, 3, 8, 8))
    aligned = image[..., :4, :4]
    assert pad_to_multiple(aligned, 4) is aligned
    # at and above the exports' minimum side (max(min_size, multiple)): the next multiple, never more
    photo_batch = photo(32, 48)[None]
    assert pad_to_multiple(photo_batch, 4, min_size=8) is photo_batch
    padded = pad_to_multiple(photo(30, 45)[None], 4, min_size=8)
    assert padded.shape[-2:] == (32, 48)
    assert torch.equal(padded[0, :, 30], padded[0, :, 28]) and torch.equal(padded[0, :, :, 47], padded[0, :, :, 41])


def test_padded_forward_crops_back_and_is_what_inference_runs(model: InferenceModel) -> None:
    from stylenet.inference import crop_to, padded_forward

    net = tiny_net()
    image = photo(30, 45)
    with torch.inference_mode():
        out = padded_forward(net, image[None])
        assert out.shape == (1, 3, 30, 45)
        assert torch.allclose(out[0], model.transform(image), atol=1e-5)
    assert torch.equal(crop_to(torch.arange(12.0).view(1, 3, 4), 2, 3), torch.tensor([[[0.0, 1, 2], [4, 5, 6]]]))


def test_run_network_matches_the_model_for_previews(model: InferenceModel) -> None:
    image = photo(30, 45)
    assert torch.allclose(run_network(model.net, image), model.transform(image), atol=1e-6)


def test_target_size() -> None:
    assert target_size(300, 400) == (300, 400)
    assert target_size(300, 400, max_size=200) == (150, 200)
    assert target_size(300, 400, scale=0.5) == (150, 200)
    assert target_size(300, 400, scale=2, max_size=600) == (450, 600)
    assert target_size(1, 1000, max_size=10) == (1, 10)
    with pytest.raises(StylenetError):
        target_size(10, 10, scale=0)
    assert target_size(3000, 4000, scale=4) == (12000, 16000)  # a 12 MP photo upscaled: 192 MP, a real size
    for huge in ({"scale": 1e300}, {"scale": 1000, "max_size": 100_000}):  # 2^32 pixels and beyond: a typo
        with pytest.raises(StylenetError, match=r"px, beyond 4294967296 pixels"):
            target_size(3000, 4000, **huge)


# ------------------------------------------------------------------------------------ tiles


@pytest.mark.parametrize("length,tile,overlap,multiple", [
    (100, 100, 16, 4), (300, 256, 64, 4), (1000, 128, 32, 4), (257, 64, 16, 1), (130, 64, 0, 4)])
def test_tile_spans_cover_the_axis_on_the_sampling_grid(length: int, tile: int, overlap: int,
                                                         multiple: int) -> None:
    spans = tile_spans(length, tile, overlap, multiple)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (start, stop), (next_start, _) in itertools.pairwise(spans):
        assert start % multiple == 0 and stop - start <= tile
        assert stop - next_start >= overlap  # neighbours overlap at least as asked
    weights = tile_weights(spans, overlap)
    total = torch.zeros(length)
    for (start, stop), weight in zip(spans, weights, strict=True):
        total[start:stop] += weight
        if start > 0 and overlap >= 4:
            assert weight[0] == 0  # the tile's cut edge never contributes
    assert torch.allclose(total, torch.ones(length))


def test_frozen_statistics_of_the_same_image_reproduce_the_network() -> None:
    net = tiny_net()
    image = photo(40, 52).unsqueeze(0)
    frozen = freeze_norm_statistics(net, record_norm_statistics(net, image))
    with torch.inference_mode():
        assert torch.allclose(frozen(image), net(image), atol=1e-5)
    assert not any(type(m).__name__ == "FrozenInstanceNorm" for m in net.modules())  # original untouched


def test_statistics_are_not_recorded_from_another_pass_through_the_same_network() -> None:
    """The web page's workers share one network: a pass another thread runs through it while an
    image's statistics are recorded (here: from a hook at its last layer) must not be recorded."""
    net = tiny_net()
    image, other = photo(40, 52).unsqueeze(0), photo(40, 52, seed=5).unsqueeze(0)
    alone = record_norm_statistics(net, image)
    interrupted = []

    def other_thread(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not interrupted:
            interrupted.append(True)
            net(other)

    last = list(net.modules())[-1]
    last.register_forward_hook(other_thread)
    shared = record_norm_statistics(net, image)
    assert interrupted
    for name, (mean, var) in alone.items():
        assert torch.equal(shared[name][0], mean) and torch.equal(shared[name][1], var)


def test_tiled_output_matches_the_whole_image() -> None:
    """Frozen InstanceNorm statistics + overlapping ramps: tiles reproduce the whole-image output
    (the README's 1024 px / 256 px tile figure comes from scripts/tile_check.py)."""
    model = InferenceModel(tiny_net(residual_blocks=2), device="cpu", precision="fp32")
    image = photo(160, 200, seed=3)
    whole = model.transform(image)
    assert whole.std() > 0.05  # a net that does something, so PSNR means something
    calls = []
    tiled = model.transform(image, tile=96, tile_overlap=48, progress=lambda done, total: calls.append(total))
    assert psnr(tiled, whole) > 40.0
    assert len(calls) == calls[0] >= 4


def test_exact_streaming_statistics_for_images_beyond_the_budget() -> None:
    """Above the memory budget the statistics come from a thumbnail (consistent across tiles, but
    not the whole image's); ``exact_statistics`` measures them over the tiles, layer by layer."""
    model = InferenceModel(tiny_net(residual_blocks=2), device="cpu", precision="fp32")
    image = photo(160, 200, seed=3)
    whole = model.transform(image)
    model.max_memory = int(96 * 96 * model.bytes_per_pixel())  # too small for a whole-image pass
    thumbnail = model.transform(image, tile=96, tile_overlap=48)
    calls = []
    exact = model.transform(image, tile=96, tile_overlap=48, exact_statistics=True,
                            progress=lambda done, total: calls.append((done, total)))
    assert psnr(exact, whole) > 40.0 > psnr(thumbnail, whole)
    norms = sum(isinstance(m, nn.InstanceNorm2d) for m in model.net.modules())
    tiles = len(tile_spans(160, 96, 48, 4)) * len(tile_spans(200, 96, 48, 4))
    assert calls[-1][0] == calls[-1][1] == len(calls) == (norms + 1) * tiles  # one tile pass per layer


def test_core_spans_partition_the_padded_axis() -> None:
    spans = tile_spans(998, 128, 32, 4)
    cores = core_spans(spans, 4, 1000)  # the whole image is padded from 998 to 1000
    assert cores[0][0] == 0 and cores[-1][1] == 1000
    assert [start for start, _ in cores[1:]] == [stop for _, stop in cores[:-1]]  # contiguous, disjoint
    for index, ((start, stop), (core_start, core_stop)) in enumerate(zip(spans, cores, strict=True)):
        assert core_start % 4 == 0
        if index > 0:
            assert core_start - start >= 12  # about half the overlap away from the cut edges
        if index < len(spans) - 1:
            assert stop - core_stop >= 16


def test_quantized_output_is_the_rounded_float_output(model: InferenceModel) -> None:
    image = photo(50, 70)
    quantized = model.transform(image, tile=64, tile_overlap=16, quantize=True)
    assert quantized.dtype == torch.uint8
    exact = model.transform(image, tile=64, tile_overlap=16)
    assert (quantized.float() - exact * 255).abs().max() <= 0.5 + 1e-3
    sixteen = model.transform(image, tile=64, tile_overlap=16, quantize=True, bits=16)
    assert sixteen.dtype == torch.uint16
    assert (sixteen.to(torch.int32).float() - exact * 65535).abs().max() <= 0.5 + 0.1
    with pytest.raises(StylenetError, match="bits"):
        model.transform(image, quantize=True, bits=12)


class Doubler(nn.Module):
    """A stand-in super-resolution network: output = scale x input (nearest + 3x3 conv)."""

    scale = 2

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Upsample(scale_factor=2), nn.ReflectionPad2d(1), nn.Conv2d(3, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


def test_networks_with_a_scale_use_the_same_path() -> None:
    model = InferenceModel(Doubler(), device="cpu")
    image = photo(70, 90)
    whole = model.transform(image)
    assert whole.shape == (3, 140, 180)
    tiled = model.transform(image, tile=64, tile_overlap=16)
    assert torch.allclose(tiled, whole, atol=1e-5)  # no InstanceNorm: tiles are exact
    assert model.transform(image, Controls(strength=0.0)).shape == (3, 140, 180)


# ------------------------------------------------------------------------------------ memory


class OutOfMemoryAbove(nn.Module):
    """Identity that raises the CUDA out-of-memory error for inputs above ``limit`` pixels."""

    size_multiple = 4

    def __init__(self, limit: int, error: type[Exception] = torch.OutOfMemoryError) -> None:
        super().__init__()
        self.limit, self.error, self.weight = limit, error, nn.Parameter(torch.zeros(1))
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        if x.shape[-1] * x.shape[-2] > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x


def test_out_of_memory_retries_with_smaller_tiles() -> None:
    net = OutOfMemoryAbove(limit=100 * 100)
    model = InferenceModel(net, device="cpu", max_memory=1 << 40)
    image = photo(300, 300)
    assert torch.allclose(model.transform(image), image, atol=1e-6)
    assert max(h * w for h, w in model.net.sizes[-4:]) <= 100 * 100  # the copy InferenceModel runs


def test_out_of_memory_everywhere_fails_clearly() -> None:
    model = InferenceModel(OutOfMemoryAbove(limit=10), device="cpu", max_memory=1 << 40)
    with pytest.raises(StylenetError, match="out of memory on cpu even with 64 px tiles"):
        model.transform(photo(200, 200))


def test_other_errors_are_never_swallowed() -> None:
    model = InferenceModel(OutOfMemoryAbove(limit=10, error=ValueError), device="cpu", max_memory=1 << 40)
    with pytest.raises(ValueError, match="CUDA out of memory"):  # a ValueError is not an allocation failure
        model.transform(photo(100, 100))


def test_beyond_the_budget_a_style_net_runs_layer_by_layer_exactly() -> None:
    """The default for images beyond the memory budget: the one-pass result (not a thumbnail's
    statistics), finished band by band, with controls and quantisation; --tile still tiles."""
    model = InferenceModel(tiny_net(residual_blocks=2), device="cpu", precision="fp32")
    image = photo(200, 120, seed=3)
    whole = model.transform(image, Controls(strength=0.6))
    model.max_memory = int(80 * 80 * model.bytes_per_pixel())
    calls = []
    layered = model.transform(image, Controls(strength=0.6), progress=lambda done, total: calls.append((done, total)))
    assert torch.allclose(layered, whole, atol=1e-5)
    assert len(calls) > 1 and calls[-1][0] == calls[-1][1]
    quantized = model.transform(image, Controls(strength=0.6), quantize=True)
    assert quantized.dtype == torch.uint8 and (quantized.float() - whole * 255).abs().max() <= 0.5 + 1e-3
    tiled = model.transform(image, Controls(strength=0.6), tile=64, tile_overlap=32)
    assert (tiled - whole).abs().max() > 0 and psnr(tiled, whole) < psnr(layered, whole)


def test_automatic_tiling_follows_the_memory_budget() -> None:
    """Networks the layer-by-layer executor does not know are tiled beyond the budget."""
    model = InferenceModel(Doubler(), device="cpu")
    model.max_memory = int(40 * 40 * model.bytes_per_pixel())
    calls = []
    out = model.transform(photo(100, 70), progress=lambda done, total: calls.append(total))
    assert calls and calls[0] > 1
    assert torch.allclose(out, InferenceModel(Doubler(), device="cpu").transform(photo(100, 70)), atol=1e-5)


def test_precision_defaults_to_auto_as_on_the_command_line(model_file: Path) -> None:
    from stylenet.cli.stylize import build_parser
    from stylenet.fastpath import inference_precision

    cli = build_parser().parse_args(["x.png", "-m", "m.safetensors", "-o", "out"]).precision
    assert cli == "auto"
    expected = inference_precision("cpu")
    assert stylenet.load_model(model_file, device="cpu").precision == expected
    assert InferenceModel(tiny_net(), device="cpu").precision == expected
    assert InferenceModel(tiny_net(), device="cpu", precision=cli).precision == expected


# ------------------------------------------------------------------------------------ controls


def test_strength_zero_returns_the_content(model: InferenceModel) -> None:
    image = photo(33, 47)
    assert torch.equal(model.transform(image, Controls(strength=0.0)), image)
    half = model.transform(image, Controls(strength=0.5))
    assert torch.allclose(half, (image + model.transform(image)) / 2, atol=1e-6)


@pytest.mark.parametrize("overlap", [0, 8])
def test_a_tiled_upscales_content_is_the_whole_photos_bicubic_upscale(overlap: int) -> None:
    """strength 0 of a super-resolution network is the photo's bicubic upscale, tiles or not: each tile's
    content was upsampled alone, clamped at the tile's own edges, seams of up to 20 levels where little or
    no overlap hid them."""
    torch.manual_seed(0)
    model = InferenceModel(SuperResolutionNet(4, channels=8, residual_blocks=1).eval(), device="cpu",
                           precision="fp32")
    image = photo(96, 136)
    expected = torch.nn.functional.interpolate(image[None], scale_factor=4, mode="bicubic")[0].clamp(0.0, 1.0)
    tiled = model.transform(image, Controls(strength=0.0), tile=64, tile_overlap=overlap)
    assert (tiled - expected).abs().max() < 1e-5
    half = model.transform(image, Controls(strength=0.5), tile=64, tile_overlap=overlap)
    network = model.transform(image, tile=64, tile_overlap=overlap)
    assert (half - (expected + network) / 2).abs().max() < 1e-5


def test_preserve_color_keeps_the_contents_chroma(model: InferenceModel) -> None:
    image = photo(40, 60) * 0.6 + 0.2  # away from the gamut edges, so clamping cannot move chroma
    stylized = model.transform(image)
    kept = model.transform(image, Controls(preserve_color=True))
    inside = (kept > 0.001).all(0) & (kept < 0.999).all(0)  # where clamping to [0, 1] did not act
    assert inside.float().mean() > 0.5
    assert torch.allclose(chroma(kept)[:, inside], chroma(image)[:, inside], atol=1e-5)
    assert torch.allclose(luma(kept)[0][inside], luma(stylized)[0][inside], atol=1e-5)
    assert (chroma(stylized) - chroma(image)).abs().mean() > 0.02  # the style did change the colours


def test_controls_validate_strength_and_switches() -> None:
    with pytest.raises(StylenetError, match="strength"):
        Controls(strength=1.5)
    with pytest.raises(StylenetError, match="preserve_color must be True or False, got 'no'"):  # not "on"
        Controls(preserve_color="no")
    assert Controls(preserve_color=np.True_).needs_content


def test_unknown_device_and_precision_are_clear_errors() -> None:
    with pytest.raises(StylenetError, match="precision"):
        InferenceModel(tiny_net(), precision="fp8")
    with pytest.raises(StylenetError, match="device"):
        InferenceModel(tiny_net(), device="tpu")


# ------------------------------------------------------------------------------------ the notebook API


def test_a_bad_max_memory_or_precision_is_refused_when_the_model_is_made_or_later() -> None:
    """Later too: setting them on a loaded model is how a notebook changes them (a bad value was a KeyError or
    TypeError at the next image)."""
    from stylenet.fastpath import inference_precision

    for bad in ("2GB", -5, 0):
        with pytest.raises(StylenetError, match="max_memory must be a number of bytes > 0 or None"):
            InferenceModel(TransformerNet(channels=8, residual_blocks=1), device="cpu", max_memory=bad)
    model = InferenceModel(TransformerNet(channels=8, residual_blocks=1), device="cpu", precision="fp32")
    with pytest.raises(StylenetError, match=r"^max_memory must be a number of bytes > 0 or None, got '1GB'$"):
        model.max_memory = "1GB"
    with pytest.raises(StylenetError, match=r"^precision must be one of .* or auto, got 'garbage'$"):
        model.precision = "garbage"
    assert (model.precision, model.max_memory) == ("fp32", None)  # unchanged by a refused value
    model.precision = "auto"  # as load_model resolves it: bf16 where the CPU runs it natively
    assert model.precision == inference_precision(torch.device("cpu"))
    model.max_memory = 1 << 30
    assert model.stylize(photo(20, 30)).shape == (3, 20, 30)
    with pytest.raises(StylenetError, match=r"^device is fixed once a model is loaded \(cpu\): load it again with "
                                            r"load_model\(\.\.\., device='cuda'\)$"):
        model.device = "cuda"  # was kept, and every call after it an AttributeError
    assert model.device == torch.device("cpu") and model.stylize(photo(20, 30)).shape == (3, 20, 30)


def test_load_model_refuses_what_is_no_path_and_an_unknown_task(model_file: Path) -> None:
    """None was pathlib's TypeError traceback; task="bogus" read the file, then said it was no 'bogus' model."""
    import stylenet

    for path in (None, 123):
        with pytest.raises(StylenetError, match=f"^path must be a model file's path, got {path!r}$"):
            stylenet.load_model(path)
    for task in ("bogus", ""):
        with pytest.raises(StylenetError, match=f"^task must be 'style', 'sr' or None, got {task!r}$"):
            stylenet.load_model(model_file, task=task)
    assert stylenet.load_model(str(model_file), task=None, device="cpu").stylize(photo(8, 8)).shape == (3, 8, 8)


def test_load_model_stylizes_pil_images_keeping_alpha_bit_exactly(model_file: Path) -> None:
    model = stylenet.load_model(model_file, device="cpu")
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (45, 61, 4), dtype=np.uint8)
    out = model.stylize(Image.fromarray(rgba, "RGBA"), strength=0.7, preserve_color=True)
    assert out.mode == "RGBA" and out.size == (61, 45)
    assert np.array_equal(np.asarray(out)[..., 3], rgba[..., 3])


def test_load_model_on_tensors_and_batches(model_file: Path) -> None:
    model = stylenet.load_model(model_file, device="cpu")
    assert model.name == "test"
    image = photo(20, 30)
    assert model.stylize(image).shape == (3, 20, 30)
    batch = torch.stack([image, photo(20, 30, seed=1)])
    out = model.stylize(batch, tile=64)
    assert out.shape == (2, 3, 20, 30)
    assert torch.allclose(out[0], model.stylize(image), atol=1e-6)


def test_results_are_ordinary_tensors_and_wrong_inputs_are_one_line(model_file: Path, tmp_path: Path) -> None:
    """A notebook changes a result in place or feeds it to autograd: no inference tensor comes back."""
    from stylenet.image import from_pil

    model = stylenet.load_model(model_file, device="cpu")
    image = photo(20, 30)
    single, frame = model.stylize(image), next(model.stylize_frames([image]))
    for result in (single, frame, model.stylize(image[None])[0]):
        assert not torch.is_inference(result)
        (result * torch.ones(1, requires_grad=True)).sum().backward()
    torch.testing.assert_close(single.mul_(2), frame * 2)
    pil = Image.fromarray(np.zeros((20, 30, 3), np.uint8))
    for wrong, hint in ((np.zeros((20, 30, 3), np.uint8), "PIL.Image.fromarray"), (from_pil(pil), "model.process"),
                        ("photo.png", "load_image or PIL.Image.open")):
        with pytest.raises(StylenetError, match=f"stylize takes a PIL image or a tensor, got .*: .*{hint}"):
            model.stylize(wrong)
    with pytest.raises(StylenetError, match=r"process takes strength in controls=stylenet.inference.Controls"):
        model.process(from_pil(pil), strength=0.5)
    for tile in (64.5, True):
        with pytest.raises(StylenetError, match=r"tile \(--tile\) must be a whole number of pixels, at least 64"):
            model.stylize(image, tile=tile)
    for overlap in (None, "x", -1):  # None was '<' not supported between NoneType and int
        with pytest.raises(StylenetError, match=r"^tile_overlap \(--tile-overlap\) must be a whole number of pixels "
                                                f">= 0, got {re.escape(repr(overlap))}$"):
            model.stylize(image, tile=64, tile_overlap=overlap)
    grey = Image.fromarray(np.zeros((20, 30), np.uint8), "L")
    with pytest.raises(StylenetError, match=r"^keep_gray must be True, False or None .*got 'no'$"):  # "no" was true
        model.stylize(grey, keep_gray="no")
    with pytest.raises(StylenetError, match=r"^keep_gray must be True, False or None .*got 'no'$"):  # not read
        model.stylize(image, keep_gray="no")
    for flag in ("exact_statistics", "quantize"):  # "no" was true: exact statistics, uint8 levels
        with pytest.raises(StylenetError, match=f"^{flag} must be True or False, got 'no'$"):
            model.transform(image, **{flag: "no"})
    for size in (30, (True, 40), (10, 0), "ab"):  # 30 was a TypeError, (True, 40) a picture one pixel high
        with pytest.raises(StylenetError, match=r"^size must be \(height, width\) in whole pixels >= 1, got "):
            model.process(from_pil(pil), size=size)
    with Image.open(make_photo(tmp_path / "p.png")) as closed:
        pass
    with pytest.raises(StylenetError, match=r"^the PIL image '.*p.png' was closed before stylenet read it: "):
        model.stylize(closed)  # a bare AssertionError from Pillow
    # whole numbers of numpy's types are whole numbers
    assert model.process(from_pil(pil), size=(np.int64(10), np.int64(15))).rgb.shape == (3, 10, 15)
    assert stylenet.load_model(model_file, device="cpu", max_memory=np.int64(1 << 30)).max_memory == 1 << 30


def test_a_pil_image_cut_short_is_one_line_naming_its_file_and_16_bits_stay_16(model_file: Path,
                                                                              tmp_path: Path) -> None:
    """A truncated photo opened by the caller was Pillow's 'image file is truncated', naming nothing; a 16-bit
    PIL image was 8 bits once through from_pil (process(quantize=True) rounds to the source's depth)."""
    from stylenet.image import from_pil

    model = stylenet.load_model(model_file, device="cpu")
    whole = tmp_path / "whole.png"
    Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)).save(whole)
    (cut := tmp_path / "cut.png").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(StylenetError, match=rf"^cannot read image {re.escape(repr(str(cut)))}: "):
        model.stylize(Image.open(cut))
    deep = Image.fromarray(np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 27)
    assert deep.mode == "I;16" and from_pil(deep).bits == 16
    assert model.process(from_pil(deep), quantize=True).rgb.dtype == torch.uint16


def test_grey_in_rgb_out_unless_keep_gray(model_file: Path) -> None:
    model = stylenet.load_model(model_file, device="cpu")
    grey = Image.fromarray((photo(30, 40)[0] * 255).byte().numpy(), "L")
    assert model.stylize(grey).mode == "RGB"
    assert model.stylize(grey, keep_gray=True).mode == "L"


def test_sixteen_bit_mid_grey_stays_mid_grey(model_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((24, 32), 32768, dtype=np.uint16)).save(path)
    model = stylenet.load_model(model_file, device="cpu")
    out = model.process(load_image(path), Controls(strength=0.0))
    assert out.rgb.shape == (3, 24, 32)
    assert torch.allclose(out.rgb, torch.full_like(out.rgb, 0.5), atol=1e-3)  # 32768/65535, not clipped to 1


def test_exif_rotation_and_icc_profile_are_applied(model_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displayed rotated by 90 degrees
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (40, 24), (200, 30, 30)).save(path, exif=exif, icc_profile=icc)
    model = stylenet.load_model(model_file, device="cpu")
    out = model.process(load_image(path))
    assert out.rgb.shape == (3, 40, 24)
    assert out.icc_profile == icc
    assert model.stylize(Image.open(path)).size == (24, 40)


def test_resizing_resizes_the_alpha_too(model: InferenceModel) -> None:
    from stylenet.image import LoadedImage

    alpha = torch.full((1, 40, 60), 255, dtype=torch.uint8)
    image = LoadedImage(rgb=photo(40, 60), alpha=alpha, icc_profile=None, was_gray=False)
    out = model.process(image, size=(20, 30), quantize=True)
    assert out.rgb.shape == (3, 20, 30) and out.rgb.dtype == torch.uint8
    assert out.alpha.shape == (1, 20, 30) and out.alpha.dtype == torch.uint8
    assert bool((out.alpha == 255).all())


# ------------------------------------------------------------------------------------ 16 bits


def _levels16(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random 16-bit levels, none a multiple of 257 (an 8-bit path would round every one of them)."""
    levels = np.random.default_rng(seed).integers(0, 65535, size=shape, dtype=np.uint16)
    return np.where(levels % 257 == 0, levels + 1, levels).astype(np.uint16)


def _read16(path: Path) -> np.ndarray:
    """A 16-bit file read by the libraries themselves (Pillow would give 8 bits)."""
    import imagecodecs
    import tifffile

    return imagecodecs.png_decode(path.read_bytes()) if path.suffix == ".png" else tifffile.imread(path)


@pytest.mark.parametrize(("source_suffix", "output_suffix", "size", "options"), [
    (".png", ".png", (30, 45), ["--precision", "fp32"]),
    (".tif", ".tif", (30, 45), ["--precision", "fp32"]),
    (".png", ".tiff", (32, 48), ["--precision", "fp32"]),
    (".tif", ".png", (100, 90), ["--tile", "64", "--tile-overlap", "16", "--precision", "bf16"]),
])
def test_sixteen_bit_rgb_in_sixteen_bit_out_at_strength_zero(model_file: Path, tmp_path: Path, source_suffix: str,
                                                             output_suffix: str, size: tuple[int, int],
                                                             options: list[str]) -> None:
    import imagecodecs
    import tifffile

    from stylenet.cli.stylize import main as stylize_main

    pixels = _levels16((*size, 4), seed=size[1])  # RGBA: the alpha band must come through too
    source, output = tmp_path / f"photo{source_suffix}", tmp_path / f"out{output_suffix}"
    if source_suffix == ".png":
        source.write_bytes(imagecodecs.png_encode(pixels))
    else:
        tifffile.imwrite(source, pixels, photometric="rgb", extrasamples=["unassalpha"])
    arguments = [str(source), "-m", str(model_file), "-o", str(output), "--strength", "0", "--device", "cpu"]
    assert stylize_main([*arguments, *options]) == 0
    written = _read16(output)
    assert written.dtype == np.uint16 and written.shape == pixels.shape
    assert np.abs(written.astype(np.int32) - pixels.astype(np.int32)).max() <= 1  # within 1 LSB of 16 bits
    assert np.array_equal(written[..., 3], pixels[..., 3])


def test_sixteen_bit_source_to_an_8_bit_format_is_rounded_once(model_file: Path, tmp_path: Path) -> None:
    import imagecodecs

    from stylenet.cli.stylize import main as stylize_main

    pixels = _levels16((24, 40, 3), seed=5)
    source = tmp_path / "photo.png"
    source.write_bytes(imagecodecs.png_encode(pixels))
    output = tmp_path / "out.bmp"
    assert stylize_main([str(source), "-m", str(model_file), "-o", str(output), "--strength", "0",
                         "--device", "cpu", "--precision", "fp32"]) == 0
    with Image.open(output) as written:
        assert written.mode == "RGB"
        expected = np.round(pixels.astype(np.float64) * 255 / 65535)
        assert np.abs(np.asarray(written).astype(np.float64) - expected).max() == 0


def test_sixteen_bit_api_keeps_the_depth_through_process(model_file: Path, tmp_path: Path) -> None:
    import imagecodecs

    pixels = _levels16((20, 28, 3), seed=6)
    source = tmp_path / "photo.png"
    source.write_bytes(imagecodecs.png_encode(pixels))
    model = stylenet.load_model(model_file, device="cpu")
    loaded = load_image(source)
    out = model.process(loaded, Controls(strength=0.0), quantize=True)
    assert out.bits == 16 and out.rgb.dtype == torch.uint16
    assert np.array_equal(out.rgb.permute(1, 2, 0).numpy(), pixels)
    styled = model.process(loaded, quantize=True)
    assert styled.rgb.dtype == torch.uint16 and (styled.rgb.to(torch.int32) % 257 != 0).any()
    # bad arguments are one line each, not an error from deep inside torch
    for size in ((0, 10), (5,), (10.5, 3)):
        with pytest.raises(StylenetError, match=r"size must be \(height, width\) in whole pixels >= 1"):
            model.process(loaded, size=size)
    with pytest.raises(StylenetError, match="process takes a LoadedImage .* got PngImageFile; stylize takes PIL"):
        model.process(Image.open(source))
    with pytest.raises(StylenetError, match="strength must be a number in \\[0, 1\\], got '0.5'"):
        model.stylize(Image.open(source), strength="0.5")


def test_match_histogram_keeps_16_bit_levels() -> None:
    from stylenet.image import match_histogram

    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(3, 40, 50, generator=generator) * 0.5 * 65535).round().to(torch.int32).to(torch.uint16)
    reference = torch.rand(3, 20, 25, generator=generator) * 0.5 + 0.5  # brighter: the output must follow
    matched = match_histogram(image, reference)
    assert matched.dtype == torch.uint16 and matched.shape == image.shape
    as_unit = matched.to(torch.int32).float() / 65535
    assert abs(float(as_unit.mean()) - float(reference.mean())) < 0.01
    assert (matched.to(torch.int32) % 257 != 0).any()  # 16-bit levels, not 8-bit ones scaled up
    order = image[0].flatten().to(torch.int32).argsort()
    assert bool((matched[0].flatten().to(torch.int32)[order].diff() >= 0).all())  # monotone


def test_sixteen_bits_survive_upscaling_and_histogram_matching(model_file: Path, tmp_path: Path) -> None:
    import imagecodecs

    from stylenet.cli.stylize import main as stylize_main

    torch.manual_seed(0)
    sr = save_model(tmp_path / "sr_x4.safetensors", SuperResolutionNet(4, channels=8, residual_blocks=1).eval(),
                    {"task": "sr", "factor": 4})
    source, output = tmp_path / "photo.png", tmp_path / "big.png"
    source.write_bytes(imagecodecs.png_encode(_levels16((12, 16, 3), seed=7)))
    assert stylize_main([str(source), "-m", str(model_file), "-o", str(output), "--upscale", str(sr),
                         "--match-histogram", "--device", "cpu", "--precision", "fp32"]) == 0
    written = _read16(output)
    assert written.dtype == np.uint16 and written.shape == (48, 64, 3)
    assert (written.astype(np.int32) % 257 != 0).any()  # 16-bit levels, not 8-bit ones scaled up


def test_a_bright_photo_keeps_its_precision_in_bf16() -> None:
    """Every pass takes the image less its per-channel mean (geometry.input_offset): the same image in
    exact arithmetic, far fewer bf16 rounding errors on a bright, low-contrast photo."""
    import copy

    from stylenet.inference.geometry import forward, input_offset
    from tests.test_frames import trained_like

    net = trained_like(channels=8, residual_blocks=2)
    exact = copy.deepcopy(net).double()
    bright = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 0.1 + 0.88
    offset = input_offset(net, bright)
    assert offset is not None and torch.allclose(offset.flatten(), bright.mean(dim=(0, 2, 3)))
    with torch.inference_mode():
        truth = exact(bright.double())
        assert (exact(bright.double() - offset.double()) - truth).abs().max() < 1e-10  # the same function
        model = InferenceModel(net, device="cpu", precision="bf16")
        uncentred = (forward(model.net, bright, "bf16") - truth).abs().mean() * 255
        centred = (model.transform(bright[0]) - truth[0]).abs().mean() * 255
    assert centred < 1.0 and centred < uncentred / 3, (centred, uncentred)  # grey levels
    assert input_offset(TransformerNet(channels=8, residual_blocks=1, norm="batch"), bright) is None
    assert input_offset(SuperResolutionNet(factor=4), bright) is None


def test_the_memory_check_counts_a_super_resolution_output_scale_squared(monkeypatch: pytest.MonkeyPatch) -> None:
    from stylenet.inference.memory import check_image_memory

    monkeypatch.setattr("stylenet.inference.memory.available_memory", lambda device: 12 * 100 * (1 + 4**2))
    check_image_memory(10, 10, 4)  # (3, 10, 10) in and (3, 40, 40) out in float32: exactly what is free
    with pytest.raises(StylenetError, match=r"^resized to 10x10 px, the image and its output alone need 0.0312 MB of "
                                            r"memory, but 0.0204 MB is free"):
        check_image_memory(10, 10, 5)
