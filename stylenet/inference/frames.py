"""Video frames: a stream of same-sized images through one network, with the per-image work of
:meth:`~stylenet.inference.InferenceModel.transform` (checks, memory plan, tile grid, blending
buffers) done once per frame size instead of once per frame.

A frame is a uint8 (H, W, 3) numpy array (what OpenCV, imageio and PyAV decode to; RGB order) or a
float (3, H, W) tensor in [0, 1]; each comes back as the same kind, a new array or tensor per frame
(consumers such as video writers may hold on to it). The input tensor the network reads is kept
across frames of one size and filled in place (from a page-locked staging buffer on CUDA); a new
size re-prepares it. The network is the model's, already rewritten for speed
(:func:`stylenet.fastpath.optimize_for_inference`), and the input has the layout ``stylize`` gives
it, so every frame comes out as ``stylize`` makes it alone: the same bytes for uint8 frames; for float
tensors in fp32, within float rounding (a few 1e-6: the kept buffer's convolutions may sum in another order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch

from stylenet.errors import StylenetError
from stylenet.image import levels_to_unit_
from stylenet.inference.controls import Controls

Frame = TypeVar("Frame", np.ndarray, torch.Tensor)


def frame_size(frame: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """(H, W) of a uint8 (H, W, 3) array or a float (3, H, W) tensor, H and W >= 1; anything else is
    refused."""
    if isinstance(frame, np.ndarray):
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or not frame.size:
            raise StylenetError(f"expected a uint8 (H, W, 3) frame, H and W >= 1, got {frame.dtype} {frame.shape}")
        return int(frame.shape[0]), int(frame.shape[1])
    if isinstance(frame, torch.Tensor):
        if frame.ndim != 3 or frame.shape[0] != 3 or not frame.is_floating_point() or not frame.numel():
            hint = " (a uint8 tensor: frame / 255)" if frame.dtype == torch.uint8 else ""
            raise StylenetError(f"expected a float (3, H, W) frame tensor, H and W >= 1, got {frame.dtype} "
                                f"{tuple(frame.shape)}{hint}")
        check_unit_range(frame, "frame tensor")
        return int(frame.shape[1]), int(frame.shape[2])
    raise StylenetError(f"frames must be uint8 numpy arrays or float tensors, got {type(frame).__name__}")


#: How far outside [0, 1] a float image may stray (resampling overshoot) before it is refused.
RANGE_SLACK = 0.01


def check_unit_range(image: torch.Tensor, what: str) -> None:
    """A float image holds values in [0, 1]: values of 0-255, or NaN, would come out as a flat grey
    or NaN picture without a word. One line, with the range found (NaN fails every comparison)."""
    low, high = (float(value) for value in torch.aminmax(image.detach()))
    if not (low >= -RANGE_SLACK and high <= 1 + RANGE_SLACK):
        hint = "; 0-255 values? divide by 255" if high > 1 + RANGE_SLACK else ""
        raise StylenetError(f"{what} values must be in [0, 1], got {low:g} to {high:g}{hint}")


class FrameBuffers:
    """The tensors kept across frames of one size."""

    def __init__(self, height: int, width: int, device: torch.device) -> None:
        self.size = (height, width)
        self.device = device
        self.input = torch.empty(1, 3, height, width, device=device)
        # the frame's pixels land here first (pinned for an asynchronous copy to a GPU): numpy copies any
        # array into it, read-only (as np.asarray of a PIL image is) or strided, without a warning or a temporary
        self.staging = torch.empty(height, width, 3, dtype=torch.uint8, pin_memory=device.type == "cuda")

    def load(self, frame: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``frame`` -> the (1, 3, H, W) float32 input, in [0, 1] as :func:`stylenet.image.from_pil`
        makes it (``k / 255`` in float32)."""
        if isinstance(frame, torch.Tensor):
            return self.input.copy_(frame.unsqueeze(0))
        np.copyto(self.staging.numpy(), frame)
        pixels = self.staging.to(self.device, non_blocking=True)  # the staging buffer itself on the CPU
        self.input.copy_(pixels.permute(2, 0, 1).unsqueeze(0))
        return levels_to_unit_(self.input)


def stream_frames(frames: Iterable[Frame], run: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                  controls: Controls, fits: Callable[[int, int], bool],
                  fallback: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[Frame]:
    """Each frame through ``run`` ((1, 3, H, W) -> float32 (1, 3, H, W) on the device), with
    ``controls``; frames that do not ``fits(H, W)`` one pass go through ``fallback`` ((3, H, W)
    float32 -> the finished (3, H, W) float32 on the CPU, e.g. layer by layer)."""
    buffers: FrameBuffers | None = None
    for frame in frames:
        height, width = frame_size(frame)
        if buffers is None or buffers.size != (height, width):
            buffers = FrameBuffers(height, width, device)
        if fits(height, width):
            with torch.inference_mode():
                batch = buffers.load(frame)
                output = controls.apply(run(batch), batch if controls.needs_content else None)[0]
        else:
            with torch.inference_mode():
                rgb = buffers.load(frame)[0].cpu()
            output = fallback(rgb)
        if isinstance(frame, torch.Tensor):  # copied outside inference mode: an ordinary tensor
            yield output.to("cpu", copy=True)
            continue
        with torch.inference_mode():
            pixels = output.mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous().cpu()
        yield pixels.numpy()
