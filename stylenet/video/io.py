"""PyAV decode -> :meth:`InferenceModel.stylize_frames` -> PyAV encode, streamed.

A reader thread demuxes the input, decodes its video to uint8 RGB frames and passes the audio
packets on untouched; the caller's thread runs the network; a writer thread encodes (H.264, or VP9
for ``.webm``) and muxes, frame timestamps and audio packets as they came. Everything is written to
a hidden temporary file beside the target and renamed into place (:func:`stylenet.atomic.atomic_write`):
an error before the end leaves nothing, except an input that breaks off (a truncated or corrupt
file) after some frames, whose frames up to the break are finished into a valid, shorter video and
reported as :class:`TruncatedVideoError`, naming the file.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from stylenet.atomic import atomic_write
from stylenet.errors import StylenetError, first_line
from stylenet.video.formats import HOLDERS, video_target
from stylenet.video.pipeline import Prefetch, Sink

if TYPE_CHECKING:
    from stylenet.inference import InferenceModel
    from stylenet.styles import StyleChoice

#: The install hint of every "PyAV is missing" error.
EXTRA_HINT = "pip install 'stylenet[video]'"
#: Frames each hand-off queue holds (decode -> network -> encode).
QUEUE_DEPTH = 4
#: The YUV matrices (AVColorSpace) the conversion to and from RGB knows, by the same numbers as swscale's
#: SWS_CS_*: BT.709, FCC, BT.601 (BT.470BG and SMPTE 170M), SMPTE 240M, BT.2020 (non-constant luminance).
#: A frame tagged otherwise (YCgCo, BT.2020 constant luminance, ICtCp, ...), which swscale refuses, or not at
#: all, is converted as BT.601 (swscale's default), and its output is left untagged.
MATRICES = frozenset({1, 4, 5, 6, 7, 9})
#: swscale's default matrix (SWS_CS_ITU601), for frames tagged with one it refuses.
BT601 = 5
#: AVColorPrimaries and AVColorTransferCharacteristic values that say nothing: reserved (0, 3), unspecified (2).
UNTAGGED = frozenset({0, 2, 3})


def require_av() -> ModuleType:
    """PyAV, or a one-line error naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise StylenetError(f"videos need PyAV, which is not installed: {EXTRA_HINT}") from None
    return av


