"""stylize_frames: each frame comes out as stylize makes it alone (fp32 and bf16), as the same kind
of frame, across size changes, lazily; bad frames are refused in one line."""

from __future__ import annotations

import gc
import logging
import math
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import stylenet
from stylenet import StylenetError, fastpath
from stylenet.inference import InferenceModel
from stylenet.inference.geometry import forward, input_offset
from stylenet.inference.layerwise import network_layers
from stylenet.inference.memory import activation_bytes_per_pixel
from stylenet.inference.prepadded import PrepaddedNetwork, input_layouts, prepadded_forward
from stylenet.modelfile import save_model
from stylenet.nets import SuperResolutionNet, TransformerNet
from tests.conftest import make_photo
from tests.helpers import assert_precision_applies_to_the_next_frame


def tiny_model(precision: str) -> InferenceModel:
    torch.manual_seed(0)
    return InferenceModel(TransformerNet(channels=8, residual_blocks=1).eval(), device="cpu", precision=precision)


def uint8_frames(sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for height, width in sizes]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_uint8_frames_equal_stylize_per_frame(precision: str) -> None:
    model = tiny_model(precision)
    frames = uint8_frames([(30, 42), (30, 42), (26, 30), (30, 42)])  # a size change and back
    outputs = list(model.stylize_frames(frames, strength=0.8))
    for frame, out in zip(frames, outputs, strict=True):
        expected = np.asarray(model.stylize(Image.fromarray(frame), strength=0.8))
        assert out.dtype == np.uint8 and out.shape == frame.shape and out.flags.c_contiguous
        # the same computation: equal, at most a rounding apart
        assert np.abs(out.astype(np.int16) - expected).max() <= 1


def test_read_only_and_strided_frames_stream_without_a_warning() -> None:
    """np.asarray of a PIL image is read-only, and a crop of a bigger frame is strided: both are
    taken as they are (torch.from_numpy would warn about the first), and give what a copy gives."""
    import warnings

    model = tiny_model("fp32")
    frame = uint8_frames([(30, 42)])[0]
    read_only = np.asarray(Image.fromarray(frame))
    wide = np.zeros((30, 50, 3), np.uint8)
    wide[:, 4:46] = frame
    assert not read_only.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs = list(model.stylize_frames([read_only, wide[:, 4:46], frame.copy()]))
    assert np.array_equal(outputs[0], outputs[2]) and np.array_equal(outputs[1], outputs[2])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tensor_frames_equal_stylize_per_frame(precision: str) -> None:
    model = tiny_model(precision)
    generator = torch.Generator().manual_seed(1)
    frames = [torch.rand(3, 24, 36, generator=generator) for _ in range(3)]
    outputs = list(model.stylize_frames(frames, preserve_color=True))
    atol = 1e-5 if precision == "fp32" else 2e-2
    for frame, out in zip(frames, outputs, strict=True):
        assert out.shape == frame.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, model.stylize(frame, preserve_color=True), atol=atol, rtol=0)
    assert outputs[0].data_ptr() != outputs[1].data_ptr()  # a new tensor per frame


