"""Fast paths shared by training, inference and the benchmark: where bf16 runs in hardware, which
memory layout wins, and how to switch both on without changing what a model computes or saves.

Kept free of Lightning and Hydra so ``stylenet-stylize`` and ``stylenet-bench`` can use it. The
numbers behind each default come from ``stylenet-bench`` (README, "Speed"); the correctness checks
behind them (loss within bf16 tolerance of fp32, state-dict keys unchanged) are in
tests/test_fast_paths.py.
"""

from __future__ import annotations

import copy
import ctypes
import itertools
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stylenet.nets.transformer import ReflectConv, UpsampleConvNormReLU, is_channels_last

__all__ = ["DepthToSpaceConv", "PerImageInstanceNorm", "SubpixelConv", "bf16_is_native", "inference_precision",
           "is_channels_last", "optimize_for_inference", "prepare_for_training", "reuse_freed_memory", "rewrite_layers",
           "training_precision", "use_channels_last"]

#: convolutions with fewer output channels than this leave a CPU's vector units idle.
FEW_CHANNELS = 16


def bf16_is_native(device: torch.device | str) -> bool:
    """True where bf16 matrix maths runs in hardware: CUDA GPUs with native bf16 (Ampere and
    later), CPUs with AVX512-BF16 or AMX-BF16.

    Elsewhere autocast to bf16 still works but is emulated, which is slower than fp32 (on AVX2-only
    CPUs by a large factor), so fp32 stays the default there."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        with torch.cuda.device(device):  # is_bf16_supported asks the current device: this one's index
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        capabilities = getattr(torch.cpu, "get_capabilities", dict)()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False  # MPS: bf16 autocast exists on recent macOS, but it was never measured here


def training_precision(device: str = "cpu") -> str:
    """Lightning's ``precision`` for training on ``device``: ``bf16-mixed`` where bf16 is native,
    else ``32-true``. The trainer configs call this through ``_target_``; Grams and losses stay
    fp32 under autocast (:mod:`stylenet.losses`)."""
    return "bf16-mixed" if bf16_is_native(device) else "32-true"


def inference_precision(device: torch.device | str) -> str:
    """Default ``--precision`` of inference on ``device``: ``bf16`` where it is native, else ``fp32``."""
    return "bf16" if bf16_is_native(device) else "fp32"


def use_channels_last(device: torch.device | str) -> tuple[bool, bool]:
    """Whether training runs (the transformation network, the VGG) channels_last (NHWC) on ``device``.

    The VGG is only convolutions, ReLUs and max-pooling, which all run faster NHWC with oneDNN and
    cuDNN, in fp32 and bf16 alike, so it always is. The transformation network is NHWC on GPUs
    (what tensor-core convolutions want) and on CPUs with native bf16, where oneDNN's bf16
    convolutions (AMX, AVX512-BF16) want NHWC; on other CPUs it stays NCHW, where PyTorch's eager
    reflection padding and InstanceNorm are NCHW kernels whose layout copies cost more than the fp32
    convolutions gain. ``stylenet-bench`` times both networks channels_last and both NCHW against
    this choice (README, "Speed")."""
    device = torch.device(device)
    return device.type == "cuda" or bf16_is_native(device), True


#: glibc ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8


def glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``; None off Linux or with another C library (musl, ...)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep memory that is freed for the next allocation of the same process.

    PyTorch's CPU tensors come from plain malloc, and glibc serves every block above its mmap
    threshold (32 MiB at most: most activations of a training step) with a fresh ``mmap`` that it
    unmaps on ``free``. Every step then page-faults and zeroes its gigabytes of activations anew, a
    large share of a CPU training step or inference pass (``stylenet-bench`` measures it:
    ``train_fast_system_malloc_s``). With mmap and trimming switched off the blocks come back from
    the heap. The price: the process keeps its peak heap until it exits (peak RSS 10-25% higher).

    Process-wide, so the library never calls it on its own (not on import, not from
    :func:`stylenet.load_model` or :class:`~stylenet.inference.InferenceModel`): that is the
    application's decision. ``stylenet-stylize``, ``stylenet-upscale``, ``stylenet-evaluate-sr``,
    ``stylenet-bench`` and the trainer (:func:`prepare_for_training`) switch it on for CPU runs; a
    notebook or server may call it too. Linux with glibc only; returns whether it applied."""
    mallopt = glibc_mallopt()
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 << 20))
    return mallopt is not None and all(mallopt(parameter, value) == 1 for parameter, value in settings)


