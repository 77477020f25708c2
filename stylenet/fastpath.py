"""Fast paths shared by training, inference and the benchmark: where bf16 runs in hardware, which
memory layout wins, and how to switch both on without changing what a model computes or saves.

Kept free of Lightning and Hydra so ``stylenet-stylize`` and ``stylenet-bench`` can use it. The
numbers behind each default come from ``stylenet-bench`` (README, "Speed"); the correctness checks
behind them (loss within bf16 tolerance of fp32, state-dict keys unchanged) are in
tests/test_fast_paths.py.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from stylenet.nets.transformer import ReflectConv, UpsampleConvNormReLU

__all__ = ["SpaceToDepthConv", "SubpixelConv", "bf16_is_native", "inference_precision",
           "optimize_for_inference", "prepare_for_training", "training_precision", "use_channels_last"]

#: output phases (row, column) of a x2 upsampling, in the order SubpixelConv stacks their kernels.
PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))
#: convolutions with fewer output channels than this leave a CPU's vector units idle.
FEW_CHANNELS = 16


def bf16_is_native(device: torch.device | str) -> bool:
    """True where bf16 matrix maths runs in hardware: CUDA GPUs with native bf16 (Ampere and
    later), CPUs with AVX512-BF16 or AMX-BF16.

    Elsewhere autocast to bf16 still works but is emulated, which is slower than fp32 (on AVX2-only
    CPUs by a large factor), so fp32 stays the default there."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
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


def use_channels_last(device: torch.device | str, precision: str) -> bool:
    """Whether training with Lightning's ``precision`` runs the transformation net and VGG in
    channels_last (NHWC) on ``device``: on GPUs (what tensor-core convolutions want), and on CPUs
    in bf16, where oneDNN's NHWC bf16 convolutions gain more than the NCHW-only eager kernels
    (reflection padding, InstanceNorm) lose (``stylenet-bench``: 2.96 s against 3.17 s per step on
    the 2-core AVX512-BF16 CPU). fp32 on a CPU, and inference, stay NCHW."""
    return torch.device(device).type == "cuda" or precision == "bf16-mixed"


def prepare_for_training(net: nn.Module, loss: nn.Module, *, channels_last: bool = False,
                         compile: bool = False) -> None:
    """Apply the training fast paths to ``net`` and the loss network in place.

    ``channels_last`` converts parameters and buffers (convolutions then produce NHWC, so the
    batches follow without being converted); state-dict keys and values are unchanged and exported
    files are written contiguous. ``compile`` uses ``nn.Module.compile`` rather than wrapping in
    ``torch.compile(module)``, so that ``state_dict()`` keys get no ``_orig_mod.`` prefix and
    checkpoints stay interchangeable with uncompiled runs; compilation itself happens on the first
    step (its time shows up there, see ``stylenet-bench --compile``)."""
    vgg = getattr(loss, "vgg", None)
    modules = [m for m in (net, vgg) if m is not None]
    for module in modules:
        if channels_last:
            module.to(memory_format=torch.channels_last)
        if compile:
            module.compile()