def test_frames_beyond_the_budget_take_the_photo_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same picture, but by the bounded path: the memory budget holds for video frames too."""
    model = tiny_model("fp32")
    frame = uint8_frames([(90, 80)])[0]
    expected = np.asarray(model.stylize(Image.fromarray(frame)))
    model.max_memory = int(40 * 40 * model.bytes_per_pixel())
    bounded = []
    real = InferenceModel._run_layerwise
    monkeypatch.setattr(InferenceModel, "_run_layerwise", lambda self, *args: bounded.append(1) or real(self, *args))
    assert np.abs(next(model.stylize_frames([frame])).astype(np.int16) - expected).max() <= 1
    assert bounded  # one pass would give the same picture, unbounded


def test_frames_are_lazy_and_bad_frames_fail_clearly() -> None:
    model = tiny_model("fp32")

    def endless():  # a webcam: never ends
        while True:
            yield uint8_frames([(16, 16)])[0]

    stream = model.stylize_frames(endless())
    assert next(stream).shape == (16, 16, 3)
    for bad in (np.zeros((16, 16, 4), np.uint8), np.zeros((16, 16, 3), np.float32), torch.zeros(16, 16, 3), [1],
                np.zeros((0, 4, 3), np.uint8), torch.zeros(3, 0, 5)):  # the last two: no pixels at all
        with pytest.raises(StylenetError, match="frame"):
            next(model.stylize_frames([bad]))
    with pytest.raises(StylenetError, match="H and W >= 1"):
        model.stylize(torch.zeros(3, 0, 5))
    # float images are [0, 1]: 0-255 values or NaN would come out flat grey or NaN without a word
    for bad, found in ((torch.full((3, 8, 8), 200.0), "200 to 200; 0-255 values"), (torch.full((3, 8, 8), float("nan")),
                                                                                  "nan to nan")):
        with pytest.raises(StylenetError, match=f"image tensor values must be in \\[0, 1\\], got {found}"):
            model.stylize(bad)
        with pytest.raises(StylenetError, match="frame tensor values must be in"):
            next(model.stylize_frames([bad]))
    with pytest.raises(StylenetError, match=r"a \(B, 3, H, W\) batch with B >= 1"):
        model.stylize(torch.rand(0, 3, 8, 8))


def test_load_model_streams_frames(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = save_model(tmp_path / "m.safetensors", TransformerNet(channels=8, residual_blocks=1),
                      {"task": "style", "style_name": "m"})
    model = stylenet.load_model(path, device="cpu")
    (out,) = model.stylize_frames(uint8_frames([(20, 28)]))
    assert out.shape == (20, 28, 3)


def test_a_precision_set_between_frames_applies_to_the_next_frame(tmp_path: Path) -> None:
    assert_precision_applies_to_the_next_frame(InferenceModel(trained_like(), device="cpu", precision="bf16"),
                                               make_photo(tmp_path / "p.png", (128, 96)))


def trained_like(channels: int = 8, residual_blocks: int = 3) -> TransformerNet:
    """A network whose norm layers have scales of both signs and shifts, as trained ones do."""
    torch.manual_seed(2)
    net = TransformerNet(channels=channels, residual_blocks=residual_blocks).eval()
    for norm in net.modules():
        if isinstance(norm, torch.nn.InstanceNorm2d):
            torch.nn.init.uniform_(norm.weight, -1.0, 2.0)
            torch.nn.init.normal_(norm.bias, 0.0, 0.5)
    return net


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_prepadded_frames_are_bit_for_bit_the_one_pass(precision: str) -> None:
    model = InferenceModel(trained_like(), device="cpu", precision=precision)
    run = prepadded_forward(model.net, precision, torch.device("cpu"), keep=True)
    assert run is not None
    generator = torch.Generator().manual_seed(3)
    # a multiple of 4, sides padded up to one (bottom and right, by reflection), the smallest side, and back
    for height, width in ((32, 44), (30, 41), (8, 8), (32, 44)):
        batch = torch.rand(1, 3, height, width, generator=generator)
        expected = forward(model.net, batch, precision)
        assert torch.equal(run(batch), expected)
        assert torch.equal(run(batch.flip(-1)), forward(model.net, batch.flip(-1), precision))  # nothing stale kept


def prepared(model: InferenceModel, height: int, width: int) -> PrepaddedNetwork:
    layers = network_layers(model.net)
    assert layers is not None
    layouts = input_layouts(model.net, layers, model.precision, torch.device("cpu"))
    assert layouts is not None
    return PrepaddedNetwork(layers, layouts, height, width, model.precision, torch.device("cpu"))


def test_prepadded_buffers_are_kept_and_shared() -> None:
    model = InferenceModel(trained_like(residual_blocks=3), device="cpu", precision="fp32")
    network = prepared(model, 16, 24)
    pointers = [step.buffer.data_ptr() for step in network.steps]
    network(torch.rand(1, 3, 16, 24))
    assert [step.buffer.data_ptr() for step in network.steps] == pointers  # kept across calls
    # 3 encoder layers, then 3 blocks of 2 layers whose inputs and middles take turns in two buffers, which
    # the first upsampling (same shape and padding) reads from too; the second upsampling reads the buffer
    # the third layer read; the first and last layers' buffers are their own: 6 buffers for 12 layers
    assert len(set(pointers[3:10])) == 2 and pointers[10] == pointers[2] and len(set(pointers)) == 6
    # the reflection border holds what F.pad gives, corners included
    first = network.steps[1]
    torch.testing.assert_close(first.buffer, F.pad(first.interior, (1, 1, 1, 1), mode="reflect"), rtol=0, atol=0)
    upsampling = network.steps[9]
    assert upsampling.replicate
    torch.testing.assert_close(upsampling.buffer, F.pad(upsampling.interior, (1, 1, 1, 1), mode="replicate"),
                               rtol=0, atol=0)
    with pytest.raises(StylenetError, match=r"prepared for \(1, 3, 16, 24\) batches, got \(1, 3, 16, 28\)"):
        network(torch.rand(1, 3, 16, 28))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_prepadded_frames_follow_the_layers_themselves(precision: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Big maps take InstanceNorm's exact statistics (fastpath.EXACT_STATISTICS_PIXELS, lowered here to
    reach it at a small size), and weights changed between frames are the next frame's."""
    monkeypatch.setattr(fastpath, "EXACT_STATISTICS_PIXELS", 100)
    model = InferenceModel(trained_like(), device="cpu", precision=precision)
    run = prepadded_forward(model.net, precision, torch.device("cpu"), keep=True)
    assert run is not None
    batch = torch.rand(1, 3, 32, 44, generator=torch.Generator().manual_seed(4))
    assert torch.equal(run(batch), forward(model.net, batch, precision))
    with torch.no_grad():
        for parameter in model.net.parameters():
            parameter.mul_(0.9)
    assert torch.equal(run(batch), forward(model.net, batch, precision))