def share_one_heap() -> bool:
    """Make every thread that starts from now on allocate from glibc's main heap (one arena).

    glibc gives new threads heaps of their own (up to 8 per core), and each heap keeps what is freed
    in it for its next allocation. A server that runs each request and job on a thread of its own
    then holds the peak of every one of those heaps at once, far beyond a memory limit planned for
    the whole process (``stylenet-serve --memory-limit``). One heap costs threads some waiting on
    its lock, which is small beside a network's forward pass. Linux with glibc only; returns whether
    it applied."""
    mallopt = glibc_mallopt()
    return mallopt is not None and mallopt(M_ARENA_MAX, 1) == 1


def prepare_for_training(net: nn.Module, loss: nn.Module, device: torch.device | str = "cpu", *,
                         channels_last: bool | None = None, per_image_norms: bool = True,
                         compile: bool = False, system_malloc: bool = False) -> None:
    """Apply the training fast paths to ``net`` and the loss network in place, for ``device``.

    * :func:`rewrite_layers`: the upsampling and the last convolution as exact equivalents with
      fewer multiply-adds or wider vectors (parameters and keys unchanged);
    * memory layout, ``channels_last``: None picks per network (:func:`use_channels_last`),
      True or False forces both. Parameters and buffers are converted; the activations follow;
      exported files are written contiguous;
    * a channels_last transformation network's InstanceNorm layers as
      :class:`PerImageInstanceNorm` (``per_image_norms=False``: not), the same parameters and keys;
    * on CPUs, :func:`reuse_freed_memory` (``system_malloc=True`` leaves malloc alone);
    * ``compile``: ``nn.Module.compile`` rather than ``torch.compile(module)``, so ``state_dict()``
      keys get no ``_orig_mod.`` prefix and checkpoints stay interchangeable with uncompiled runs;
      compilation itself happens on the first step (``stylenet-bench --compile`` times it)."""
    device = torch.device(device)
    vgg = getattr(loss, "vgg", None)
    rewrite_layers(net, device)
    if device.type == "cpu" and not system_malloc:
        reuse_freed_memory()
    layouts = use_channels_last(device) if channels_last is None else (channels_last, channels_last)
    for module, to_channels_last in zip((net, vgg), layouts, strict=True):
        if module is None:
            continue
        if to_channels_last:
            module.to(memory_format=torch.channels_last)
        if to_channels_last and per_image_norms and module is net:
            per_image_instance_norms(net)
        if compile:
            module.compile()


class RewrittenConv(nn.Module):
    """Base of the exact layer rewrites below: it holds the original ``nn.Conv2d`` as its child
    ``"1"``, the name that convolution has inside the :class:`ReflectConv` being replaced, so
    state-dict keys, the parameters themselves and the optimiser's view of them stay unchanged.
    The rewritten kernel is derived from ``conv.weight`` on every call, differentiably (a few
    thousand numbers, microseconds), so the rewrite serves training as well as inference."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.add_module("1", conv)

    @property
    def conv(self) -> nn.Conv2d:
        return self._modules["1"]


def replicate_pad(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H + 2, W + 2), edge pixels repeated once on every side.

    Under ``torch.compile`` as two concatenations: torch 2.14's meta kernel of
    ``replication_pad2d_backward`` predicts NCHW strides where the CPU kernel returns the
    channels_last gradient oneDNN's convolution hands it, and the compiled step fails on that."""
    if not torch.compiler.is_compiling():
        return F.pad(x, (1, 1, 1, 1), mode="replicate")
    x = torch.cat((x[..., :1, :], x, x[..., -1:, :]), dim=-2)
    return torch.cat((x[..., :1], x, x[..., -1:]), dim=-1)


