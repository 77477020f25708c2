"""Which paths are videos, and where a video's output goes (no PyAV needed: the CLI decides this
for every input before anything is decoded)."""

from __future__ import annotations

from pathlib import Path

from stylenet.atomic import unwritable
from stylenet.errors import StylenetError

#: Read, never written, each output in a folder Matroska: AVI holds neither H.264's reordered frames nor exact
#: timestamps nor a rotation; MPEG transport (a camcorder's AVCHD .mts, broadcast .ts) and program streams,
#: 3GP, Flash and Windows Media video hold no rotation either, and players take H.264 in them less readily.
READ_ONLY_SUFFIXES = dict.fromkeys((".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".3gp", ".flv", ".wmv"), ".mkv")
#: Written (and read): H.264 in MP4, MOV and Matroska, VP9 in WebM.
WRITTEN_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm")
#: FFmpeg's muxer for each kind of file written (.m4v is MP4's): what audio an output of each can hold.
HOLDERS = {".mkv": "matroska", ".mov": "mov", ".mp4": "mp4", ".webm": "webm"}
#: Suffixes that ``stylenet-stylize`` treats as videos (case-insensitive); everything else is an image.
VIDEO_SUFFIXES = (*WRITTEN_SUFFIXES, *READ_ONLY_SUFFIXES)


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video, by its suffix (the CLI's dispatch: images stay images)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def video_target(source: Path, target: Path, in_folder: bool, named_suffix: bool = True) -> Path:
    """The output path for a video input: a name in an output folder (``--name``'s, by default
    ``{stem}_{style}.png``) that ends in an image's suffix, or in none, takes the video's own, as does
    one whose ``--name`` pattern gives no suffix of its own (``named_suffix`` False: a dot in a field,
    ``trip.day1_tiny``, is no suffix); any other name, and a file named by ``-o``, must name a video
    format. Checked before any work, as images' outputs are."""
    from stylenet.image.formats import WRITABLE_EXTENSIONS

    suffix = source.suffix.lower()
    suffix = READ_ONLY_SUFFIXES.get(suffix, suffix)
    if in_folder and target.suffix.lower() in ("", *WRITABLE_EXTENSIONS):
        target = target.with_suffix(suffix)
    elif in_folder and not named_suffix and not is_video(target):
        target = target.with_name(target.name + suffix)
    if not is_video(target):
        raise StylenetError(f"output {str(target)!r} for video {str(source)!r} needs a video extension "
                            f"({', '.join(WRITTEN_SUFFIXES)})")
    if target.suffix.lower() in READ_ONLY_SUFFIXES:
        raise StylenetError(f"output {str(target)!r}: {target.suffix} videos are read, not written (they cannot "
                            "hold all of a video's timestamps, reordered frames and rotation); name a .mkv, .mp4, "
                            ".mov or .webm file")
    problem = unwritable(target)
    if problem:
        raise StylenetError(f"cannot write video {str(target)!r}: {problem}")
    return target
