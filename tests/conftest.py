"""Shared fixtures: every image is generated here, nothing is downloaded."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Two torch threads, as CI's two cores; pytest-xdist's workers share the cores this process may use, one
# thread each where there are no more, or their thread pools fight.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
torch.set_num_threads(max(1, min(2, CORES // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread for the test: tiny convolutions run many times faster on one thread
    when the cores are shared (modules of many tiny optimisations opt in with ``usefixtures``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _quiet_random_vgg_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="stylenet.nets.vgg")


def make_photo(path: Path, size: tuple[int, int] = (80, 64), seed: int = 0, mode: str = "RGB") -> Path:
    """A smooth random colour image (gradients + blobs), saved in ``mode``."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin(6 * x * rng.uniform(0.5, 2) + rng.uniform(0, 6)) * np.cos(5 * y * rng.uniform(0.5, 2))
                for _ in range(3)]
    array = ((np.stack(channels, -1) * 0.5 + 0.5) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, "RGB").convert(mode).save(path)
    return path


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Six small photos in nested folders."""
    root = tmp_path / "photos"
    for i in range(6):
        make_photo(root / f"sub{i % 2}" / f"img{i}.png", size=(72 + 8 * i, 64 + 4 * i), seed=i)
    return root


@pytest.fixture
def style_image(tmp_path: Path) -> Path:
    return make_photo(tmp_path / "style.png", size=(96, 80), seed=99)
