"""Which paths are videos, and where a video's output goes (no PyAV needed: the CLI decides this
for every input before anything is decoded)."""

from __future__ import annotations

from pathlib import Path

from stylenet.errors import StylenetError

#: Suffixes that ``stylenet-stylize`` treats as videos (case-insensitive); everything else is an image.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video, by its suffix (the CLI's dispatch: images stay images)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def video_target(source: Path, target: Path, default_name: bool) -> Path:
    """The output path for a video input: an output folder's default ``{stem}_{style}.png`` name
    takes the video's own suffix; anything else must name a video format (checked before any work,
    as images' outputs are)."""
    if default_name and not is_video(target):
        target = target.with_suffix(source.suffix.lower())
    if not is_video(target):
        raise StylenetError(f"output {str(target)!r} for video {str(source)!r} needs a video extension "
                            f"({', '.join(VIDEO_SUFFIXES)})")
    if target.is_dir():
        raise StylenetError(f"output {str(target)!r} is a directory")
    return target
