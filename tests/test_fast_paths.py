"""The fast paths are correct: bf16/channels_last losses match fp32 NCHW within bf16 tolerance, the
truncated content pass returns the full pass's features, compiled models keep their state-dict
keys, the default precision follows the hardware, and bf16 inference stays >= 40 dB from fp32."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

from stylenet import fastpath
from stylenet.losses import PerceptualLoss
from stylenet.modelfile import read_model, save_model
from stylenet.nets import SuperResolutionNet, TransformerNet
from stylenet.tasks import StyleTransferTask
from tests.helpers import output_and_gradients

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def loss_terms(channels_last: bool, bf16: bool, images: torch.Tensor) -> dict[str, float]:
    torch.manual_seed(0)
    net, loss = TransformerNet(channels=8, residual_blocks=2), PerceptualLoss(weights="random")
    loss.set_style([torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(1))])
    fastpath.prepare_for_training(net, loss, channels_last=channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        terms = loss(net(images), images)
    terms["total"].backward()
    grad = torch.cat([p.grad.flatten() for p in net.parameters()])
    return {**{name: float(value.detach()) for name, value in terms.items()}, "grad": grad}


@pytest.mark.parametrize(("channels_last", "bf16"), [(True, False), (False, True), (True, True)])
def test_fast_configurations_give_the_fp32_loss_and_gradient(channels_last: bool, bf16: bool) -> None:
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    reference = loss_terms(False, False, images)
    fast = loss_terms(channels_last, bf16, images)
    tolerance = 3e-2 if bf16 else 1e-4
    for name in ("content", "style", "tv", "total", "style/relu4_3"):
        assert fast[name] == pytest.approx(reference[name], rel=tolerance), name
    cosine = torch.nn.functional.cosine_similarity(fast["grad"], reference["grad"], dim=0)
    assert cosine > (0.99 if bf16 else 0.9999)


def test_truncated_content_pass_returns_the_full_features_for_less_work() -> None:
    loss = PerceptualLoss(weights="random")
    images = torch.rand(2, 3, 64, 64)
    with FlopCounterMode(display=False) as truncated:
        content = loss.content_targets(images)
    with FlopCounterMode(display=False) as full, torch.no_grad():
        everything = loss.vgg(images, [*loss.content_layers, *loss.style_layers])
    assert set(content) == {"relu2_2"}
    assert torch.equal(content["relu2_2"], everything["relu2_2"])
    assert truncated.get_total_flops() < 0.4 * full.get_total_flops()


def test_compiled_model_keeps_its_keys_for_checkpoints_and_export(tmp_path: Path, style_image: Path) -> None:
    def task(compile: bool) -> StyleTransferTask:
        return StyleTransferTask(model={"channels": 8, "residual_blocks": 1}, loss={"weights": "random"},
                                 style={"name": "t", "image": str(style_image), "size": 32}, compile=compile)

    plain, compiled = task(False), task(True)
    fastpath.prepare_for_training(compiled.net, compiled.loss, channels_last=True, compile=True)
    assert compiled.hparams["compile"] is True
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    plain.load_state_dict(compiled.state_dict())  # a compiled run's checkpoint loads into a plain one
    path = save_model(tmp_path / "compiled.safetensors", compiled.net, {"task": "style"})
    reloaded = read_model(path).net
    assert list(reloaded.state_dict()) == list(plain.net.state_dict())
    for key, value in compiled.net.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value)


def test_default_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert fastpath.training_precision("cpu") == "bf16-mixed" and fastpath.inference_precision("cpu") == "bf16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    assert fastpath.training_precision("cpu") == "32-true" and fastpath.inference_precision("cpu") == "fp32"
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        assert instantiate(compose("train").trainer.precision) == "32-true"
        assert compose("train", overrides=["trainer.precision=bf16-mixed"]).trainer.precision == "bf16-mixed"


def test_training_loop_syncs_once_per_step_plus_logging(tmp_path: Path, style_image: Path,
                                                        photo_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a tensor's value on the host (item, bool, float, tolist) is a device sync on a GPU.
    Per step the loop does one (the non-finite-loss guard); the logged terms are read only every
    ``log_every_n_steps`` (a per-step read of each term would be 8 per step). Adam's step counter
    and the data sampler read CPU tensors: not counted."""
    import traceback

    import pytorch_lightning as pl

    from stylenet.data import ImageFolderDataModule

    reads: list[str] = []
    counting = [False]

    def counted(name: str) -> None:
        original = getattr(torch.Tensor, name)

        def read(self: torch.Tensor, *args: object, **kwargs: object) -> object:
            caller = traceback.extract_stack(limit=2)[0].filename
            if counting[0] and "torch/optim" not in caller and not caller.endswith("stylenet/data.py"):
                reads.append(name)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)

    for name in ("item", "__bool__", "__float__", "tolist"):
        counted(name)

    class Count(pl.Callback):
        def on_train_batch_start(self, *args: object) -> None:
            counting[0] = True

        def on_train_end(self, *args: object) -> None:
            counting[0] = False

    steps, every = 12, 4
    task = StyleTransferTask(model={"channels": 8, "residual_blocks": 1}, loss={"weights": "random"},
                             style={"name": "t", "image": str(style_image), "size": 32}, image_size=32)
    data = ImageFolderDataModule(source="folder", root=str(photo_folder), image_size=32, batch_size=2, val_images=1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, max_epochs=-1, log_every_n_steps=every,
                         limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, use_distributed_sampler=False,
                         logger=pl.loggers.CSVLogger(tmp_path), callbacks=[Count()])
    trainer.fit(task, datamodule=data)
    terms = 4 + len(task.loss.style_layers)  # total, content, style, tv and one per style layer
    # Lightning converts each logged term (and its own bookkeeping) about twice per logging interval.
    assert steps <= len(reads) <= steps + (steps // every) * 2 * terms, reads


@pytest.mark.parametrize("make_net", [lambda: TransformerNet(channels=8, residual_blocks=1),
                                      lambda: SuperResolutionNet(factor=4, channels=8, residual_blocks=1)])
def test_fused_upsampling_computes_the_same_image(make_net: object) -> None:
    torch.manual_seed(0)
    net = make_net().eval()
    fused = fastpath.optimize_for_inference(net)
    assert any(isinstance(m, fastpath.SubpixelConv) for m in fused.modules())
    norms = [name for name, m in net.named_modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms == [name for name, m in fused.named_modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert not any(isinstance(m, fastpath.SubpixelConv) for m in net.modules())  # the original is untouched
    images = torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        assert torch.allclose(fused(images), net(images), atol=1e-5)


def test_bf16_inference_stays_within_40_db_of_fp32() -> None:
    """On a photo (scikit-image's cat, 451x300), through the inference fast path, with the paper's network.
    40 dB is an RMS error of 0.01, about 2.5 grey levels of the 8-bit output: below what eyes see, and far
    above what bf16's 8-bit mantissa loses (~0.4 % per layer) unless a layer is computed wrongly."""
    import math

    from stylenet.image import load_rgb, resolve_image_path
    from stylenet.inference import InferenceModel

    torch.manual_seed(0)
    net = TransformerNet()
    photo = load_rgb(resolve_image_path("demo:chelsea"))
    fp32 = InferenceModel(net, device="cpu", precision="fp32").transform(photo)
    bf16 = InferenceModel(net, device="cpu", precision="bf16").transform(photo)
    assert fp32.std() > 0.1  # a varied image, not a flat one that any precision gets right
    psnr = 10 * math.log10(1.0 / float((bf16 - fp32).pow(2).mean()))
    assert psnr >= 40.0, psnr


def test_rewritten_layers_train_the_original_weights(tmp_path: Path) -> None:
    """rewrite_layers in place: same output, same gradients on the same parameters, same keys;
    a second call changes nothing (configure_model may run more than once)."""
    torch.manual_seed(0)
    plain = TransformerNet(channels=16, residual_blocks=1)  # 16 wide: only the 3-output last layer is narrow
    rewritten = TransformerNet(channels=16, residual_blocks=1)
    rewritten.load_state_dict(plain.state_dict())
    parameters = list(rewritten.parameters())
    assert fastpath.rewrite_layers(rewritten, "cpu")
    kinds = [type(m) for m in rewritten.modules()]
    assert kinds.count(fastpath.SubpixelConv) == 2 and kinds.count(fastpath.DepthToSpaceConv) == 1
    assert not fastpath.rewrite_layers(rewritten, "cpu") and [type(m) for m in rewritten.modules()] == kinds
    assert list(rewritten.parameters()) == parameters and list(rewritten.state_dict()) == list(plain.state_dict())
    images = torch.rand(2, 3, 20, 28)
    plain_out, rewritten_out = plain(images), rewritten(images)
    torch.testing.assert_close(rewritten_out, plain_out, atol=1e-5, rtol=1e-4)
    weights = torch.rand_like(plain_out)
    (plain_out * weights).sum().backward()
    (rewritten_out * weights).sum().backward()
    # Whole-vector tolerance: the conv biases before InstanceNorm have a zero gradient in exact
    # arithmetic (the norm removes the mean), so theirs are rounding noise on either side.
    expected = torch.cat([p.grad.flatten() for p in plain.parameters()])
    actual = torch.cat([p.grad.flatten() for p in rewritten.parameters()])
    torch.testing.assert_close(actual, expected, atol=1e-6 * float(expected.abs().max()), rtol=1e-4)


def test_training_layouts_per_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The VGG always runs channels_last; the transformation network too on GPUs and on CPUs with
    native bf16, NCHW on other CPUs; forcing works."""
    assert fastpath.use_channels_last("cuda") == (True, True)
    for native in (True, False):
        monkeypatch.setattr(fastpath, "bf16_is_native", lambda device, native=native: native)
        assert fastpath.use_channels_last("cpu") == (native, True)
    net, loss = TransformerNet(channels=8, residual_blocks=1), PerceptualLoss(weights="random")
    fastpath.prepare_for_training(net, loss, "cpu", system_malloc=True)
    features = loss.vgg(torch.rand(1, 3, 32, 32), ["relu2_2"])["relu2_2"]
    assert features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous()
    assert net(torch.rand(1, 3, 32, 32)).is_contiguous()
    forced, forced_loss = TransformerNet(channels=8, residual_blocks=1), PerceptualLoss(weights="random")
    fastpath.prepare_for_training(forced, forced_loss, "cpu", channels_last=False, system_malloc=True)
    assert forced_loss.vgg(torch.rand(1, 3, 32, 32), ["relu2_2"])["relu2_2"].is_contiguous()


def test_bf16_gram_gradient_follows_the_fp32_one() -> None:
    """The Gram's backward runs in the features' precision: in bf16 it points where fp32's does."""
    from stylenet.losses import gram_matrix

    features = torch.randn(2, 16, 12, 12).to(memory_format=torch.channels_last)
    target = gram_matrix(torch.randn(1, 16, 12, 12))
    grads = []
    for dtype in (torch.float32, torch.bfloat16):
        leaf = features.to(dtype, copy=True).requires_grad_()
        (gram_matrix(leaf) - target).pow(2).sum().backward()
        assert leaf.grad.dtype == dtype and leaf.grad.is_contiguous(memory_format=torch.channels_last)
        grads.append(leaf.grad.float().flatten())
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.999


def test_content_loss_keeps_the_channels_last_layout() -> None:
    """Same value as on NCHW maps; the gradient stays channels_last (a mixed-layout gradient made
    every later elementwise kernel of the backward pass slow)."""
    from stylenet.losses import feature_reconstruction_loss

    a, b = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 5, 6)
    nhwc = a.to(memory_format=torch.channels_last).requires_grad_()
    loss = feature_reconstruction_loss(nhwc, b.to(memory_format=torch.channels_last))
    torch.testing.assert_close(loss, ((a - b) ** 2).mean())
    loss.backward()
    assert nhwc.grad.is_contiguous(memory_format=torch.channels_last) and not nhwc.grad.is_contiguous()
    torch.testing.assert_close(nhwc.grad, 2 * (a - b) / a.numel())


def test_reuse_freed_memory_applies_with_glibc() -> None:
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert fastpath.reuse_freed_memory() is expected


ARENAS_SCRIPT = """
import ctypes, sys, tempfile, threading
import torch
from stylenet import fastpath
if sys.argv[1] == "one":
    assert fastpath.share_one_heap()
held, ready = [], threading.Barrier(4)
def work():
    held.append(torch.ones(1000))  # a malloc of this thread's own
    ready.wait()  # all four threads alive at once
threads = [threading.Thread(target=work) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile(suffix=".xml") as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    print(open(report.name).read().count("<heap nr="))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc arenas")
def test_share_one_heap_keeps_new_threads_on_the_main_heap() -> None:
    """glibc's malloc_info lists one heap per arena: threads get their own, unless share_one_heap ran."""
    def heaps(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", ARENAS_SCRIPT, mode], capture_output=True, text=True,
                              timeout=120, check=True)
        return int(done.stdout.split()[-1])

    assert heaps("one") == 1
    assert heaps("default") > 1


def affine_instance_norm(channels: int) -> torch.nn.InstanceNorm2d:
    """An affine InstanceNorm2d with scales in [0.5, 2] and shifts in [-1, 1] (not the identity's)."""
    torch.manual_seed(0)
    norm = torch.nn.InstanceNorm2d(channels, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    return norm


def test_per_image_instance_norm_is_instance_norm_in_either_layout() -> None:
    """Batch norm over a batch of one image is instance norm (checked against the formula), keeps
    the input's layout (no NCHW copy), and shares the original layer's parameters."""
    norm = affine_instance_norm(6)
    single = fastpath.PerImageInstanceNorm.like(norm)
    assert single.weight is norm.weight and single.bias is norm.bias
    x = torch.randn(1, 6, 9, 7) * 3 + 2
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, unbiased=False)
    expected = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    for layout in (torch.contiguous_format, torch.channels_last):
        out = single(x.to(memory_format=layout))
        torch.testing.assert_close(out, expected)
        assert out.is_contiguous(memory_format=layout)
    batch = torch.randn(2, 6, 9, 7)  # several images: each its own statistics, as InstanceNorm2d
    torch.testing.assert_close(single(batch), norm(batch))


def test_per_image_instance_norm_trains_a_channels_last_batch_like_instance_norm() -> None:
    """A channels_last batch of three images: the output, the input's gradient and the parameters'
    gradients equal nn.InstanceNorm2d's (the formula's, through autograd), and the output and the
    input's gradient stay channels_last (no NCHW copy in either direction)."""
    norm = affine_instance_norm(6)
    per_image = fastpath.PerImageInstanceNorm.like(norm)
    x = torch.randn(3, 6, 9, 7) * torch.linspace(0.5, 3.0, 3).view(3, 1, 1, 1) + 2
    upstream, parameters = torch.randn(3, 6, 9, 7), [norm.weight, norm.bias]
    expected = output_and_gradients(norm, x, upstream, torch.contiguous_format, parameters)
    actual = output_and_gradients(per_image, x, upstream, torch.channels_last, parameters)
    for mine, reference in zip(actual, expected, strict=True):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5)


def test_per_image_instance_norm_differentiates_maps_beyond_the_exact_statistics_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunked statistics of big maps carry no gradient, so a map that needs one takes the
    kernel's own: with the size limit lowered to 10 pixels, a 5x5 map's gradients are InstanceNorm2d's."""
    monkeypatch.setattr(fastpath, "EXACT_STATISTICS_PIXELS", 10)
    norm = affine_instance_norm(3)
    x, upstream = torch.randn(1, 3, 5, 5), torch.randn(1, 3, 5, 5)
    expected = output_and_gradients(norm, x, upstream, torch.contiguous_format, [])
    actual = output_and_gradients(fastpath.PerImageInstanceNorm.like(norm), x, upstream, torch.contiguous_format, [])
    for mine, reference in zip(actual, expected, strict=True):
        torch.testing.assert_close(mine, reference)
    assert expected[1].abs().max() > 0.1  # the input's gradient


def test_training_preparation_keeps_keys_and_parameters_of_per_image_norms() -> None:
    """A channels_last network gets PerImageInstanceNorm layers holding the very parameters the
    optimiser was given, under the same keys; an NCHW one keeps nn.InstanceNorm2d; a second
    preparation changes nothing."""
    net, loss = TransformerNet(channels=8, residual_blocks=1), PerceptualLoss(weights="random")
    keys, parameters = list(net.state_dict()), list(net.parameters())
    fastpath.prepare_for_training(net, loss, "cpu", channels_last=True, system_malloc=True)
    norms = [type(m) for m in net.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == 7 and set(norms) == {fastpath.PerImageInstanceNorm}
    fastpath.prepare_for_training(net, loss, "cpu", channels_last=True, system_malloc=True)
    assert list(net.state_dict()) == keys and list(net.parameters()) == parameters
    assert [type(m) for m in net.modules() if isinstance(m, torch.nn.InstanceNorm2d)] == norms
    nchw = TransformerNet(channels=8, residual_blocks=1)
    fastpath.prepare_for_training(nchw, PerceptualLoss(weights="random"), "cpu", channels_last=False,
                                  system_malloc=True)
    assert {type(m) for m in nchw.modules() if isinstance(m, torch.nn.InstanceNorm2d)} == {torch.nn.InstanceNorm2d}


def test_per_image_instance_norm_is_exact_on_a_multi_megapixel_map() -> None:
    """A 2 MP channels_last map whose channels' means are 100x their spread (a smooth photo's first
    layers): the normalised values match the float64 formula, where the CPU kernel's own float32
    statistics put them off by 0.09 on average (0.4 at most). In bf16 too (exact statistics of the
    bf16 values; only the output is rounded)."""
    torch.manual_seed(0)
    norm = torch.nn.InstanceNorm2d(8, affine=False)
    single = fastpath.PerImageInstanceNorm.like(norm)
    means = torch.linspace(0.5, 5.0, 8).view(1, 8, 1, 1)
    x = (torch.randn(1, 8, 2048, 1024) * 0.05 + means).to(memory_format=torch.channels_last)
    for dtype, tolerance in ((torch.float32, 1e-3), (torch.bfloat16, 0.02)):
        xd = x.to(dtype).double()
        var, mean = torch.var_mean(xd, dim=(2, 3), keepdim=True, unbiased=False)
        expected = (xd - mean) / torch.sqrt(var + norm.eps)
        error = (single(x.to(dtype)).double() - expected).abs()
        assert error.mean() < tolerance and error.max() < 10 * tolerance, (dtype, error.mean(), error.max())
    for values in (x, x.bfloat16()):  # bf16 as it is: summed in float32 by the kernel's mixed-precision path
        count, mean, squares = fastpath.channel_moments(values)
        var, reference = torch.var_mean(values.double(), dim=(0, 2, 3), unbiased=False)
        assert count == 2048 * 1024
        torch.testing.assert_close(mean, reference, rtol=0, atol=5e-4)  # 1% of the spread (0.05)
        torch.testing.assert_close(squares / count, var, rtol=1e-3, atol=0)


def test_inference_copy_is_channels_last_and_leaves_the_original_alone() -> None:
    torch.manual_seed(0)
    net = TransformerNet(channels=8, residual_blocks=1).eval()
    keys = list(net.state_dict())
    fast = fastpath.optimize_for_inference(net, "cpu")
    norms = [m for m in fast.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms and all(isinstance(m, fastpath.PerImageInstanceNorm) for m in norms)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fast.parameters() if p.dim() == 4)
    assert all(p.is_contiguous() for p in net.parameters()) and list(net.state_dict()) == keys
    assert not any(isinstance(m, fastpath.PerImageInstanceNorm) for m in net.modules())
    image = torch.rand(1, 3, 24, 36)
    with torch.no_grad():
        torch.testing.assert_close(fast(image), net(image), atol=1e-5, rtol=1e-4)


def test_subpixel_upsampling_compiles_forward_and_backward() -> None:
    """torch.compile of the rewritten upsampling, gradients included, gives eager's numbers (the
    replicate padding takes a compile-only path: see fastpath.replicate_pad)."""
    torch.manual_seed(0)
    block = fastpath.SubpixelConv(torch.nn.Conv2d(4, 3, 3))
    x = torch.randn(2, 4, 6, 5, requires_grad=True)
    padded = fastpath.replicate_pad(x)
    torch.testing.assert_close(padded, torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"))
    eager_out = block(x)
    eager_out.square().sum().backward()
    eager_grads = [x.grad.clone(), block.conv.weight.grad.clone()]
    x.grad, block.conv.weight.grad = None, None
    compiled_out = torch.compile(block)(x)
    compiled_out.square().sum().backward()
    torch.testing.assert_close(compiled_out, eager_out)
    torch.testing.assert_close([x.grad, block.conv.weight.grad], eager_grads)


def test_depth_to_space_conv_equals_the_convolution_at_every_valid_factor() -> None:
    """Factors 2 and 4 compute the reflection-padded 9x9 convolution on sizes that are not multiples
    of either; a factor that does not divide the padding's 8 rows is refused (it would lose a row)."""
    from stylenet.nets.transformer import ReflectConv

    torch.manual_seed(0)
    layer = ReflectConv(6, 3, 9)
    x = torch.randn(2, 6, 13, 22)
    with torch.no_grad():
        expected = layer(x)
        for factor in (2, 4):
            torch.testing.assert_close(fastpath.DepthToSpaceConv(layer[1], factor)(x), expected,
                                       atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="factor 3"):
        fastpath.DepthToSpaceConv(layer[1], 3)


def test_bf16_is_asked_of_the_named_gpu_and_a_missing_gpu_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine of two GPUs where only the second has native bf16, ``cuda:1`` is asked, not the
    current device; ``cuda:2`` is one line naming the devices there are."""
    from stylenet.devices import resolve_device
    from stylenet.errors import StylenetError

    current = [0]

    class Selected:
        def __init__(self, device: torch.device) -> None:
            self.index = torch.device(device).index

        def __enter__(self) -> None:
            current.insert(0, self.index)

        def __exit__(self, *exc: object) -> None:
            current.pop(0)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device", Selected)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: current[0] == 1)
    assert [fastpath.bf16_is_native(name) for name in ("cuda:0", "cuda:1")] == [False, True]
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(StylenetError, match=r"^device 'cuda:2' is not available: this machine has 2 CUDA device\(s\), "
                                            r"cuda:0 to cuda:1$"):
        resolve_device("cuda:2")
