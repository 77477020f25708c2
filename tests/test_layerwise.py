"""The layer-by-layer executor computes what one pass computes (fp32 to rounding, bf16 within the
bf16 tolerance of the other tests), with any band size, recomputing or storing the
full-resolution layers, in less memory than one pass."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stylenet import StylenetError
from stylenet.fastpath import optimize_for_inference
from stylenet.inference import InferenceModel, layerwise
from stylenet.inference.geometry import forward, padded_forward, padded_pixels
from stylenet.inference.layerwise import layerwise_bands, layerwise_forward, network_layers, plan
from stylenet.inference.memory import _PeakTensorMemory, default_max_memory
from stylenet.nets import TransformerNet


def net(channels: int = 8, blocks: int = 2, seed: int = 0) -> TransformerNet:
    torch.manual_seed(seed)
    return TransformerNet(channels=channels, residual_blocks=blocks).eval()


def image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / max(float((a - b).pow(2).mean()), 1e-30))


@pytest.mark.parametrize("budget", [None, 1])  # store every layer / recompute the full-resolution ones
@pytest.mark.parametrize("band_pixels", [8 * 60, 24 * 60])
def test_plain_network_equals_one_pass_in_fp32(budget: int | None, band_pixels: int) -> None:
    plain, x = net(), image(48, 60)
    with torch.inference_mode():
        expected = plain(x[None])[0]
    out = layerwise_forward(plain, x, budget=budget, band_pixels=band_pixels)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_the_memory_budget_counts_the_pixels_of_the_padded_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 x 4000 strip runs as 8 x 4000 (the network's smallest side): under a budget of 5000 pixels it
    goes layer by layer, and a 40 x 100 photo in one pass. A network of several styles has the budget
    of the single-style network each style runs as."""
    assert padded_pixels(net(), 1, 4000) == 8 * 4000 and padded_pixels(net(), 30, 41) == 32 * 44
    model = InferenceModel(net(blocks=1), {"task": "style"}, "cpu", "fp32", max_memory=5_000_000)
    monkeypatch.setattr(InferenceModel, "bytes_per_pixel", lambda self: 1000.0)
    assert model.max_pixels() == 5000
    paths = []
    real = InferenceModel._run_layerwise
    monkeypatch.setattr(InferenceModel, "_run_layerwise",
                        lambda self, *args: paths.append("layerwise") or real(self, *args))
    for height, width in ((1, 4000), (40, 100)):
        assert model.transform(image(height, width)).shape == (3, height, width)
    assert paths == ["layerwise"]
    monkeypatch.undo()
    several = InferenceModel(TransformerNet(channels=8, residual_blocks=1, styles=2).eval(),
                             {"task": "style", "styles": [{"name": "a"}, {"name": "b"}]}, "cpu", "fp32",
                             max_memory=5_000_000)
    assert several.max_pixels() == several.for_style("a").max_pixels() > 0


def test_any_size_pads_like_one_pass() -> None:
    plain, x = net(blocks=1), image(45, 58, seed=1)
    with torch.inference_mode():
        expected = padded_forward(plain, x[None])[0]
    out = layerwise_forward(plain, x, budget=1, band_pixels=8 * 58)
    assert out.shape == (3, 45, 58)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("channels", [8, 16])  # 8: the first layer is rewritten too (few outputs)
def test_rewritten_network_equals_its_one_pass(channels: int) -> None:
    fast, x = optimize_for_inference(net(channels)), image(40, 52, seed=2)
    with torch.inference_mode():
        expected = forward(fast, x[None])[0]
    out = layerwise_forward(fast, x, budget=1, band_pixels=8 * 52)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_bf16_stays_within_the_bf16_tolerance_of_one_pass() -> None:
    fast, x = optimize_for_inference(net(16)), image(64, 48, seed=3)
    with torch.inference_mode():
        expected = forward(fast, x[None], "bf16")[0]
    out = layerwise_forward(fast, x, precision="bf16", budget=1, band_pixels=8 * 48)
    assert psnr(out, expected) >= 40.0


