"""Wall time, FLOPs and peak memory of one piece of work, on CPUs and CUDA devices."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from stylenet.inference.memory import max_rss_bytes


def key(*parts: object) -> str:
    """A flat JSON key from its parts: ``key("infer", "fast", "paper", 1024, "seconds")``."""
    return "_".join(str(part) for part in parts)


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so clock reads measure the computation, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median wall time of ``reps`` calls after ``warmup`` calls, the device synchronised around each."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def counted_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` (convolutions and matrix products, forward and backward), counted
    by PyTorch's own counter rather than by a formula that could drift from the code."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def random_images(count: int, size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)


def proc_status_bytes(field: str) -> int | None:
    """A memory figure of this process from Linux's /proc/self/status (kB there), or None elsewhere."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set size. Linux's VmHWM belongs to the address space, which
    ``exec`` replaces; ``ru_maxrss`` survives ``exec``, so in a subprocess it can report the parent's
    peak (the benchmark's own RSS), and is only the fallback."""
    peak = proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    return max_rss_bytes()


def peak_mib(device: torch.device, baseline: int | None = None) -> tuple[float, float | None]:
    """Peak memory of this process so far, MiB: CUDA's max allocated, or the peak RSS (which includes
    the interpreter and torch), and on CPUs its rise above ``baseline`` bytes (None without one)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, None
    peak = peak_rss_bytes()
    return peak / 2**20, None if baseline is None else (peak - baseline) / 2**20
