"""``stylenet-stylize`` on a video input: each ``-m`` model over the clip's frames, with a progress
line in frames/s, and every failure reported on one line (the CLI's rules for images, applied to
videos: see :mod:`stylenet.cli.stylize`)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stylenet.errors import StylenetError
from stylenet.video.io import TruncatedVideoError, VideoResult, probe_video, stylize_video

#: Options of stylenet-stylize that have no meaning for video frames (value when unset): refused rather
#: than ignored, so that nobody waits for a clip stylized without what they asked for.
_IMAGE_ONLY = {"tile": None, "tile_overlap": None, "exact_stats": False, "upscale": None, "match_histogram": False,
               "keep_gray": False, "quality": None}
_BAR = 20
_REFRESH_S = 0.25


def progress_line(label: str, result: VideoResult) -> str:
    """``label [#####-----] 57/100 frames, 12.3 frames/s`` (no bar when the frame count is unknown;
    ``57/~100`` when it is estimated from the duration, which a variable frame rate makes too high)."""
    expected = result.info.expected_frames if result.info else None
    rate = f"{result.frames_per_second:.1f} frames/s"
    if not expected:
        return f"{label} {result.frames} frames, {rate}"
    filled = min(_BAR, _BAR * result.frames // expected)
    about = "" if result.info.exact_count else "~"  # (expected is set: info is)
    return f"{label} [{'#' * filled}{'-' * (_BAR - filled)}] {result.frames}/{about}{expected} frames, {rate}"


def _check_options(args: argparse.Namespace) -> None:
    used = [name for name, unset in _IMAGE_ONLY.items() if getattr(args, name, unset) != unset]
    if used:
        raise StylenetError(f"--{used[0].replace('_', '-')} does not apply to videos")


def _check_frame_pixels(source: Path, max_pixels: int | None) -> None:
    """``--max-pixels`` holds a clip's frame as it holds a photo (it was passed over in silence). Its
    default, a decompression bomb's bound, is for images: a video's frame size is no such risk."""
    if max_pixels is None:
        return
    info = probe_video(source)
    if info.width * info.height > max_pixels:
        raise StylenetError(f"its frames of {info.width}x{info.height} = {info.width * info.height} pixels exceed "
                            f"--max-pixels {max_pixels}")


def _frame_size(source: Path, args: argparse.Namespace) -> tuple[int, int] | None:
    """The ``--scale`` / ``--max-size`` frame size, or None to keep the video's own. A size of our
    choosing has even sides (one pixel less where needed), also where the option leaves the size as it
    is (a ``--max-size`` above it): H.264 and VP9 in 4:2:0, which every player decodes, where an odd side
    needs 4:4:4 (kept only for a video that has one and was given no size)."""
    from stylenet.image import target_size

    if args.scale == 1 and args.max_size is None:  # (--scale's default): no size asked for
        return None
    info = probe_video(source)
    size = target_size(info.height, info.width, scale=args.scale, max_size=args.max_size)
    height, width = (max(2, side - side % 2) for side in size)
    return None if (height, width) == (info.height, info.width) else (height, width)


def run_video_jobs(source: Path, jobs: list[Any], counter: str, args: argparse.Namespace, report: Any,
                   describe: Callable[[Exception, object], str]) -> None:
    """Each job (``.target``, ``.model``: a :class:`stylenet.cli.stylize.Pipeline`) over ``source``'s
    frames; ``report`` counts and prints as for images, ``describe`` makes the one-line errors."""
    try:
        _check_options(args)
        _check_frame_pixels(source, args.max_pixels)
        size = _frame_size(source, args)
    except Exception as err:
        report.error(describe(err, source))
        return
    for job in jobs:
        label = f"{counter} {source.name} -> {job.target.name}"
        shown = 0.0

        def progress(result: VideoResult, label: str = label) -> None:
            nonlocal shown
            if time.monotonic() - shown >= _REFRESH_S:
                shown = time.monotonic()
                report.progress(progress_line(label, result))

        report.progress(label)
        try:
            result = stylize_video(source, job.target, job.model.model, strength=args.strength,
                                   preserve_color=args.preserve_color, size=size, progress=progress)
        except TruncatedVideoError as err:  # a valid, shorter video was written: an error all the same,
            report.error(describe(err, source))  # its pixels counted in the summary's rate
            _note_streams(report, source, err.result)
            _count(report, err.result)
            continue
        except Exception as err:  # this output only: the next model and the next input go on
            report.error(describe(err, source))
            continue
        _note_streams(report, source, result)
        _count(report, result)
        report.done += 1


def _note_streams(report: Any, source: Path, result: VideoResult) -> None:
    """What of the input's other streams was not copied as it was: one note each."""
    if result.dropped:
        report.note(f"{source.name}: left out {'; '.join(result.dropped)}")
    if result.retimed:
        report.note(f"{source.name}: {result.retimed} audio packet(s) whose time went back were moved on by a tick, "
                    "as ffmpeg moves them")
    if result.before_key:
        report.note(f"{source.name}: {result.before_key} frame(s) before its first key frame cannot be decoded "
                    "(the clip was cut there): left out, as ffmpeg leaves them")


def _count(report: Any, result: VideoResult) -> None:
    report.seconds += result.seconds
    report.megapixels += result.frames * result.width * result.height / 1e6
