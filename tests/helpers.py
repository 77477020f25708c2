"""Helpers shared by several test modules (fixtures live in conftest.py): unreadable image files, a
pickle payload that proves code ran, the command of a console script, and a layer's gradients in
a given memory layout."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tomllib
import torch
from PIL import Image

if TYPE_CHECKING:
    from stylenet.inference import InferenceModel


def png_with_header_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched (with a correct CRC) to claim width x height."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (1, 2, 3)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def encoded(fmt: str, seed: int) -> bytes:
    """A 64x64 random RGB image encoded as ``fmt`` (JPEG, PNG)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def icon_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "ICO")
    return buf.getvalue()


#: files with an image's name that no loader must accept, by name
BAD_FILES: dict[str, Callable[[], bytes]] = {
    "zero_bytes.png": lambda: b"",
    "random_bytes.jpg": lambda: np.random.default_rng(5).integers(0, 256, 500, dtype=np.uint8).tobytes(),
    "truncated.jpg": lambda: encoded("JPEG", 3)[: len(encoded("JPEG", 3)) // 2],
    "truncated.png": lambda: encoded("PNG", 4)[: len(encoded("PNG", 4)) // 2],
    "truncated_after_header.png": lambda: encoded("PNG", 4)[:33],  # signature and IHDR: "not an image" to Pillow
    "really_an_icon.png": icon_bytes,  # a format Pillow reads but we do not accept
}


class RunsCode:
    """Unpickling this creates the folder ``marker``: proof that loading executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.marker),)


def console_script(name: str) -> list[str]:
    """The command that runs console script ``name`` (``stylenet-train``) as users run it: the installed
    script next to this Python, or ``python -m`` its module (pyproject.toml) where it is not installed."""
    script = Path(sys.executable).with_name(name)
    if script.exists():
        return [str(script)]
    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    return [sys.executable, "-m", scripts[name].partition(":")[0]]


def output_and_gradients(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, upstream: torch.Tensor,
                         layout: torch.memory_format, parameters: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``layer`` on a copy of ``x`` stored in ``layout``: its output, then the gradients of
    ``sum(output * upstream)`` for the input and each of ``parameters`` (whose ``.grad`` is cleared
    again). Asserts that the output and the input's gradient keep the layout (no copy to another)."""
    leaf = x.clone(memory_format=layout).requires_grad_()
    out = layer(leaf)
    (out * upstream).sum().backward()
    assert out.is_contiguous(memory_format=layout) and leaf.grad.is_contiguous(memory_format=layout)
    grads = [p.grad.clone() for p in parameters]
    for p in parameters:
        p.grad = None
    return [out.detach(), leaf.grad, *grads]


def signal_self(signum: int) -> None:
    """Send ``signum`` to this process, as Ctrl-C or a scheduler would, and wait for the handler the
    command installed to raise: a stand-in for the work a stop interrupts."""
    os.kill(os.getpid(), signum)
    time.sleep(10)  # the handler raises before this ends


@contextlib.contextmanager
def stops_handled_by(prog: str) -> Iterator[None]:
    """Within: a command run in the test's process (``main([...])``) must handle Ctrl-C and SIGTERM
    itself. A Ctrl-C it lets escape fails the test (pytest would stop the session), and SIGTERM that
    reaches the process's own handler raises instead of ending pytest, as it would end the command."""
    def killed(signum: int, frame: object) -> None:
        raise RuntimeError("SIGTERM reached the process's own handler: it dies where it stands")

    previous = signal.signal(signal.SIGTERM, killed)
    try:
        yield
    except KeyboardInterrupt:
        pytest.fail(f"Ctrl-C escaped {prog} as a traceback")
    finally:
        signal.signal(signal.SIGTERM, previous)


def frames_setting_precision(model: InferenceModel, frame: np.ndarray) -> Iterator[np.ndarray]:
    """The frame twice, ``model.precision`` set to fp32 between them (a page's switch, a notebook's cell)."""
    yield frame
    model.precision = "fp32"
    yield frame


def assert_precision_applies_to_the_next_frame(model: InferenceModel, photo: Path, **choice: Any) -> None:
    """A precision set between frames applies from the next one, as it does to ``stylize`` (the stream's
    kept buffers were built once, in the first frame's precision; a model of several styles kept the style's
    model of the stream's start)."""
    frame = np.asarray(Image.open(photo).convert("RGB"))
    first, second = model.stylize_frames(frames_setting_precision(model, frame), **choice)
    expected_fp32 = np.asarray(model.stylize(Image.fromarray(frame), **choice)).astype(np.int16)
    model.precision = "bf16"
    expected_bf16 = np.asarray(model.stylize(Image.fromarray(frame), **choice)).astype(np.int16)
    assert np.abs(expected_fp32 - expected_bf16).max() > 2  # the two precisions tell apart
    assert np.abs(first.astype(np.int16) - expected_bf16).max() <= 1
    assert np.abs(second.astype(np.int16) - expected_fp32).max() <= 1