def test_bands_arrive_in_order_with_progress() -> None:
    x = image(40, 36)
    calls: list[tuple[int, int]] = []
    bands = list(layerwise_bands(net(), x, band_pixels=8 * 36,
                                 progress=lambda done, total: calls.append((done, total))))
    assert [top for top, _ in bands] == list(range(0, 40, 8))
    assert sum(rows.shape[1] for _, rows in bands) == 40
    assert calls[-1][0] == calls[-1][1] == len(calls)


def test_plan_recomputes_only_full_resolution_layers_over_budget() -> None:
    layers = network_layers(net(blocks=1))
    assert layers is not None
    stored = plan(layers, 64, 64, "fp32", budget=None)
    assert not any(stored.recompute)
    tight = plan(layers, 64, 64, "fp32", budget=1)
    full = [height == 64 for height in tight.heights]
    assert tight.recompute == [f and index + 1 < len(layers) for index, f in enumerate(full)]
    assert all(rows % 2 == 0 for rows in tight.rows)
    assert tight.passes == stored.passes  # progress counts bands once; recomputation runs inside the next layer's


def test_peak_memory_is_a_fraction_of_one_pass() -> None:
    """Counted tensor bytes (not RSS): the layer-by-layer peak is bounded by the largest layer's
    input and output maps plus a few bands, below one pass's."""
    fast, x = optimize_for_inference(net(16, blocks=2)), image(256, 256)
    with torch.inference_mode(), _PeakTensorMemory() as one:
        forward(fast, x[None])
    band_pixels = 16 * 256
    with _PeakTensorMemory() as layered:
        layerwise_forward(fast, x, budget=1, band_pixels=band_pixels)
    largest_layer = (32 * 128 * 128 + 16 * 256 * 256) * 4  # the last upsampling: its fp32 input and output
    assert layered.peak <= largest_layer + 8 * (16 * band_pixels * 4)  # + 8 bands of 16 channels
    assert layered.peak < 0.6 * one.peak


@pytest.mark.parametrize("band_pixels", [8 * 60, 24 * 60])  # the residual layers' bands: 2 and 6 rows
def test_stored_layers_take_two_mapped_buffers(monkeypatch: pytest.MonkeyPatch, band_pixels: int) -> None:
    """Every stored layer mapped from the operating system (here; on the CPU the large ones), and a
    residual block's second layer written over its first: the same image as one pass, from two
    buffers in all (the first downsampling layer's, later the blocks' and the upsampling's, and the
    second's, the blocks' input), where a buffer per layer of a block would take three."""
    mapped: list[int] = []

    def counted(size: int) -> torch.Tensor:
        mapped.append(size)
        return real(size)

    real = layerwise._mapped
    monkeypatch.setattr(layerwise, "MAPPED_BYTES", 0)
    monkeypatch.setattr(layerwise, "_mapped", counted)
    plain, x = net(blocks=3), image(48, 60)
    with torch.inference_mode():
        expected = plain(x[None])[0]
    out = layerwise_forward(plain, x, budget=1, band_pixels=band_pixels)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert mapped == [16 * 24 * 30 * 4, 32 * 12 * 15 * 4]


def test_other_networks_are_refused_in_one_line() -> None:
    assert network_layers(nn.Conv2d(3, 3, 3)) is None
    assert network_layers(TransformerNet(channels=4, residual_blocks=1, norm="batch")) is None
    with pytest.raises(StylenetError, match="TransformerNet with InstanceNorm"):
        layerwise_forward(nn.Sequential(nn.Conv2d(3, 3, 1)), image(16, 16))