class TruncatedVideoError(StylenetError):
    """The input broke off (truncated or corrupt) after some frames, or had damaged packets that were
    skipped; ``result`` describes the valid video written from the frames that could be decoded."""

    def __init__(self, message: str, result: VideoResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class VideoInfo:
    """What is kept from the input's main video stream (see :func:`probe_video`)."""

    width: int
    height: int
    rate: Fraction  # average frame rate
    time_base: Fraction
    expected_frames: int | None  # from the header (exact) or the duration (+-1); None: unknown
    exact_count: bool
    display_matrix: tuple[int, ...] | None  # FFmpeg's 3x3 DISPLAYMATRIX (rotation, flips)
    rotation: int  # degrees counter-clockwise, from the display matrix
    color_range: int  # AVColorRange of the first frame (0 unspecified, 1 limited, 2 full)
    colorspace: int  # AVColorSpace of the first frame: its YUV matrix
    color_primaries: int = 2  # AVColorPrimaries and AVColorTransferCharacteristic (2: unspecified): tags only,
    color_trc: int = 2        #   kept as they are (the network works on the RGB values as decoded)
    audio: tuple[str, ...] = ()  # codec names of the audio streams, copied in this order
    sample_aspect_ratio: Fraction | None = None  # of a pixel (anamorphic video: not square); None: square
    start: float = 0.0  # the stream's start time, s: where its first frame's time is counted from

    @property
    def matrix(self) -> int:
        """The YUV matrix the frames are converted with, both ways: their own where swscale knows it
        (:data:`MATRICES`), else BT.601."""
        return self.colorspace if self.colorspace in MATRICES else BT601


@dataclass
class VideoResult:
    """What :func:`stylize_video` did."""

    frames: int = 0  # frames written
    decoded: int = 0  # frames decoded
    audio_packets: int = 0
    seconds: float = 0.0
    width: int = 0
    height: int = 0
    max_in_flight: int = 0  # most frames decoded but not yet handed to the encoder at any time
    last_time: float | None = None  # when the last decoded frame ends (its time plus its duration), s
    damaged: int = 0  # video packets the decoder refused, skipped
    damage: str | None = None  # the decoder's message for the first of them
    discarded: int = 0  # video packets before the start an MP4's edit list sets (``ffmpeg -ss -c copy``), and
                        # an AVI's dropped frames: slots of the count without a picture
    before_key: int = 0  # video packets before the first key frame (a clip cut there): no decoder can show them
    problem: str | None = None  # why the input ended early, if it did
    dropped: list[str] = field(default_factory=list)  # the input's streams left out (no decoder for their codec)
    retimed: int = 0  # audio packets whose time went back, moved on by a tick (as FFmpeg's tools move them)
    info: VideoInfo | None = field(default=None, repr=False)
    reached: dict[int, float] = field(default_factory=dict)  # per stream read (index): where its packets end, s
    steps: dict[int, float] = field(default_factory=dict)  # per stream read: its longest packet, s (the tolerance)
    promised: dict[int, float] = field(default_factory=dict)  # per stream read: where the header says it ends, s
    kinds: dict[int, str] = field(default_factory=dict)  # per stream read: what the messages call it
    missing_bytes: int = 0  # how much shorter the file is than its Matroska Segment says

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Frame:
    pts: int | None
    rgb: np.ndarray


class _InputError(Exception):
    """The input's demuxer or decoder failed: carried apart from the network's and encoder's errors."""


def ffmpeg_path(path: Path) -> str:
    """``path`` as FFmpeg must be given it: absolute, else a name such as ``take:1.mp4`` (or the hidden
    temporary ``.take:1.mp4...``) reads as a URL of a protocol ``take``."""
    return str(path.absolute())


def _open_input(av: ModuleType, path: Path) -> Any:
    try:
        container = av.open(ffmpeg_path(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise StylenetError(f"{str(path)!r} is not a readable video ({first_line(err)})") from None
    if not container.streams.video:
        container.close()
        raise StylenetError(f"{str(path)!r} has no video stream")
    if not any(stream.codec_context for stream in container.streams.video):
        numbers = ", ".join(f"#{stream.index}" for stream in container.streams.video)
        container.close()
        raise StylenetError(f"{str(path)!r}: none of its video streams ({numbers}) is in a codec this "
                           "FFmpeg can decode")
    return container


def _expected_frames(stream: Any, rate: Fraction) -> tuple[int | None, bool]:
    """Frame count from the header (MP4/MOV), else from the stream's Matroska DURATION tag (where the
    stream ends, so its start is taken off; the duration FFmpeg gives a Matroska stream is the whole
    file's, a longer track's), else from the stream's duration, else unknown."""
    if stream.frames:
        return int(stream.frames), True
    seconds = _tag_seconds(stream.metadata)
    if seconds is not None and stream.start_time and stream.time_base:
        seconds -= float(stream.start_time * stream.time_base)
    elif seconds is None and stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    return (round(seconds * rate) if seconds and seconds > 0 and rate else None), False


def _tag_seconds(metadata: dict[str, str]) -> float | None:
    """A Matroska stream's DURATION tag, HH:MM:SS.nnnnnnnnn, in seconds; None without one. Informational
    only: a malformed one says nothing. The plain ``DURATION`` first: FFmpeg writes it fresh, and copies a
    ``DURATION-eng`` (mkvmerge's statistics, in a language other than "und") as it was, so a clip cut
    from a longer file still carries the longer file's; that one counts only where it is the only one."""
    keys = sorted((key for key in metadata if key.upper().partition("-")[0] == "DURATION"),
                  key=lambda key: key.upper() != "DURATION")
    for key in keys:
        with contextlib.suppress(ValueError):
            hours, minutes, rest = metadata[key].split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(rest)
    return None


#: EBML IDs (marker bits kept) of the EBML header and of the Matroska Segment after it.
_EBML_HEADER, _SEGMENT = 0x1A45DFA3, 0x18538067


def _promised_ends(streams: list[Any]) -> dict[int, float]:
    """Where each of a Matroska (or WebM) file's ``streams`` ends, s, as the header says: its DURATION tag,
    else its own duration (from its start). A file cut short keeps its header, and its audio, muxed at the
    end or in longer packets, falls short of it. Matroska only: its frame count is estimated from a
    duration (an MP4 or MOV index counts frames exactly, and edit lists move where a stream ends; MPEG-TS
    and AVI give estimates or nothing). Not the container's duration: tools that mend a browser's
    recording (MediaRecorder writes none) set it from the wall clock, beyond the last packet."""
    promised: dict[int, float] = {}
    for stream in streams:
        seconds = _tag_seconds(stream.metadata)
        if seconds is None and stream.duration and stream.time_base:
            seconds = float((stream.duration + (stream.start_time or 0)) * stream.time_base)
        if seconds:
            promised[stream.index] = seconds
    return promised


def _ebml_number(data: bytes, offset: int) -> tuple[int, int]:
    """The EBML variable-size number at ``offset`` (marker bit kept) and its width in bytes."""
    width = 9 - data[offset].bit_length()  # the leading zeros of its first byte, plus one
    if not 1 <= width <= 8 or offset + width > len(data):
        raise ValueError("not an EBML number")
    return int.from_bytes(data[offset:offset + width], "big"), width


def _matroska_missing_bytes(path: Path) -> int:
    """How many bytes the file lacks of the Matroska Segment its header sizes (0: none, or a size left
    unknown, as a muxer writing to a pipe leaves it): a file cut short, even where all it lost is a
    B-frame shown before the last frame read and audio that a packet's length of slack forgives."""
    with contextlib.suppress(OSError, ValueError, IndexError), path.open("rb") as file:
        head, offset = file.read(256), 0
        for wanted in (_EBML_HEADER, _SEGMENT):
            ident, width = _ebml_number(head, offset)
            size, size_width = _ebml_number(head, offset + width)
            offset += width + size_width
            if ident != wanted:
                return 0
            size &= (1 << (7 * size_width)) - 1  # without its marker bit
            if wanted == _SEGMENT:
                unknown = size == (1 << (7 * size_width)) - 1
                return 0 if unknown else max(0, offset + size - path.stat().st_size)
            offset += size
    return 0


def main_video(container: Any) -> Any:
    """The video stream ffplay and players pick (FFmpeg's ``av_find_best_stream``: the default track,
    cover art passed over), not merely the first; where that one's codec is unknown to this FFmpeg (no
    decoder), the first video stream that has one (:func:`_open_input` refused a file with none)."""
    best = container.streams.best("video")
    if best.codec_context:
        return best
    return next(stream for stream in container.streams.video if stream.codec_context)


def _first_frame(av: ModuleType, container: Any, path: Path) -> Any:
    """The main video stream's first frame that decodes: packets the decoder refuses before it are
    passed over, as :func:`read_video` passes them over (a damaged first key frame, say)."""
    refused: Exception | None = None
    video = main_video(container)
    video.thread_type = "SLICE"  # as read_video decodes: a refused packet is reported by its own call
    try:
        for packet in container.demux(video):
            try:
                frames = packet.decode()
            except av.InvalidDataError as err:
                refused = refused or err
                continue
            if frames:
                return frames[0]
    except Exception as err:
        refused = err
    detail = f" ({first_line(refused)})" if refused else ""
    raise StylenetError(f"{str(path)!r}: no video frame could be decoded{detail}")


def probe_video(path: str | Path) -> VideoInfo:
    """The main video stream's (:func:`main_video`) size, rate, time base, expected frame count, display
    matrix, pixel aspect ratio and colour tags, and the audio codecs, from the header and the first
    decoded frame."""
    av, path = require_av(), Path(path)
    container = _open_input(av, path)
    with container:
        stream = main_video(container)
        rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
        expected, exact = _expected_frames(stream, rate)
        audio = tuple(audio.codec_context.name for audio in container.streams.audio if audio.codec_context)
        pixel = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio  # the container's first
        frame = _first_frame(av, container, path)
        # iterating a frame's side data gives the data in PyAV 18.1.0, their types (mapping keys) in 18.1.1
        side_data = [entry if hasattr(entry, "type") else frame.side_data[entry] for entry in frame.side_data]
        matrix = next((bytes(data) for data in side_data if "DISPLAYMATRIX" in str(data.type)), None)
        return VideoInfo(width=frame.width, height=frame.height, rate=rate,
                         time_base=Fraction(stream.time_base or Fraction(1, 90000)),
                         expected_frames=expected, exact_count=exact,
                         display_matrix=struct.unpack("=9i", matrix) if matrix and len(matrix) == 36 else None,
                         rotation=int(frame.rotation or 0), color_range=int(frame.color_range),
                         colorspace=int(frame.colorspace), color_primaries=int(stream.codec_context.color_primaries),
                         color_trc=int(stream.codec_context.color_trc), audio=audio,
                         sample_aspect_ratio=Fraction(pixel) if pixel else None,
                         start=float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base
                         else 0.0)


def read_video(path: Path, size: tuple[int, int] | None, info: VideoInfo, result: VideoResult) -> Iterator[Any]:
    """The input's video frames as :class:`_Frame` (uint8 RGB, resized to ``size`` (H, W) if given)
    and its audio packets, in file order. Demuxer and decoder errors become :class:`_InputError`.

    An AVI's frames are timed by :class:`_AviSlots`."""
    av = require_av()
    height, width = size or (info.height, info.width)
    convert: dict[str, Any] = {"format": "rgb24", "width": width, "height": height, "src_colorspace": info.matrix}
    if info.color_range:
        convert["src_color_range"] = info.color_range
    with _open_input(av, path) as container:
        video = main_video(container)
        # slice threads, not frame threads: with frames in flight on several threads the decoder reports a
        # damaged packet at a later call, and at the final flush that loses the frames still inside it
        video.thread_type = "SLICE"
        per_frame = (float(video.average_rate / video.guessed_rate) if video.average_rate and video.guessed_rate
                     else 1.0)
        slots = _AviSlots(1 / (info.rate * info.time_base), per_frame) if container.format.name == "avi" else None
        copied = [audio for audio in container.streams.audio if audio.codec_context]  # (the others are left out)
        result.kinds = {video.index: "video", **{audio.index: f"audio stream #{audio.index}" for audio in copied}}
        if container.format.name.startswith("matroska"):  # (a file's length known once written: see shortfall)
            result.promised = _promised_ends([video, *copied])
            result.missing_bytes = _matroska_missing_bytes(path)
        keyed = False  # a key frame read: the packets after it decode (or are damaged)
        try:
            for packet in container.demux(video, *container.streams.audio):
                _reach(result, packet)
                if packet.stream.type == "audio":
                    if packet.dts is not None:  # not the demuxer's end-of-stream marker
                        yield packet
                    continue
                result.discarded += bool(packet.is_discard) + (slots.read(packet) if slots else 0)
                keyed = keyed or bool(packet.is_keyframe)  # (a damaged one too: what depends on it is lost with it)
                try:
                    frames = packet.decode()
                except av.InvalidDataError as err:  # one damaged packet: skipped, as FFmpeg's own tools do
                    if slots:
                        slots.lost(packet)
                    result.damaged += 1
                    result.damage = result.damage or first_line(err)
                    continue
                if not (keyed or frames or result.decoded or result.damaged) and packet.size:
                    result.before_key += 1  # dropped by the decoder, as by FFmpeg's tools: not a break
                for frame in frames:
                    result.decoded += 1
                    if frame.time is not None:
                        result.last_time = float(frame.time + (frame.duration or 0) * (frame.time_base or 0))
                    yield _Frame(slots.pts(frame) if slots else frame.pts, frame.to_ndarray(**convert))
        except av.FFmpegError as err:
            raise _InputError(first_line(err)) from err


class _AviSlots:
    """The times of an AVI's frames. AVI stores no presentation times, one chunk per slot of its constant
    rate, and FFmpeg numbers its packets (their dts) by chunk, in decoding order: the times it gives the
    frames of a stream with B-frames come out of the decoder shuffled. The decoder hands out frames in
    presentation order, so the k-th frame takes the k-th picture's slot. A dropped frame (an empty chunk,
    which FFmpeg passes over or hands on empty) is a slot without a picture: the frame before it shows
    for two. The last picture shows for a frame's slots: one, but where a time base finer than the frame
    rate gives every frame several (which the header counts as frames; a 1 ms base at 24 frames/s: 41.7,
    FFmpeg's average rate of the slots over its guessed frame rate), those after its own are no frames
    lost."""

    def __init__(self, ticks: float, per_frame: float = 1.0) -> None:
        self.ticks = ticks  # of the stream's time base per slot
        self.per_frame = per_frame  # slots per frame
        self.slots: deque[int] = deque()  # the slots of the pictures read and not yet decoded
        self.next: int | None = None

    def read(self, packet: Any) -> int:
        """Take note of a video packet; returns the dropped frames it reveals (at the end-of-stream
        marker, the slots the last picture shows for after its own)."""
        if packet.dts is None:  # the demuxer's end-of-stream marker
            return max(0, round(self.per_frame) - 1) if self.next is not None else 0
        dropped = 0 if self.next is None else max(0, packet.dts - self.next)
        self.next = packet.dts + 1
        if not packet.size:
            return dropped + 1
        self.slots.append(packet.dts)
        return dropped

    def lost(self, packet: Any) -> None:
        """A packet the decoder refused: no frame will take its slot."""
        with contextlib.suppress(ValueError):
            self.slots.remove(packet.dts)

    def pts(self, frame: Any) -> int | None:
        """The decoded ``frame``'s time: the next picture's slot."""
        return round(self.slots.popleft() * self.ticks) if self.slots else frame.pts


def _first_audio_packets(av: ModuleType, source: Path) -> dict[int, Any]:
    """The first packet of each audio stream of ``source``, by stream index, in one pass that stops when
    each stream has one (a stream without packets: read to the end); a read error ends it early, and the
    reader reports the file's damage itself."""
    firsts: dict[int, Any] = {}
    with _open_input(av, source) as container:
        streams = container.streams.audio
        if not streams:  # (demux() of no stream reads them all)
            return firsts
        with contextlib.suppress(av.FFmpegError):
            for packet in container.demux(*streams):
                if packet.dts is not None:
                    firsts.setdefault(packet.stream_index, packet)
                if len(firsts) == len(streams):
                    break
    return firsts


def _reach(result: VideoResult, packet: Any) -> None:
    """Take note of where a packet of a stream read ends (its time plus its duration), and of the longest
    packet of its stream: its duration, or where the file leaves that unknown (Matroska's audio), its
    step from where the stream had reached."""
    index = packet.stream_index
    if index not in result.kinds or packet.pts is None or not packet.time_base:  # (or an end-of-stream marker)
        return
    start = float(packet.pts * packet.time_base)
    duration = float((packet.duration or 0) * packet.time_base)
    before = result.reached.get(index)
    step = duration or (max(0.0, start - before) if before is not None else 0.0)
    result.steps[index] = max(result.steps.get(index, 0.0), step)
    result.reached[index] = max(start + duration, before if before is not None else -math.inf)


def _short_stream(result: VideoResult) -> str | None:
    """The first stream read that ends more than two of its longest packets before where the header says
    it ends (:func:`_promised_ends`), or None. Slack, for no false alarm: the file may leave its last
    packet's duration unknown, which an encoder's last packet may make longer than the rest; a frame lost
    from the video shows in its count (:func:`shortfall`), a few bytes cut in the Segment's size."""
    for index, promised in result.promised.items():
        end = result.reached.get(index)
        slack = 2 * result.steps.get(index, 0.0) + 0.002  # and Matroska's 1 ms ticks, rounded either way
        if end is None or end < promised - slack:
            where = f"at {end:.2f} s" if end is not None else "before its first packet"
            return f"its {result.kinds[index]} ended {where} of {promised:.2f} s"
    return None


def shortfall(info: VideoInfo, result: VideoResult) -> str | None:
    """Why an input read to its end is short: fewer frames (a damaged packet counts as one, and so does
    one the container says to discard) than its header (exactly) or its duration (within one frame)
    promised; None if it is not. A count from the duration, or a clip with damaged packets (whose
    decoder also drops the frames that depend on them), is reached by a last frame that ends as late.
    That forgives a frame, as the duration's count must (a variable rate, rounding), so a Matroska file
    cut short is also told by a stream ending before its header says (:func:`_short_stream`: its audio)
    and by the size its header gives its Segment (:func:`_matroska_missing_bytes`): a B-frame lost
    before the last frame read shows in neither the count nor the times."""
    expected, exact = info.expected_frames, info.exact_count
    reached = result.decoded + result.damaged + result.discarded + result.before_key
    if (not exact or result.damaged) and result.last_time is not None:  # a variable frame rate has fewer
        reached = max(reached, round((result.last_time - info.start) * info.rate))  # frames, ending as late
    if expected and reached < expected - (0 if exact else 1):
        return f"it ended after {result.decoded} of {expected} frames"
    short = _short_stream(result)
    if short:
        return short
    if result.missing_bytes:
        return f"it breaks off {result.missing_bytes} bytes before the end of the Matroska segment its header sizes"
    return None


def what_went_wrong(result: VideoResult) -> str:
    """Why the input broke off (``result.problem``) and the packets skipped, joined ("" if neither)."""
    skipped = f"{result.damaged} damaged video packet(s) skipped ({result.damage})" if result.damaged else ""
    return "; ".join(filter(None, (result.problem, skipped)))


def iter_video_frames(path: str | Path, *, limit: int | None = None) -> Iterator[np.ndarray]:
    """The first ``limit`` (all if None) video frames of ``path`` as uint8 (H, W, 3) RGB arrays, streamed;
    a one-line error naming the file if it breaks."""
    path = Path(path)
    info = probe_video(path)
    count, result = 0, VideoResult()
    try:
        with contextlib.closing(read_video(path, None, info, result)) as items:  # closes the file early
            for item in items:
                if limit is not None and count >= limit:
                    return
                if isinstance(item, _Frame):
                    count += 1
                    yield item.rgb
    except _InputError as err:
        raise StylenetError(f"{str(path)!r} is truncated or corrupt after {count} frames: {err}") from None
    result.problem = shortfall(info, result)
    if what_went_wrong(result):
        raise StylenetError(f"{str(path)!r} is truncated or corrupt: {what_went_wrong(result)}")


def _encoder_settings(suffix: str) -> tuple[str, dict[str, str]]:
    """(codec, options) for the output's container: VP9 for WebM, H.264 (libx264, CRF 18: visually
    lossless for most content) elsewhere, MPEG-4 part 2 if the FFmpeg build lacks libx264.

    x264's ``veryfast`` preset, not its ``medium`` default: at 640x480 on a 2-core CPU ``medium``
    encodes about as slowly as the network stylises, and the two share the cores; ``veryfast`` keeps
    the quality of CRF 18 for a somewhat larger file (``stylenet-bench``'s frames section;
    docs/experiments.md, "Video speed")."""
    av = require_av()
    if suffix == ".webm":
        return "libvpx-vp9", {"crf": "24", "b": "0", "row-mt": "1", "cpu-used": "5", "deadline": "good"}
    if "libx264" in av.codecs_available:
        return "libx264", {"crf": "18", "preset": "veryfast"}
    return "mpeg4", {"qscale": "2"}


#: Tags of the input not copied: the muxer writes its own (the encoder, MP4's brands), or they describe the
#: input's encoding (Matroska's DURATION and statistics tags), which the output's no longer is.
STALE_TAGS = frozenset({"encoder", "major_brand", "minor_version", "compatible_brands", "duration", "bps",
                        "number_of_frames", "number_of_bytes"})


def kept_tags(metadata: dict[str, str]) -> dict[str, str]:
    """A container's or stream's tags (title, language, creation time, location, ...) less :data:`STALE_TAGS`."""
    # Matroska's tags in a language other than "und" come as KEY-lang (BPS-eng, DURATION-eng)
    return {key: value for key, value in metadata.items()
            if key.lower().partition("-")[0] not in STALE_TAGS and not key.lower().startswith("_statistics")}


def _copy_labels(source: Any, target: Any) -> None:
    """A stream's tags (:func:`kept_tags`) and disposition (the default track, forced, ...) onto its copy."""
    tags = kept_tags(source.metadata)
    if "name" in tags and "title" not in tags:  # an MP4 track's name, which muxers write from "title"
        tags["title"] = tags.pop("name")
    target.metadata.update(tags)
    target.disposition = source.disposition


class VideoEncoder:
    """The output file: a video stream encoded from RGB frames with the input's timestamps, time
    base, frame rate, display matrix and colour tags, and a copy of each of the input's audio
    streams, fed with the input's own packets. All calls from one thread."""

    def __init__(self, path: Path, source: Path, info: VideoInfo, height: int, width: int, *,
                 name: Path | None = None) -> None:
        """``path``: where to encode (a hidden temporary file); ``name``: what errors call it (the
        file the user asked for; default ``path``)."""
        av = require_av()
        self.av, self.info, self.name = av, info, name or path
        #: the input's streams left out of the output, as a note names them
        self.dropped: list[str] = []
        #: per copied audio stream, the last decoding time muxed (muxers refuse times that go back)
        self._last_dts: dict[int, int] = {}
        #: per copied audio stream, a packet without a duration, muxed once the next one gives it, and that length
        self._untimed: dict[int, Any] = {}
        self._audio_step: dict[int, int] = {}
        self.retimed = 0  # audio packets whose time was moved on by a tick, as FFmpeg's own tools move them
        self.container = av.open(ffmpeg_path(path), "w")
        try:
            with _open_input(av, source) as template:
                self._add_video(path.suffix.lower(), height, width, main_video(template))
                self.audio = self._add_audio(template, source, name or path)
                self.container.metadata.update(kept_tags(template.metadata))
            try:  # the header now: a stream the muxer refuses is refused before any frame is stylized
                self.container.start_encoding()
            except av.FFmpegError as err:
                raise StylenetError(f"{str(name or path)!r} cannot hold the streams of {str(source)!r} "
                                    f"(the muxer says: {err.strerror or type(err).__name__}); try another "
                                    "container, such as .mkv") from None
        except BaseException:
            self.container.close()
            raise
        self.frames = self.audio_packets = 0
        self._last_pts: int | None = None
        #: the least step of the input's time base that is a step of the output stream's too
        self._tick = math.ceil(Fraction(self.video.time_base or info.time_base) / info.time_base)

    def _add_video(self, suffix: str, height: int, width: int, template: Any) -> None:
        codec, options = _encoder_settings(suffix)
        stream = self.container.add_stream(codec, rate=self.info.rate, options=options)
        stream.width, stream.height = width, height
        # 4:2:0 needs even sides; odd ones keep every pixel in 4:4:4 rather than lose a row or column
        stream.pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
        context = stream.codec_context
        context.time_base = self.info.time_base
        if self.info.color_range:
            context.color_range = self.info.color_range
        if self.info.colorspace in MATRICES:  # the matrix _write_frame converts with (else BT.601, untagged)
            context.colorspace = self.info.colorspace
        if self.info.color_primaries not in UNTAGGED:
            context.color_primaries = self.info.color_primaries
        if self.info.color_trc not in UNTAGGED:
            context.color_trc = self.info.color_trc
        if self.info.display_matrix is not None:
            stream.set_display_matrix(list(self.info.display_matrix))
        if self.info.sample_aspect_ratio:  # the shape the picture is shown at is kept, as FFmpeg's scale filter
            pixel = self.info.sample_aspect_ratio * self.info.width * height / (self.info.height * width)
            context.sample_aspect_ratio = pixel.limit_denominator(65535)  # keeps it (H.264 holds 16 bits)
        _copy_labels(template, stream)
        self.video = stream

    def _add_audio(self, template: Any, source: Path, path: Path) -> dict[int, Any]:
        """One output stream per audio stream of ``source`` (open as ``template``), with its codec
        parameters and labels. Audio the output's container cannot hold (AAC in WebM, Opus in MOV, stereo
        float PCM in MP4) is refused up front, naming the formats that hold it; audio none of them holds
        (Windows Media's WMA, ADPCM) is left out, with a note, rather than leave such a clip unstylizable."""
        streams: dict[int, Any] = {}
        firsts = _first_audio_packets(self.av, source)
        for audio in template.streams.audio:
            if audio.codec_context is None:
                self.dropped.append(f"audio stream #{audio.index} ({audio.metadata.get('title') or 'unknown codec'}"
                                    "): this FFmpeg has no codec to copy it as")
                continue
            first = firsts.get(audio.index)
            if not self._muxes(self.container.format.name, audio, first):
                name = audio.codec_context.codec.canonical_name  # mp3, not its decoder's mp3float
                holders = [suffix for suffix, muxer in HOLDERS.items()
                           if muxer != self.container.format.name and self._muxes(muxer, audio, first)]
                if not holders:
                    self.dropped.append(f"audio stream #{audio.index} ({name}): none of "
                                        f"{', '.join(HOLDERS)} can hold it untouched")
                    continue
                raise StylenetError(f"{str(path)!r} cannot hold the {name} audio of {str(source)!r} untouched: "
                                    f"choose {' or '.join(holders)}, which can")
            streams[audio.index] = self.container.add_stream_from_template(audio)
            _copy_labels(audio, streams[audio.index])
        return streams

    def _muxes(self, muxer: str, audio: Any, packet: Any | None) -> bool:
        """Whether ``muxer`` writes a file of the input stream ``audio`` from header to trailer, with its
        first ``packet`` (if it has one), in memory: some refuse a codec of their list only as they
        finish a file that holds some of it, after every frame was stylized."""
        probe = self.av.open(io.BytesIO(), "w", format=muxer)
        if audio.codec_context.name not in probe.supported_codecs:
            probe.close()
            return False
        try:
            stream = probe.add_stream_from_template(audio)
            probe.start_encoding()
            if packet is not None:
                packet.stream = stream
                probe.mux(packet)
            probe.close()  # writes the trailer
            return True
        except self.av.FFmpegError:
            with contextlib.suppress(self.av.FFmpegError):
                probe.close()
            return False

    def write(self, item: Any) -> None:
        """A ``(pts, rgb)`` frame or an input audio packet."""
        if isinstance(item, tuple):
            self._write_frame(*item)
            return
        # stream_index lives in the packet itself; its .stream belongs to the reader's container, which
        # may be closed by now
        stream = self.audio.get(item.stream_index)
        if stream is None:  # a stream left out (self.dropped)
            return
        last = self._last_dts.get(item.stream_index)
        if item.dts is not None and last is not None and item.dts <= last:  # as ffmpeg does: "changing to"
            item.dts = last + 1
            if item.pts is not None and item.pts < item.dts:
                item.pts = item.dts
            self.retimed += 1
        if item.dts is not None:
            self._last_dts[item.stream_index] = item.dts
        item.stream = stream
        held = self._untimed.pop(item.stream_index, None)
        if held is not None:  # its length: the time to this packet
            if item.dts is not None and held.dts is not None and item.dts > held.dts:
                held.duration = self._audio_step[item.stream_index] = item.dts - held.dts
            self._mux(held)
        if item.duration:
            self._mux(item)
        else:  # Matroska may leave durations out; MP4 and MOV end a track where its last packet ends, and cut
            self._untimed[item.stream_index] = item  # off a last packet of none: held until the next one times it
        self.audio_packets += 1

    def _mux(self, packets: Any) -> None:
        try:
            self.container.mux(packets)
        except self.av.FFmpegError as err:  # named as the user named the file, not its temporary name
            raise StylenetError(f"cannot write {str(self.name)!r}: the muxer refused a packet "
                                f"({err.strerror or type(err).__name__})") from None

    def _write_frame(self, pts: int | None, rgb: np.ndarray) -> None:
        if pts is None:  # no timestamp: the frame's place at the nominal rate
            pts = round(self.frames / (self.info.rate * self.info.time_base))
        if self._last_pts is not None:  # muxers refuse times that do not increase in the file's own time base
            pts = max(pts, self._last_pts + self._tick)  # (Matroska's is 1 ms: two frames 0.3 ms apart would share it)
        frame = self.av.VideoFrame.from_ndarray(rgb, format="rgb24")
        target = {"format": self.video.pix_fmt, "dst_colorspace": self.info.matrix}  # as the input was read
        if self.info.color_range:
            target["dst_color_range"] = self.info.color_range
        frame = frame.reformat(**target)
        frame.pts, frame.time_base = pts, self.info.time_base
        self._mux(self.video.encode(frame))
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        self._mux(self.video.encode(None))
        for index, held in self._untimed.items():  # a last packet as long as the one before it
            held.duration = self._audio_step.get(index, 0)
            self._mux(held)
        try:
            self.container.close()  # writes the trailer: a full disk may refuse it too
        except self.av.FFmpegError as err:
            raise StylenetError(f"cannot write {str(self.name)!r}: its end could not be written "
                                f"({err.strerror or type(err).__name__})") from None

    def abort(self) -> None:
        """Close the file without finishing it (it is deleted by the caller). Closing writes the trailer, which
        fails again on a full disk: that second error would hide the first, naming the temporary file."""
        with contextlib.suppress(self.av.FFmpegError, OSError):
            self.container.close()


def frames_in_picture(path: Path) -> int | None:
    """How many frames a picture file holds (an animated GIF, PNG or WebP several), from its header; None where
    Pillow cannot open it (the video reader says what it is)."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            return int(getattr(picture, "n_frames", 1))
    except Image.DecompressionBombError:  # one frame beyond Pillow's bound: a picture all the same
        return 1
    except Exception:  # not a picture Pillow reads
        return None


def stylize_video(source: str | Path, target: str | Path, model: InferenceModel, *, strength: float = 1.0,
                  preserve_color: bool = False, size: tuple[int, int] | None = None,
                  progress: Callable[[VideoResult], None] | None = None, depth: int = QUEUE_DEPTH,
                  style: StyleChoice | None = None) -> VideoResult:
    """Stylise every frame of ``source`` with ``model`` into ``target`` (format from its suffix).

    ``size`` (H, W) resizes the frames first; ``progress(result)`` is called after every frame;
    ``style``: one style or a ``{name: weight}`` blend of a model of several (as for ``stylize``).
    Raises :class:`StylenetError` (one line, naming the file) and leaves no output when nothing
    could be done; :class:`TruncatedVideoError` when the input broke off after some frames, or had
    damaged packets (skipped, as FFmpeg's tools skip them), after its valid video has been written."""
    from stylenet.image import IMAGE_EXTENSIONS
    from stylenet.inference.geometry import check_size
    from stylenet.inference.model import InferenceModel

    if not isinstance(model, InferenceModel):  # a model file's name, say
        raise StylenetError(f"model must be a loaded model (stylenet.load_model(path)), got {model!r}")
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1:
        raise StylenetError(f"depth must be a whole number of frames >= 1, got {depth!r}")
    source, target = Path(source), Path(target)
    # FFmpeg reads a photo as a clip of one frame (an animated GIF is a clip)
    if source.suffix.lower() in IMAGE_EXTENSIONS and frames_in_picture(source) == 1:
        raise StylenetError(f"{str(source)!r} is a picture, not a video: stylize it with model.stylize(...)")
    model = model.for_style(style)
    if size is not None:
        check_size(size)
    start = time.perf_counter()
    video_target(source, target, in_folder=False)  # a video suffix, not a folder: before any work
    if source.resolve() == target.resolve():
        raise StylenetError(f"refusing to overwrite input {str(source)!r} with its output")
    info = probe_video(source)
    height, width = size or (info.height, info.width)
    result = VideoResult(width=width * model.scale, height=height * model.scale, info=info)
    existing = target.exists()

    def write(tmp: Path) -> None:
        encoder = VideoEncoder(tmp, source, info, result.height, result.width, name=target)
        try:
            _stream(source, encoder, model, {"strength": strength, "preserve_color": preserve_color}, size,
                    result, progress, depth)
            if result.frames == 0:
                raise StylenetError(f"{str(source)!r}: no video frame could be decoded ({what_went_wrong(result)})")
            encoder.close()
        except BaseException:
            encoder.abort()
            raise
        result.audio_packets, result.dropped, result.retimed = encoder.audio_packets, encoder.dropped, encoder.retimed
        if existing and what_went_wrong(result):  # a failed run's shorter video replaces no earlier output
            raise TruncatedVideoError(f"{str(source)!r} is truncated or corrupt: {what_went_wrong(result)}; "
                                      f"{str(target)!r} exists already and is left as it was: nothing written",
                                      result)

    atomic_write(target, write)
    result.seconds = time.perf_counter() - start
    if result.problem:
        raise TruncatedVideoError(f"{str(source)!r} is truncated or corrupt: {what_went_wrong(result)}; wrote the "
                                  f"{result.frames} frames before the break to {str(target)!r}", result)
    if result.damaged:  # read to its end: every frame but the damaged packets' is written
        raise TruncatedVideoError(f"{str(source)!r} is corrupt: {what_went_wrong(result)}; wrote {result.frames} "
                                  f"frames to {str(target)!r}", result)
    return result


def _stream(source: Path, encoder: VideoEncoder, model: InferenceModel, controls: dict[str, Any],
            size: tuple[int, int] | None, result: VideoResult, progress: Callable[[VideoResult], None] | None,
            depth: int) -> None:
    """The three stages (see :mod:`stylenet.video.pipeline`), until the input ends or breaks off."""
    reader = Prefetch(read_video(source, size, encoder.info, result), depth, "stylenet-video-reader")
    sink: Sink[Any] = Sink(encoder.write, depth, "stylenet-video-writer")
    stamps: deque[int | None] = deque()

    def frames() -> Iterator[np.ndarray]:
        for item in reader:
            if isinstance(item, _Frame):
                stamps.append(item.pts)
                yield item.rgb
            else:
                sink.put(item)  # audio: straight to the muxer, in file order

    start = time.perf_counter()
    try:
        for rgb in model.stylize_frames(frames(), **controls):
            sink.put((stamps.popleft(), rgb))
            result.frames += 1
            result.max_in_flight = max(result.max_in_flight, result.decoded - result.frames)
            result.seconds = time.perf_counter() - start
            if progress is not None:
                progress(result)
    except _InputError as err:
        result.problem = str(err)
    finally:
        reader.close()
        sink.close()
    if result.problem is None:
        result.problem = shortfall(encoder.info, result)
