"""Memory: the activation budget of one forward pass, a probe that measures a network's need, and
what running out of memory looks like on each device.
"""

from __future__ import annotations

import resource
import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from stylenet.devices import available_memory
from stylenet.errors import StylenetError
from stylenet.inference.geometry import forward, min_size, round_up, size_multiple

#: Per-forward-pass activation budget on the CPU when ``max_memory`` is not given.
CPU_MAX_MEMORY = 800_000_000  # 0.8 GB: a 1024x1024 photo still runs in one pass (fp32 or bf16)
#: The smallest side of :func:`activation_bytes_per_pixel`'s probe.
MEMORY_PROBE_SIDE = 64


def max_rss_bytes() -> int:
    """This process's peak resident set size so far, by ``getrusage`` (whose unit is the platform's)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def default_max_memory(device: torch.device) -> int:
    """Activation budget of one forward pass: 80% of the free GPU memory, half of MPS's recommended
    working set, :data:`CPU_MAX_MEMORY` on the CPU (the image and output stay in RAM beside it).

    On a GPU, what PyTorch's caching allocator keeps from earlier passes (reserved, not allocated)
    counts as free: the driver sees it as used, and without it the budget would shrink after the
    first big image, sending later images of the same size down a slower path."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int((free + cached) * 0.8)
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() * 0.5)
    return CPU_MAX_MEMORY


class _PeakTensorMemory(TorchDispatchMode):
    """Counts the bytes of every tensor that every operation allocates, and frees them when the
    tensor dies: the peak of live activations, including the internals of fused modules that
    forward hooks never see. (A ``__torch_dispatch__`` mode, PyTorch's documented extension point.)"""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._storages: set[int] = set()

    def _free(self, pointer: int, size: int) -> None:
        self._storages.discard(pointer)
        self.live -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor._is_view():
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() in self._storages:  # in-place results and other aliases
                continue
            self._storages.add(storage.data_ptr())
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._free, storage.data_ptr(), storage.nbytes())
        return out


def check_image_memory(height: int, width: int, scale: int = 1) -> None:
    """Refuse, before it is made, a size to resize an image to whose float32 copy and output (``scale``
    times larger a side: super-resolution) alone exceed the free RAM. A slip such as ``--scale 1000``
    asked for 74 GB and got a raw allocator error, or the OOM killer: the network's own activations have
    a budget, the image and the output do not."""
    needed = 3 * 4 * height * width * (1 + scale**2)  # (3, H, W) in, (3, sH, sW) out, float32
    free = available_memory(torch.device("cpu"))
    if free is not None and needed > free:
        raise StylenetError(f"resized to {width}x{height} px, the image and its output alone need {gigabytes(needed)} "
                            f"of memory, but {gigabytes(free)} is free: ask for a smaller size (on the command line: "
                            "--scale, --max-size)")


def gigabytes(count: int) -> str:
    """Bytes for a message: ``73.7 GB``, or below 1 GB in MB to three significant digits (``7.37 MB``)."""
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.3g} MB"


@torch.inference_mode()
def activation_bytes_per_pixel(net: nn.Module, device: torch.device, precision: str = "fp32",
                               run: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Peak activation bytes per input pixel, measured on one small probe pass (``forward``, or
    ``run``: another way of computing it, such as :func:`~stylenet.inference.prepadded.prepadded_forward`).

    The probe counts every tensor the pass allocates (:class:`_PeakTensorMemory`); the process
    needs somewhat more (allocator slack, oneDNN's scratch buffers and reordered weights), so the
    estimate is 1.3x that peak: the measured peak RSS of 1024x1024 passes of the paper's network on
    the CPU is 0.87x to 1.0x the estimate (fp32 and bf16, with and without the fast paths).
    """
    side = round_up(max(MEMORY_PROBE_SIDE, min_size(net)), size_multiple(net))
    probe = torch.zeros(1, 3, side, side, device=device)
    with _PeakTensorMemory() as memory:
        run(probe) if run is not None else forward(net, probe, precision)
    return 1.3 * memory.peak / (side * side)


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA raises OutOfMemoryError, the CPU and MPS allocators a RuntimeError with a message."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_cached_memory(device: torch.device) -> None:
    """Return the allocator's cached blocks to the device after running out of memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