class SubpixelConv(nn.Module):
    """Nearest x2 upsampling then a reflection-padded 3x3 convolution (the ``uN`` block's first two
    steps), computed at the input's resolution with 2.25x fewer multiply-adds and no upsampled copy.

    Every output pixel of phase (a, b) (its row and column parity) sees, through the duplicated
    pixels of the upsampled image, only a 2x2 neighbourhood of the input: the 3x3 kernel's rows
    (and columns) collapse to ``(w0, w1 + w2)`` for phase 0 and ``(w0 + w1, w2)`` for phase 1. The
    reflection padding of the upsampled image equals the upsampling of the input padded by edge
    replication. So one 2x2 convolution with the four phases' kernels stacked (4 x 4 taps instead
    of 4 x 9) over the replicate-padded input, interleaved, gives the same image up to rounding.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        weight = conv.weight.detach()  # (O, I, 3, 3)

        def collapse(w: torch.Tensor, phase: int, dim: int) -> torch.Tensor:
            first, middle, last = w.unbind(dim)
            return torch.stack((first, middle + last) if phase == 0 else (first + middle, last), dim)

        kernels = [collapse(collapse(weight, a, 2), b, 3) for a, b in PHASES]
        self.out_channels = weight.shape[0]
        self.register_buffer("weight", torch.cat(kernels))  # (4 O, I, 2, 2)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().repeat(len(PHASES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        with torch.autocast(x.device.type, enabled=False):  # padding is exact: keep the input's dtype
            x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        phases = F.conv2d(x, self.weight, self.bias)  # (B, 4 O, H + 1, W + 1)
        out = phases.new_empty(batch, self.out_channels, height, 2, width, 2)
        for index, (a, b) in enumerate(PHASES):
            channels = slice(index * self.out_channels, (index + 1) * self.out_channels)
            out[:, :, :, a, :, b] = phases[:, channels, a: a + height, b: b + width]
        return out.view(batch, self.out_channels, 2 * height, 2 * width)


class SpaceToDepthConv(nn.Module):
    """A reflection-padded KxK, stride-1 convolution with few output channels (the last 9x9 layer,
    3 outputs), computed on a space-to-depth view of its input: the same result up to rounding.

    Vector units are 16 or 32 channels wide, so a convolution with 3 outputs leaves most of them
    idle. Splitting the padded input into its ``factor`` x ``factor`` pixel phases (pixel_unshuffle)
    turns it into a convolution with ``factor**2`` times the input and output channels at
    ``1/factor`` the resolution, with kernel ceil((K - 1) / factor) + 1; output pixel phases are
    interleaved back (pixel_shuffle). It does ~1.2x the multiply-adds at factor 2 in half the time.
    """

    def __init__(self, conv: nn.Conv2d, factor: int = 2) -> None:
        super().__init__()
        weight = conv.weight.detach()  # (O, I, K, K)
        out_channels, in_channels, size, _ = weight.shape
        taps = (size - 2) // factor + 2
        phased = weight.new_zeros(out_channels, factor, factor, in_channels, factor, factor, taps, taps)
        for a in range(factor):  # output phase (row), then column; input phase; low-resolution tap
            for c in range(factor):
                for b in range(factor):
                    for d in range(factor):
                        rows = [(q, factor * q + b - a) for q in range(taps) if 0 <= factor * q + b - a < size]
                        cols = [(r, factor * r + d - c) for r in range(taps) if 0 <= factor * r + d - c < size]
                        for q, ky in rows:
                            for r, kx in cols:
                                phased[:, a, c, :, b, d, q, r] = weight[:, :, ky, kx]
        self.factor, self.pad = factor, size // 2
        self.register_buffer("weight", phased.reshape(out_channels * factor**2, in_channels * factor**2, taps, taps))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().repeat_interleave(factor**2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        extra_h, extra_w = (-(height + 2 * self.pad)) % self.factor, (-(width + 2 * self.pad)) % self.factor
        with torch.autocast(x.device.type, enabled=False):  # padding is exact: keep the input's dtype
            x = F.pad(x, (self.pad, self.pad + extra_w, self.pad, self.pad + extra_h), mode="reflect")
        y = F.pixel_shuffle(F.conv2d(F.pixel_unshuffle(x, self.factor), self.weight, self.bias), self.factor)
        return y[..., :height, :width]


def optimize_for_inference(net: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """``net`` with its slow layers rewritten into exact equivalents that run faster on ``device``:
    upsampling blocks as :class:`SubpixelConv` (fewer multiply-adds everywhere) and, on the CPU,
    large convolutions with few outputs (the last layer) as :class:`SpaceToDepthConv`.

    Returns a rewritten copy, or ``net`` itself when nothing applies (other architectures). The
    original is never modified (checkpoints and exports keep its keys); InstanceNorm layers keep
    their names, so tiled inference still finds and freezes their statistics."""
    upsampling = [name for name, m in net.named_modules() if isinstance(m, UpsampleConvNormReLU)]
    narrow = [name for name, m in net.named_modules()
              if torch.device(device).type == "cpu" and isinstance(m, ReflectConv) and m[1].stride == (1, 1)
              and m[1].kernel_size[0] >= 5 and m[1].out_channels < FEW_CHANNELS]
    if not upsampling and not narrow:
        return net
    fused = copy.deepcopy(net)
    for name in upsampling:
        block = fused.get_submodule(name)
        block[0] = nn.Identity()
        block[1][0] = SubpixelConv(block[1][0][1])
    for name in narrow:
        parent, _, child = name.rpartition(".")
        setattr(fused.get_submodule(parent), child, SpaceToDepthConv(fused.get_submodule(name)[1]))
    return fused