def prepadded_bytes_per_pixel(net: torch.nn.Module, precision: str) -> float:
    """The pre-padded pass's probed activation bytes per input pixel (what InferenceModel budgets it by)."""
    run = prepadded_forward(net, precision, torch.device("cpu"), keep=False)
    return activation_bytes_per_pixel(net, torch.device("cpu"), precision, run=run)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_photo_takes_the_prepadded_pass_where_its_peak_fits(precision: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """One image in one pass runs through pre-padded buffers (the same image, bit for bit) when their
    measured peak fits the budget, and through the plain one pass when only that fits, or when the
    pre-padded pass runs out of memory."""
    image = torch.rand(3, 66, 70, generator=torch.Generator().manual_seed(6))
    model = InferenceModel(trained_like(), device="cpu", precision=precision)
    centred = image[None] - input_offset(model.net, image)
    expected = forward(model.net, centred, precision)[0].clamp(0, 1)  # the one pass, as transform runs it
    passes: list[tuple[int, int]] = []
    original = PrepaddedNetwork.__call__
    monkeypatch.setattr(PrepaddedNetwork, "__call__",
                        lambda self, batch: passes.append(self.size) or original(self, batch))
    assert torch.equal(model.transform(image), expected) and (68, 72) in passes  # padded to a multiple of 4
    model.transform(torch.rand(3, 40, 300))  # thinner than the memory probe, which would not bound its peak
    assert (40, 300) not in passes
    per_pixel = prepadded_bytes_per_pixel(model.net, precision)
    one_pass = model.bytes_per_pixel()
    assert per_pixel > one_pass  # every buffer allocated up front
    for max_memory, taken in ((int((per_pixel + one_pass) / 2 * 68 * 72), False),
                              (math.ceil(per_pixel * 68 * 72), True),  # the padded size is what must fit
                              (math.ceil(per_pixel * 68 * 72) - 1, False)):
        passes.clear()
        tight = InferenceModel(trained_like(), device="cpu", precision=precision, max_memory=max_memory)
        assert torch.equal(tight.transform(image), expected) and ((68, 72) in passes) == taken
    other = InferenceModel(trained_like(channels=4), device="cpu", precision=precision)
    model.net = other.net  # a network put in its place is probed anew, not run through the last one's layers
    assert torch.equal(model.transform(image), other.transform(image))

    def out_of_memory(self: PrepaddedNetwork, batch: torch.Tensor) -> torch.Tensor:
        if self.size == (68, 72):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return original(self, batch)
    monkeypatch.setattr(PrepaddedNetwork, "__call__", out_of_memory)
    assert torch.equal(InferenceModel(trained_like(), device="cpu", precision=precision).transform(image), expected)


def test_frames_take_the_prepadded_pass_only_where_its_peak_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream's pre-padded buffers hold about twice the one pass's peak: frames that only the one pass
    fits in the budget run through it, and come out the same."""
    frames = uint8_frames([(66, 70)] * 2)
    probe = InferenceModel(trained_like(), device="cpu", precision="bf16")
    budget = int((prepadded_bytes_per_pixel(probe.net, "bf16") + probe.bytes_per_pixel()) / 2 * 68 * 72)
    passes: list[tuple[int, int]] = []
    original = PrepaddedNetwork.__call__
    monkeypatch.setattr(PrepaddedNetwork, "__call__",
                        lambda self, batch: passes.append(self.size) or original(self, batch))
    for max_memory, prepadded in ((None, True), (budget, False)):
        model = InferenceModel(trained_like(), device="cpu", precision="bf16", max_memory=max_memory)
        passes.clear()
        outputs = list(model.stylize_frames(frames))
        assert ((68, 72) in passes) == prepadded
        passes.clear()
        assert all(np.array_equal(out, np.asarray(model.stylize(Image.fromarray(frame))))
                   for out, frame in zip(outputs, frames, strict=True))


def test_a_streams_buffers_go_before_a_frame_that_they_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept buffers of one frame size would sit beside the pass of a size that does not fit them."""
    per_pixel = prepadded_bytes_per_pixel(InferenceModel(trained_like(), device="cpu", precision="bf16").net, "bf16")
    model = InferenceModel(trained_like(), device="cpu", precision="bf16", max_memory=int(per_pixel * 64 * 64 * 1.2))
    made: list[weakref.ref[PrepaddedNetwork]] = []
    original = PrepaddedNetwork.__init__

    def record(self: PrepaddedNetwork, *args: object) -> None:
        original(self, *args)  # type: ignore[arg-type]
        made.append(weakref.ref(self))
    monkeypatch.setattr(PrepaddedNetwork, "__init__", record)
    stream = model.stylize_frames(uint8_frames([(64, 64), (64, 64), (96, 96)]))
    next(stream), next(stream)
    assert [ref().size for ref in made if ref() is not None] == [(64, 64)]  # kept across frames
    next(stream)  # a size whose buffers would not fit
    gc.collect()
    assert [ref() for ref in made if ref() is not None and ref().size == (64, 64)] == []


def test_a_stream_out_of_memory_in_its_buffers_goes_on_in_one_pass(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    model = InferenceModel(trained_like(), device="cpu", precision="bf16")
    frames = uint8_frames([(64, 64)] * 3)
    expected = [np.asarray(model.stylize(Image.fromarray(frame))) for frame in frames]
    original, failures = PrepaddedNetwork.__call__, [1]

    def out_of_memory_once(self: PrepaddedNetwork, batch: torch.Tensor) -> torch.Tensor:
        if self.size == (64, 64) and failures:
            failures.pop()
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return original(self, batch)
    monkeypatch.setattr(PrepaddedNetwork, "__call__", out_of_memory_once)
    with caplog.at_level(logging.WARNING, logger="stylenet.inference.model"):
        outputs = list(model.stylize_frames(frames))
    assert all(np.array_equal(out, want) for out, want in zip(outputs, expected, strict=True))
    assert "out of memory on cpu through pre-padded buffers; retrying in one pass" in caplog.text


def test_the_memory_probe_follows_the_precision_and_the_network() -> None:
    model = InferenceModel(trained_like(), device="cpu", precision="fp32")
    fp32 = model.bytes_per_pixel()
    model.precision = "bf16"
    assert model.bytes_per_pixel() < 0.75 * fp32  # half the bytes per activation
    model.net = InferenceModel(trained_like(channels=4), device="cpu", precision="bf16").net
    assert model.bytes_per_pixel() < 0.75 * 0.75 * fp32  # half the channels


def test_photos_from_several_threads_at_once_are_each_their_own() -> None:
    """The web page's workers share one model: each photo's pre-padded buffers are its own."""
    model = InferenceModel(trained_like(), device="cpu", precision="bf16")
    generator = torch.Generator().manual_seed(7)
    images = [torch.rand(3, 96, 128, generator=generator) for _ in range(16)]  # one size: the same buffers if kept
    expected = [model.transform(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(model.transform, images))
    assert all(torch.equal(out, want) for out, want in zip(outputs, expected, strict=True))


def test_prepadded_applies_only_where_it_was_measured() -> None:
    model = InferenceModel(trained_like(), device="cpu", precision="fp32")
    assert prepadded_forward(model.net, "fp16", torch.device("cpu"), keep=True) is None
    assert prepadded_forward(SuperResolutionNet(factor=4), "fp32", torch.device("cpu"), keep=True) is None
    batch_norm = InferenceModel(TransformerNet(channels=8, residual_blocks=1, norm="batch").eval(), device="cpu")
    assert prepadded_forward(batch_norm.net, "fp32", torch.device("cpu"), keep=True) is None
    # not rewritten by optimize_for_inference: its upsampling runs as nn.Upsample + ReflectConv in the one pass
    assert prepadded_forward(trained_like(), "fp32", torch.device("cpu"), keep=True) is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_images_are_centred_in_float32_as_frames_are(dtype: torch.dtype) -> None:
    """The network takes an image less its mean once it is float32 (geometry.input_offset): a photo
    held in half precision, as stylenet-stylize holds 8-bit ones, gives what its frame gives."""
    model = InferenceModel(trained_like(), device="cpu", precision="fp32")
    bright = (torch.rand(3, 32, 44, generator=torch.Generator().manual_seed(5)) * 0.1 + 0.88).to(dtype)
    (frame,) = model.stylize_frames([bright])
    assert torch.equal(frame, model.stylize(bright))