class SubpixelConv(RewrittenConv):
    """Nearest x2 upsampling then a reflection-padded 3x3 convolution (the ``uN`` block's first two
    steps) as one stride-2 transposed convolution at the input's resolution: the same image up to
    rounding, with 16 instead of 36 multiply-adds per input pixel and channel pair, and no upsampled copy.

    Nearest x2 upsampling is a stride-2 transposed convolution with a 2x2 kernel of ones, so the
    two steps compose into one stride-2 transposed convolution whose 4x4 kernel is the 3x3 kernel
    convolved with that box: along each axis, taps ``(w2, w1 + w2, w0 + w1, w0)`` (transposed
    convolution correlates with the flipped kernel). The reflection padding of the upsampled image
    equals the upsampling of the input padded by edge replication, so the input is padded by one
    pixel and the transposed convolution crops three (its ``padding``). oneDNN and cuDNN write the
    four output phases interleaved in place, where four small convolutions would need a scatter.
    """

    #: (4, 3) map of a 3-tap kernel to the composed 4-tap one, per axis (see the class docstring).
    COMPOSE = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))

    @classmethod
    def kernel(cls, weight: torch.Tensor) -> torch.Tensor:
        """(O, I, 3, 3) convolution kernel -> (I, O, 4, 4), the transposed convolution's."""
        compose = torch.tensor(cls.COMPOSE, dtype=weight.dtype, device=weight.device)
        return torch.einsum("kh,oihw,lw->iokl", compose, weight, compose)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # padding is exact: keep the input's dtype
            x = replicate_pad(x)
        return self.convolve(x)

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        """(B, I, h + 2, w + 2), already padded by one pixel on every side -> (B, O, 2 h, 2 w). The
        padding is edge replication at the image's borders; a band of a larger image
        (:mod:`stylenet.inference.layerwise`) brings its neighbours' rows instead."""
        return F.conv_transpose2d(x, self.kernel(self.conv.weight), self.conv.bias, stride=2, padding=3)


class DepthToSpaceConv(RewrittenConv):
    """A reflection-padded KxK, stride-1 convolution with few output channels (the last 9x9 layer,
    3 outputs), computed as a stride-``factor`` convolution with ``factor**2`` times the outputs,
    interleaved back into pixels (depth to space, ``pixel_shuffle``): the same result up to rounding.

    Vector units are 16 or 32 channels wide, so a convolution with 3 outputs leaves most of them
    idle. Output pixel ``(f i + a, f j + b)`` reads the padded input at ``(f i + a + ky, f j + b + kx)``:
    the stride-``f`` convolution whose kernel is the original shifted by ``(a, b)`` inside a
    (K + f - 1)-square of zeros. Stacking the ``f**2`` phases' kernels gives full vectors for
    ~1.2x the multiply-adds at factor 2, and reads the input in place (no space-to-depth copy).
    """

    def __init__(self, conv: nn.Conv2d, factor: int = 2) -> None:
        super().__init__(conv)
        self.factor, self.pad = factor, conv.kernel_size[0] // 2
        if factor < 2 or (2 * self.pad) % factor:
            # padding the sides up to a multiple of f then yields a whole output row per f input rows
            # only where f divides the 2 * pad rows the padding adds (f = 3 on a 9x9 kernel loses a row)
            raise ValueError(f"DepthToSpaceConv factor {factor} must be >= 2 and divide {2 * self.pad}")

    def kernel(self) -> torch.Tensor:
        """(O, I, K, K) -> (O f^2, I, K + f - 1, K + f - 1), output phases in pixel_shuffle's order."""
        weight, f = self.conv.weight, self.factor
        phases = [F.pad(weight, (b, f - 1 - b, a, f - 1 - a)) for a, b in itertools.product(range(f), repeat=2)]
        return torch.stack(phases, dim=1).flatten(0, 1)  # (O, f^2, I, K', K') -> (O f^2, I, K', K')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        extra_h, extra_w = (-(height + 2 * self.pad)) % self.factor, (-(width + 2 * self.pad)) % self.factor
        pad = self.pad
        with torch.autocast(x.device.type, enabled=False):  # padding is exact: keep the input's dtype
            if pad + max(extra_h, extra_w) < min(height, width):  # one copy
                x = F.pad(x, (pad, pad + extra_w, pad, pad + extra_h), mode="reflect")
            else:  # too small to reflect that far: the extra rows are read only by outputs cropped below
                x = F.pad(F.pad(x, (pad, pad, pad, pad), mode="reflect"), (0, extra_w, 0, extra_h))
        return self.convolve(x)[..., :height, :width]

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of an input already padded by K // 2 on every side, whose padded sides
        divide by ``factor`` (output rows and columns beyond the unpadded size are to be cropped:
        they read only the extra padding)."""
        bias = None if self.conv.bias is None else self.conv.bias.repeat_interleave(self.factor**2)
        return F.pixel_shuffle(F.conv2d(x, self.kernel(), bias, stride=self.factor), self.factor)


def rewrite_layers(net: nn.Module, device: torch.device | str = "cpu") -> bool:
    """Rewrite ``net``'s slow layers in place into exact equivalents that run faster on ``device``:
    upsampling blocks as :class:`SubpixelConv` (fewer multiply-adds everywhere) and, on the CPU,
    large convolutions with few outputs (the last layer) as :class:`DepthToSpaceConv`. Returns
    whether anything applied (other architectures are left as they are).

    Parameters, state-dict keys and InstanceNorm names are unchanged (:class:`RewrittenConv`), so
    checkpoints, exports and tiled inference's statistics see the original network; gradients
    flow to the original weights, so training uses the rewrite too."""
    upsampling = [name for name, m in net.named_modules()  # not yet rewritten: the rewrite is idempotent
                  if isinstance(m, UpsampleConvNormReLU) and isinstance(m[1][0], ReflectConv)]
    narrow = [name for name, m in net.named_modules()
              if torch.device(device).type == "cpu" and isinstance(m, ReflectConv) and m[1].stride == (1, 1)
              and m[1].kernel_size[0] >= 5 and m[1].out_channels < FEW_CHANNELS]
    for name in upsampling:
        block = net.get_submodule(name)
        block[0] = nn.Identity()
        block[1][0] = SubpixelConv(block[1][0][1])
    for name in narrow:
        replace_module(net, name, DepthToSpaceConv(net.get_submodule(name)[1]))
    return bool(upsampling or narrow)


def replace_module(net: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where ``net``'s submodule ``name`` (dotted) is."""
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent), child, module)


