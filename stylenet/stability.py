"""How much a style network flickers: E_warp on synthetic sequences of known motion.

Each sequence is a window moving over a held-out photo, rendered frame by frame from the photo
itself (no frame is a resampled copy of the one before, so no blur builds up): a pan, a zoom, a
rotation, a smooth local deformation (a new random field each frame), and a still camera whose
frames differ only by sensor noise. Frames are rounded to 8 bits, as a video's are. The window's
position map is carried from frame to frame by the very flow the measure uses, so frame t at p
shows what frame t-1 showed at p + flow(p), up to the bilinear interpolation of the photo.

The measure is E_warp (:func:`stylenet.temporal.warping_error`; Lai et al., ECCV 2018): the mean
absolute difference, in grey levels, between output t and output t-1 warped by the true motion,
over the pixels that stay visible, averaged over frames and photos. On the still sequence it is the
flicker: how much the output changes when only the sensor noise does (Gupta, Johnson et al. 2017).
The input frames' own E_warp is the measure's floor (interpolation and noise), reported beside it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stylenet.markdown import table_row
from stylenet.temporal import SENSOR_NOISE, affine_flow, deformation_flow, pixel_grid, sample_at, warp, warping_error

#: The sequences, in table order; "still" is the flicker.
KINDS = ("pan", "zoom", "rotation", "deformation", "still")
MOTION_KINDS = KINDS[:-1]
#: Per frame: pan (x, y) pixels, zoom factor, rotation degrees, deformation amplitude pixels.
PAN, ZOOM, ROTATION, DEFORMATION = (2.0, 0.75), 1.015, 1.0, 1.5

StylizeFrames = Callable[[list[torch.Tensor]], Iterable[torch.Tensor]]


@dataclass
class Clip:
    """One synthetic clip: (T, 3, H, W) frames in [0, 1] (8-bit levels) and the T - 1 flows
    (1, 2, H, W) that relate each frame to the one before."""

    kind: str
    frames: torch.Tensor
    flows: list[torch.Tensor]


def step_flow(kind: str, size: int, generator: torch.Generator) -> torch.Tensor:
    """(1, 2, size, size) flow of one frame step of a ``kind`` sequence."""
    one, zero = torch.ones(1), torch.zeros(1)
    if kind == "pan":
        return affine_flow(size, size, shift=torch.tensor([PAN]), zoom=one, rotation=zero)
    if kind == "zoom":
        return affine_flow(size, size, shift=torch.zeros(1, 2), zoom=one * ZOOM, rotation=zero)
    if kind == "rotation":
        return affine_flow(size, size, shift=torch.zeros(1, 2), zoom=one, rotation=one * ROTATION)
    if kind == "deformation":
        coarse = (torch.rand(1, 2, 4, 4, generator=generator) * 2 - 1) * DEFORMATION
        return deformation_flow(coarse, size, size)
    if kind == "still":
        return torch.zeros(1, 2, size, size)
    raise ValueError(f"unknown sequence kind {kind!r} (one of {', '.join(KINDS)})")


def make_sequence(photo: torch.Tensor, kind: str, size: int = 256, frames: int = 8, seed: int = 0) -> Clip:
    """A ``frames``-long ``kind`` sequence of ``size`` x ``size`` windows centred on ``photo``
    (3, H, W), which should exceed the window by the motion's reach (:func:`photo_for_sequences`)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = photo.shape[-2:]
    grid = pixel_grid(size, size)
    # where in the photo each window pixel is, less its own place: the window's corner at first
    offset = torch.tensor([(width - size) / 2, (height - size) / 2]).view(1, 2, 1, 1).expand(1, 2, size, size)
    rendered, flows = [], []
    for index in range(frames):
        if index:
            flow = step_flow(kind, size, generator)
            # position_t(p) = position_t-1(p + flow(p)), carried as the offset: exact for affine maps (bilinear
            # keeps them linear), and where p + flow(p) leaves the window the border repeats an offset, the
            # photo's next pixels, not a position, which would smear the last column across the edge
            offset = flow + warp(offset, flow)[0]
            flows.append(flow)
        frame = sample_at(photo[None], grid + offset)[0][0]
        if kind == "still":
            frame = frame + torch.randn(frame.shape, generator=generator) * SENSOR_NOISE  # as validation's
        rendered.append(frame.clamp(0.0, 1.0).mul(255).round().div(255))
    return Clip(kind, torch.stack(rendered), flows)


def sequence_photo_side(size: int, frames: int) -> float:
    """The short side a photo needs to hold every sequence's window for ``frames`` frames: 1.5 x
    ``size`` (a rotated window's corners reach sqrt 2), more where a long clip's pan travels further
    (2 px of margin for the bilinear reads). The zoom magnifies, so its window shrinks; the
    deformation's drift stays well within the pan's travel."""
    return max(1.5 * size, size + 2 * (max(map(abs, PAN)) * (frames - 1) + 2))


