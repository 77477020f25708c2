"""A generated clip to measure and test with, where no real video may be shipped: a crop moving across
a smooth generated scene (H.264), optionally with a 440 Hz tone (AAC) and a display rotation, as a phone
writes them. ``stylenet-bench``'s video row and tests/test_video.py use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stylenet.video.io import ffmpeg_path, require_av


def write_sample_clip(path: str | Path, frames: int = 24, size: tuple[int, int] = (48, 64), fps: int = 24,
                      audio: bool = True, rotation: int = 0) -> Path:
    """Write ``frames`` frames of (height, width) ``size`` at ``fps`` to ``path``; returns it."""
    av = require_av()
    height, width = size
    yy, xx = np.mgrid[0:height * 2, 0:width * 2]
    scene = np.stack([np.sin(xx / 7.0) * np.cos(yy / 5.0), np.cos((xx + yy) / 9.0), np.sin(xx * yy / 400.0)], -1)
    scene = ((scene * 0.5 + 0.5) * 255).astype(np.uint8)
    with av.open(ffmpeg_path(Path(path)), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=44100) if audio else None
        if sound is not None:
            sound.layout = "mono"
        for index in range(frames):
            top, left = index % height, index % width
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scene[top: top + height, left: left + width]),
                                               format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            _write_tone(av, container, sound, seconds=frames / fps)
    return Path(path)


def _write_tone(av: Any, container: Any, stream: Any, seconds: float) -> None:
    rate, step = stream.codec_context.sample_rate, 1024
    for start in range(0, int(rate * seconds), step):
        samples = np.sin(np.arange(start, start + step) / rate * 2 * np.pi * 440).astype(np.float32)[None] * 0.3
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