#: Per-channel pixels beyond which the CPU batch-norm kernel's statistics are not used: on
#: channels_last maps it sums in float32, and past ~2^20 pixels a channel whose mean is large
#: against its spread gets a mean and variance off by a sizeable fraction of that spread
#: (tests/test_fast_paths.py).
EXACT_STATISTICS_PIXELS = 1 << 20
#: Pixels per chunk of :func:`channel_moments`: its float32 statistics stay within 0.1% of a
#: standard deviation even for such channels.
STATISTICS_CHUNK_PIXELS = 1 << 18

#: Per channel: pixel count, mean and sum of squared deviations from the mean (float64).
Moments = tuple[int, torch.Tensor, torch.Tensor]


def pool_moments(a: Moments | None, b: Moments) -> Moments:
    """The moments of the union of two disjoint sets of pixels, exactly (Chan, Golub & LeVeque 1979)."""
    if a is None:
        return b
    count = a[0] + b[0]
    delta = b[1] - a[1]
    return count, a[1] + delta * b[0] / count, a[2] + b[2] + delta**2 * a[0] * b[0] / count


def channel_moments(x: torch.Tensor) -> Moments:
    """Per-channel moments of (B, C, H, W) ``x`` over B, H and W, exact for any size.

    The batch-norm kernel computes each chunk's statistics (about twice as fast as ``var_mean`` on
    channels_last maps), and chunks of at most :data:`STATISTICS_CHUNK_PIXELS` pixels are pooled in
    float64. A bf16 or fp16 map goes to the CPU kernel as it is, with float32 affine parameters: its
    mixed-precision path sums in float32 and returns float32 statistics, where without them it
    returns statistics rounded to the map's dtype, and a float32 copy of the map would cost a pass."""
    rows = max(1, STATISTICS_CHUNK_PIXELS // (x.shape[0] * x.shape[3]))
    mixed = x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)
    weight, bias = (torch.ones(x.shape[1]), torch.zeros(x.shape[1])) if mixed else (None, None)
    total: Moments | None = None
    for start in range(0, x.shape[2], rows):
        chunk = x[:, :, start: start + rows]
        chunk = chunk if mixed else chunk.float()
        count = chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
        if chunk.device.type in ("cpu", "cuda"):
            _, mean, invstd = torch.ops.aten._native_batch_norm_legit.no_stats(chunk, weight, bias, True, 0.0, 0.0)
            var = invstd.double().pow(-2)
        else:
            var, mean = torch.var_mean(chunk, dim=(0, 2, 3), unbiased=False)
        total = pool_moments(total, (count, mean.double(), var.double() * count))
    assert total is not None, "channel_moments of an empty map"
    return total


