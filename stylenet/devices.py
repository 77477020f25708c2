"""Device choice: what ``auto`` means, whether a named device exists on this machine, and its free memory."""

from __future__ import annotations

from pathlib import Path

import torch

from stylenet.errors import StylenetError

#: what ``auto`` tries, in this order, before the CPU.
ACCELERATORS = ("cuda", "mps")


def is_available(kind: str) -> bool:
    """Whether this machine has a device of ``kind`` (``cpu``, ``cuda``, ``mps``)."""
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return kind == "cpu"


def resolve_device(name: str = "auto", *, hint: str = "--device cpu",
                   accelerators: tuple[str, ...] = ACCELERATORS) -> torch.device:
    """``auto`` picks the first available of ``accelerators``, else the CPU; an explicit device
    must exist.

    ``hint`` is how the caller's users ask for the CPU (``--device cpu`` on argparse command lines,
    ``device=cpu`` for Hydra overrides), so the error for a missing device says what to type."""
    if name == "auto":
        return torch.device(next((kind for kind in accelerators if is_available(kind)), "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise StylenetError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if not is_available(device.type):
        raise StylenetError(f"device {name!r} is not available on this machine (try {hint})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise StylenetError(f"device {name!r} is not available: this machine has {torch.cuda.device_count()} "
                            f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, or on the CPU the smaller of MemAvailable
    (/proc/meminfo) and the cgroup's remaining limit. None where neither can be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    limits = []
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            limits += [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
    except OSError:
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None