def test_the_gpu_budget_counts_the_allocators_cache_as_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """80% of the driver's free memory plus what PyTorch's allocator holds unused from earlier passes:
    the same after a big image as before it."""
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 6 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 1 * gib)
    assert default_max_memory(torch.device("cuda")) == int(15 * gib * 0.8)


@pytest.mark.skipif(not layerwise.BufferPool(torch.device("cpu")).releases, reason="no madvise(MADV_DONTNEED) here")
@pytest.mark.parametrize("channels_last", [True, False])
def test_released_rows_are_given_back_and_no_others(channels_last: bool) -> None:
    """Rows [2, 7) of a mapped (1, C, H, W) layer given back read as zeros afterwards (a fresh page),
    every other row keeps its values: one span of memory in channels_last, one per channel in NCHW.
    Rows of exactly one page (4 KiB) here, so that every released row is a whole page."""
    pool = layerwise.BufferPool(torch.device("cpu"), mapped_bytes=0)
    shape = (1, 4, 10, 256) if channels_last else (1, 3, 10, 1024)  # float32 rows: 4 KiB in its layout
    stored = pool.empty(shape, torch.float32, channels_last)
    stored.fill_(1.0)
    pool.release_rows(stored, 2, 7)
    per_row = stored[0].sum(dim=(0, 2))
    expected = torch.full((10,), float(shape[1] * shape[3]))
    expected[2:7] = 0
    assert torch.equal(per_row, expected)


def test_streamed_layers_store_what_others_recompute_and_give_the_same_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """With rows given back as the next layer reads them (every buffer mapped here), a budget between
    the first layer's size and the first two layers' stores the full-resolution layers instead of
    recomputing them; rows are given back only once no band reads them, so the image is bit for bit
    that of storing everything (a row given back too soon would read as zeros)."""
    monkeypatch.setattr(layerwise, "MAPPED_BYTES", 0)
    plain, x = net(16, blocks=1), image(48, 256, seed=4)
    layers = network_layers(plain)
    assert layers is not None
    first, second = 16 * 48 * 256 * 4, 32 * 24 * 128 * 4  # the first two layers' fp32 outputs, bytes
    budget = first + second // 2
    assert plan(layers, 48, 256, "fp32", budget).recompute[0]
    streamed = plan(layers, 48, 256, "fp32", budget, streamed=True)
    assert not any(streamed.recompute)
    with monkeypatch.context() as keep_all:  # the reference: nothing given back, everything stored
        keep_all.setattr(layerwise.BufferPool, "releases", property(lambda self: False))
        expected = layerwise_forward(plain, x, band_pixels=8 * 256)
    released: list[tuple[int, int]] = []
    real = layerwise.BufferPool.release_rows
    monkeypatch.setattr(layerwise.BufferPool, "release_rows", lambda self, stored, start, stop:
                        released.append((start, stop)) or real(self, stored, start, stop))
    out = layerwise_forward(plain, x, budget=budget, band_pixels=8 * 256)
    assert (0, 7) in released  # the first layer's rows, as the second layer's first band is done
    assert torch.equal(out, expected)


def test_the_pool_reuses_a_buffer_that_fits_and_lets_go_of_those_too_small() -> None:
    """A layer goes into the smallest free buffer that holds it; where none does (the decoder's layers
    only grow), the free buffers go, not kept beside the new one for the rest of the image."""
    pool = layerwise.BufferPool(torch.device("cpu"), mapped_bytes=0)
    small, large = pool.empty((1, 4, 8, 8), torch.float32, True), pool.empty((1, 4, 16, 16), torch.float32, True)
    small_address, large_address = small.data_ptr(), large.data_ptr()
    del small, large
    assert len(pool.free) == 2
    reused = pool.empty((1, 2, 8, 8), torch.float32, False)
    assert reused.data_ptr() == small_address and len(pool.free) == 1
    larger = pool.empty((1, 4, 32, 32), torch.float32, True)
    assert larger.data_ptr() != large_address and not pool.free and len(pool.mappings) == 2