def sequence_pixels(size: int, frames: int) -> int:
    """Pixels the sequences of one photo hold at least: its square copy and every frame of every kind."""
    return int(sequence_photo_side(size, frames) ** 2) + len(KINDS) * frames * size * size


def photo_for_sequences(photo: torch.Tensor, size: int, frames: int = 8) -> torch.Tensor:
    """``photo`` resized so that its short side is :func:`sequence_photo_side`."""
    from stylenet.image import resize

    height, width = photo.shape[-2:]
    factor = sequence_photo_side(size, frames) / min(height, width)
    return resize(photo, (round(height * factor), round(width * factor)), clamp=True)


def sequence_error(outputs: torch.Tensor, flows: Sequence[torch.Tensor]) -> float:
    """Mean E_warp (grey levels) over the consecutive pairs of (T, 3, H, W) ``outputs``."""
    errors = [warping_error(outputs[t][None], outputs[t - 1][None], flows[t - 1]) for t in range(1, len(outputs))]
    return float(torch.stack(errors).mean())


def measure(stylize_frames: StylizeFrames | None, sequences: Sequence[Clip]) -> dict[str, float]:
    """E_warp per sequence kind, averaged over the sequences of that kind, of the frames stylised
    by ``stylize_frames`` (a list of (3, H, W) frames -> frames; rounded to 8 bits, as a video's),
    or of the input frames themselves when it is None; ``e_warp``: the mean over the motions."""
    totals: dict[str, list[float]] = {}
    for sequence in sequences:
        frames = sequence.frames
        if stylize_frames is not None:
            frames = torch.stack([out.clamp(0, 1).mul(255).round().div(255)
                                  for out in stylize_frames(list(frames))])
        totals.setdefault(sequence.kind, []).append(sequence_error(frames, sequence.flows))
    scores = {kind: sum(values) / len(values) for kind, values in totals.items()}
    motions = [scores[kind] for kind in MOTION_KINDS if kind in scores]
    if motions:
        scores["e_warp"] = sum(motions) / len(motions)
    return scores


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    """One row per measured method (``input frames`` first, if measured), one column per sequence
    kind, then the mean E_warp over the motions and the still camera's flicker."""
    header = table_row(["", *MOTION_KINDS, "**E_warp** (mean)", "**flicker** (still)"])
    lines = [header, "|---" * (len(MOTION_KINDS) + 3) + "|"]
    for name, scores in rows.items():
        cells = [_cell(scores.get(kind)) for kind in MOTION_KINDS]
        mean, still = _cell(scores.get("e_warp"), bold=True), _cell(scores.get("still"), bold=True)
        lines.append(table_row([name, *cells, mean, still]))
    return "\n".join(lines) + "\n"


def _cell(value: float | None, bold: bool = False) -> str:
    if value is None:
        return ""
    return f"**{value:.2f}**" if bold else f"{value:.2f}"


def clip_change(frames: Iterable[np.ndarray], stylize_frames: Callable[[Iterable[np.ndarray]], Iterable[np.ndarray]]
                ) -> dict[str, float]:
    """On a real clip, whose motion is unknown: the mean absolute change between consecutive output
    frames against that of the input frames (grey levels per frame), and their ratio. Without flow
    this is no E_warp: motion counts as change on both sides, so a ratio near 1 is a network that
    changes its output no more than the scene changes, and flicker shows as a ratio well above it.
    Streams: two frames of each are held at a time."""
    originals, inputs = itertools.tee(frames)  # the network is one frame behind at most: tee holds one
    sums, pairs = [0.0, 0.0], 0
    previous: tuple[np.ndarray, np.ndarray] | None = None
    for frame, output in zip(originals, stylize_frames(inputs), strict=True):
        if previous is not None:
            sums[0] += _mean_change(frame, previous[0])
            sums[1] += _mean_change(output, previous[1])
            pairs += 1
        previous = frame, output
    inp, out = (sums[0] / pairs, sums[1] / pairs) if pairs else (0.0, 0.0)
    return {"frames": float(pairs + (previous is not None)), "input": inp, "output": out,
            "ratio": out / inp if inp else float("nan")}


def _mean_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def strip(clip: Clip, outputs: dict[str, torch.Tensor], frames: int = 3, gain: float = 4.0) -> torch.Tensor:
    """A before/after picture of ``clip``: one row per entry of ``outputs`` ((T, 3, H, W) frames; the
    input's first), its first ``frames`` frames, then ``gain`` x the warping error |out_t - W(out_t-1)|
    of the last of them (black where stable; masked pixels black)."""
    rows = []
    for frames_out in outputs.values():
        last = min(frames, len(frames_out)) - 1
        warped, mask = warp(frames_out[last - 1][None], clip.flows[last - 1])
        error = ((frames_out[last][None] - warped).abs() * gain * mask).clamp(0, 1)[0]
        cells = [*frames_out[: last + 1], error]
        rows.append(torch.cat([torch.nn.functional.pad(cell, (2, 2, 2, 2), value=1.0) for cell in cells], dim=2))
    return torch.cat(rows, dim=1)