class PerImageInstanceNorm(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` that computes each image of a channels_last batch as training-mode
    batch norm over that image alone.

    The batch statistics of one image are its instance statistics, so the result is the same up
    to rounding; but the batch-norm kernels read channels_last maps in place, where
    ``F.instance_norm`` reshapes to (1, B*C, H, W) and so copies every NHWC map to NCHW, and the
    layers after it copy back (on a CPU training step with bf16 convolutions, a tenth of the step:
    ``stylenet-bench`` times ``train_fast_instance_norm``). A batch is split into its images
    (views) and the outputs concatenated (one copy, channels_last kept), which autograd
    differentiates the same way. NCHW batches of several images take ``nn.InstanceNorm2d``'s path,
    which copies nothing there. Beyond :data:`EXACT_STATISTICS_PIXELS` per image the CPU kernel's
    own statistics drift, so they are computed in chunks (:func:`channel_moments`) and the kernel
    only normalises (without gradients: inference of a photo of a few megapixels in one pass). A
    subclass, so tiled inference still finds and freezes it (:mod:`stylenet.inference`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or self.track_running_stats or (x.shape[0] > 1 and not is_channels_last(x)):
            return super().forward(x)
        if x.shape[0] > 1:
            return torch.cat([self.normalize_image(image) for image in x.split(1)])  # (B, C, H, W)
        return self.normalize_image(x)

    def normalize_image(self, x: torch.Tensor) -> torch.Tensor:
        """(1, C, H, W) -> (1, C, H, W) in the same layout."""
        if x.device.type == "cpu" and x.shape[2] * x.shape[3] > EXACT_STATISTICS_PIXELS and not x.requires_grad:
            count, mean, squares = channel_moments(x)  # no gradient flows through these statistics
            return F.batch_norm(x, mean.float(), (squares / count).float(), self.weight, self.bias,
                                training=False, momentum=0.0, eps=self.eps)
        return F.batch_norm(x, None, None, self.weight, self.bias, training=True, momentum=0.0, eps=self.eps)

    @classmethod
    def like(cls, norm: nn.InstanceNorm2d) -> PerImageInstanceNorm:
        """The same layer, sharing ``norm``'s parameters (and buffers, if any)."""
        single = cls(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
        for name, tensor in [*norm.named_parameters(recurse=False), *norm.named_buffers(recurse=False)]:
            setattr(single, name, tensor)
        return single


def per_image_instance_norms(net: nn.Module) -> None:
    """Replace ``net``'s ``nn.InstanceNorm2d`` layers in place by :class:`PerImageInstanceNorm`
    layers sharing their parameters (state-dict keys unchanged); idempotent."""
    for name, module in list(net.named_modules()):
        if type(module) is nn.InstanceNorm2d:
            replace_module(net, name, PerImageInstanceNorm.like(module))


def optimize_for_inference(net: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """A copy of ``net`` that computes the same images faster on ``device``; the original is never
    modified (checkpoints and exports keep its keys and layout).

    :func:`rewrite_layers`; InstanceNorm layers as :class:`PerImageInstanceNorm`; and, on CPUs
    and GPUs, the channels_last layout, which lets oneDNN and cuDNN run every convolution NHWC:
    with the two rewrites, faster than NCHW for the paper's network and the half-width one alike
    (``stylenet-bench``, ``infer``, measures it on the machine at hand)."""
    fast = copy.deepcopy(net)
    rewrite_layers(fast, device)
    per_image_instance_norms(fast)
    if torch.device(device).type in ("cpu", "cuda"):
        fast = fast.to(memory_format=torch.channels_last)
    return fast
