"""Video in, video out: a clip generated here (a moving crop of a generated image, with an audio
stream and a rotation) round-trips through stylenet-stylize with its frame count, rate, size,
rotation and audio packets; memory stays bounded; broken files give one line naming them and a
valid, shorter file or nothing; without PyAV the error names the extra."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from stylenet import StylenetError, load_model
from stylenet.cli.stylize import main as stylize_main
from stylenet.modelfile import save_model
from stylenet.nets import TransformerNet
from stylenet.video import VIDEO_SUFFIXES, is_video, stylize_video, video_target
from stylenet.video import io as video_io
from stylenet.video.io import iter_video_frames
from stylenet.video.jobs import progress_line
from stylenet.video.pipeline import Prefetch, Sink
from tests.helpers import console_script, png_with_header_size


def make_clip(path: Path, frames: int = 24, size: tuple[int, int] = (48, 64), fps: int = 24,
              audio: bool = True, rotation: int = 90) -> Path:
    """A crop moving across a smooth generated image (H.264), with a 440 Hz tone (AAC) and a display
    rotation, as a phone writes them (:func:`stylenet.video.sample.write_sample_clip`)."""
    pytest.importorskip("av")
    from stylenet.video.sample import write_sample_clip

    return write_sample_clip(path, frames, size, fps, audio=audio, rotation=rotation)


def read_clip(path: Path) -> dict:
    """What a player sees: the decoded frames, rate, rotation and the audio packets' bytes."""
    av = pytest.importorskip("av")
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        rate = video.average_rate
        frames, rotation = [], None
        for frame in container.decode(video=0):
            rotation = frame.rotation if rotation is None else rotation
            frames.append(frame.to_ndarray(format="rgb24"))
    with av.open(str(path)) as container:
        streams = container.streams.audio[:1]
        audio = [bytes(packet) for packet in container.demux(*streams) if packet.dts is not None] if streams else []
    return {"frames": frames, "rate": rate, "rotation": rotation, "audio": audio}


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny frames: one torch thread (two contend with the reader and writer threads and other jobs)."""


def tiny_model_file(folder: Path) -> Path:
    """A tiny random style network's model file, ``folder/tiny.safetensors``."""
    torch.manual_seed(0)
    return save_model(folder / "tiny.safetensors", TransformerNet(channels=8, residual_blocks=1),
                      {"task": "style", "style_name": "tiny"})


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return tiny_model_file(tmp_path)


def test_clip_round_trips_count_rate_size_rotation_and_audio(tmp_path: Path, model_file: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    clip = make_clip(tmp_path / "clip.mp4")
    out = tmp_path / "clip_styled.mp4"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out)]) == 0
    source, result = read_clip(clip), read_clip(out)
    assert len(result["frames"]) == len(source["frames"]) == 24
    assert result["rate"] == source["rate"] == Fraction(24)
    assert result["frames"][0].shape == (48, 64, 3) and result["rotation"] == source["rotation"] == 90
    assert result["audio"] == source["audio"] and len(result["audio"]) > 10  # packets copied bit for bit
    assert np.abs(result["frames"][5].astype(int) - source["frames"][5]).mean() > 5  # stylised
    # strength 0 writes the input back: colours survive the YUV -> RGB -> YUV trip
    plain = tmp_path / "plain.mkv"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(plain), "--strength", "0"]) == 0
    frames = read_clip(plain)["frames"]
    # H.264 4:2:0 on this sharp generated clip alone costs 2.98-3.01 grey levels (x264's threads vary it);
    # decoding BT.601 as BT.709 alone would cost 7.0, limited range read as full 8.9
    assert np.abs(np.stack(frames).astype(int) - np.stack(source["frames"])).mean() < 4
    assert "2 done, 0 failed" not in capsys.readouterr().out  # one output per call


def test_audio_that_the_container_cannot_hold_is_refused_naming_the_file_asked_for(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture) -> None:
    clip = make_clip(tmp_path / "clip.mp4", frames=4)  # AAC audio: WebM holds only Opus and Vorbis
    out = tmp_path / "clip_styled.webm"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{str(out)!r} cannot hold the aac audio" in err and ".tmp" not in err and "choose .mkv" in err
    assert not list(tmp_path.glob("*.webm")) and not list(tmp_path.glob(".*"))  # nothing left behind


def test_a_stream_the_muxer_refuses_at_its_header_is_refused_before_any_frame(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture) -> None:
    """FLAC audio into .mov passes the codec list but not the muxer's header: one line naming the
    file asked for (not the hidden temporary one), nothing left behind."""
    av = pytest.importorskip("av")
    clip = tmp_path / "flac.mkv"
    with av.open(str(clip), "w") as container:
        video = h264(container, 32)
        audio = container.add_stream("flac", rate=8000)
        audio.layout = "mono"
        for index in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * index, np.uint8), format="rgb24")
            container.mux(video.encode(frame))
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 333), np.int16), format="s16", layout="mono")
            sound.sample_rate, sound.pts = 8000, index * 333
            container.mux(audio.encode(sound))
        container.mux(video.encode())
        container.mux(audio.encode())
    out = tmp_path / "flac_styled.mov"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{str(out)!r} cannot hold" in err and ".tmp" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".*"))


def write_frames(av: Any, container: Any, stream: Any, count: int, side: int) -> None:
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(make_scene(side, shift=index), format="rgb24")
        frame.pts = index
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def make_scene(side: int, shift: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:side, shift:side + shift]
    return np.stack([xx * 200 // side + 20, yy * 200 // side + 30, (xx + yy) * 100 // side + 60], -1).astype(np.uint8)


def h264(container: Any, side: int, **options: str) -> Any:
    """A side x side H.264 (4:2:0) stream at 24 frames/s in ``container``, x264 ``options`` given."""
    video = container.add_stream("libx264", rate=24, options=options or None)
    video.width, video.height, video.pix_fmt = side, side, "yuv420p"
    return video


def test_audio_the_muxer_refuses_only_as_it_finishes_is_refused_before_any_frame(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture) -> None:
    """Stereo float PCM passes MP4's codec list and header, and fails its trailer once a packet is in:
    refused at the start, naming the file asked for, also behind an audio stream without packets (which
    the check reads to the end for); into .mkv it is copied."""
    av = pytest.importorskip("av")
    clip = tmp_path / "pcm.mkv"
    with av.open(str(clip), "w") as container:
        video = h264(container, 32)
        container.add_stream("aac", rate=8000).layout = "mono"  # no packets
        audio = container.add_stream("pcm_f32le", rate=8000)
        audio.layout = "stereo"  # (MP4 writes mono float PCM)
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 2 * 1333), np.float32), format="flt", layout="stereo")
        sound.sample_rate, sound.pts = 8000, 0
        container.mux(audio.encode(sound))
        write_frames(av, container, video, 4, 32)
    out = tmp_path / "pcm_styled.mp4"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{str(out)!r} cannot hold the pcm_f32le audio" in err and ".tmp" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".*"))
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(tmp_path / "pcm_styled.mkv")]) == 0
    with av.open(str(tmp_path / "pcm_styled.mkv")) as container:
        assert [stream.codec_context.name for stream in container.streams.audio] == ["aac", "pcm_f32le"]


@pytest.mark.parametrize(("tags", "kept"), [((6, 6, 6), (6, 6, 6)),      # BT.601 (SMPTE 170M)
                                            ((9, 9, 14), (9, 9, 14)),     # BT.2020 with HLG
                                            ((8, 1, 1), (2, 1, 1))])      # YCgCo: swscale's refusal
def test_colour_tags_are_kept_and_the_matrix_is_the_tagged_one(tmp_path: Path, model_file: Path,
                                                              tags: tuple[int, int, int],
                                                              kept: tuple[int, int, int]) -> None:
    """A player reads the output's YUV by its tags: they are the input's (matrix, primaries, transfer),
    and the matrix is the one the frames were converted with, so strength 0 gives the input back. A
    matrix swscale cannot convert is read as BT.601 (its default) and the output's is left untagged."""
    av = pytest.importorskip("av")
    clip = tmp_path / "tagged.mp4"
    matrix, primaries, transfer = tags
    with av.open(str(clip), "w") as container:
        video = h264(container, 64, crf="10")
        context = video.codec_context
        context.colorspace, context.color_primaries, context.color_trc, context.color_range = matrix, primaries, \
            transfer, 1
        for index in range(3):
            frame = av.VideoFrame.from_ndarray(make_scene(64, index), format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace=kept[0] if kept[0] != 2 else 5, dst_color_range=1)
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
    out = tmp_path / "tagged_plain.mp4"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out), "--strength", "0"]) == 0
    with av.open(str(out)) as container:
        context = container.streams.video[0].codec_context
        assert (int(context.colorspace), int(context.color_primaries), int(context.color_trc)) == kept
    # each read by its own tag, independently of stylenet (the YCgCo input by ours, as BT.601: PyAV's default
    # refuses it): 1.6 grey levels (x264 at CRF 10, 4:2:0); BT.601 numbers tagged BT.2020 read 3.4
    source = read_clip(clip)["frames"] if kept[0] != 2 else list(iter_video_frames(clip))
    difference = np.stack(read_clip(out)["frames"]).astype(int) - np.stack(source)
    assert np.abs(difference).mean() < 2.5


def labelled_clip(path: Path) -> Path:
    """An anamorphic clip (pixels 32:27, as DVDs hold 4:3 pictures) with a title, date and place, and two
    audio tracks labelled by language and title, the English one the default, as cameras and editors
    write them."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        container.metadata.update({"title": "Harbour", "creation_time": "2024-05-01T10:00:00.000000Z",
                                   "location": "+48.8577+002.2950/"})
        video = h264(container, 32)
        video.codec_context.sample_aspect_ratio = Fraction(32, 27)
        tracks = []
        for language, title in [("eng", "English"), ("fra", "Français")]:
            audio = container.add_stream("aac", rate=8000)
            audio.layout = "mono"
            audio.metadata.update({"language": language, "title": title})
            audio.disposition = av.stream.Disposition.default if language == "eng" else av.stream.Disposition(0)
            tracks.append(audio)
        container.start_encoding()
        write_frames(av, container, video, 8, 32)
        for audio in tracks:
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 8000, 0
            container.mux(audio.encode(sound))
            container.mux(audio.encode())
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_the_pixel_shape_the_labels_and_the_date_are_kept(tmp_path: Path, model_file: Path, suffix: str) -> None:
    """A clip keeps the shape it is shown at (its pixel aspect ratio; resized unevenly through the API,
    the ratio that keeps it, as FFmpeg's scale filter sets it), its title, date and place, and each audio
    track's language, title and default flag: the packets alone would leave a player without them."""
    av = pytest.importorskip("av")
    clip = labelled_clip(tmp_path / f"labelled{suffix}")
    out = tmp_path / f"out{suffix}"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out), "--max-size", "16"]) == 0
    stylize_video(clip, tmp_path / f"uneven{suffix}", load_model(model_file), size=(16, 32))
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        assert (video.width, video.height, video.sample_aspect_ratio) == (16, 16, Fraction(32, 27))
        assert {key: container.metadata.get(key) for key in ("title", "creation_time")} == {
            "title": "Harbour", "creation_time": "2024-05-01T10:00:00.000000Z"}
        assert "+48.8577+002.2950/" in container.metadata.values()  # MP4's "location", Matroska's "LOCATION"
        labels = [(track.metadata.get("language"), track.metadata.get("title") or track.metadata.get("name"),
                   track.disposition) for track in container.streams.audio]
        assert labels == [("eng", "English", av.stream.Disposition.default), ("fra", "Français", 0)]
    # what describes the input's encoding is not copied: the muxer writes the output's own
    stale = {"ENCODER": "Lavf", "major_brand": "isom", "DURATION": "00:00:01.0", "BPS": "900",
             "NUMBER_OF_FRAMES": "8", "_STATISTICS_TAGS": "BPS DURATION", "BPS-eng": "900",
             "DURATION-eng": "09:00:00.0"}  # mkvmerge's statistics, in a language: KEY-lang
    assert video_io.kept_tags({**stale, "title": "Harbour", "LANGUAGE": "eng"}) == {"title": "Harbour",
                                                                                  "LANGUAGE": "eng"}
    with av.open(str(tmp_path / f"uneven{suffix}")) as container:
        assert container.streams.video[0].sample_aspect_ratio == Fraction(32, 27) / 2  # shown as 32:27 x 32:32


def test_a_size_of_our_choosing_is_even_so_players_can_decode_it(tmp_path: Path, model_file: Path) -> None:
    """--max-size 45 on a 48x64 clip: 34x45 by the aspect ratio, written 34x44 in 4:2:0 (odd sides would
    need 4:4:4, which browsers and phones do not decode)."""
    av = pytest.importorskip("av")
    clip = make_clip(tmp_path / "clip.mp4", frames=3, audio=False, rotation=0)
    out = tmp_path / "small.mp4"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out), "--max-size", "45"]) == 0
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        assert (video.height, video.width, video.codec_context.pix_fmt) == (34, 44, "yuv420p")


def test_a_max_size_above_an_odd_clip_still_gives_even_sides(tmp_path: Path, model_file: Path) -> None:
    """--max-size larger than a 33x33 clip leaves its size, but a size was asked for: 32x32 in 4:2:0; with
    no size asked for, the clip's own odd sides are kept (in 4:4:4)."""
    av = pytest.importorskip("av")
    clip = tmp_path / "odd.mp4"
    with av.open(str(clip), "w") as container:
        video = container.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 33, 33, "yuv444p"
        write_frames(av, container, video, 2, 33)
    for options, expected in ((["--max-size", "200"], (32, 32, "yuv420p")), ([], (33, 33, "yuv444p"))):
        out = tmp_path / f"out{len(options)}.mp4"
        assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out), *options]) == 0
        with av.open(str(out)) as container:
            stream = container.streams.video[0]
            assert (stream.height, stream.width, stream.codec_context.pix_fmt) == expected


def test_a_folders_videos_are_named_in_a_note_not_passed_over_in_silence(tmp_path: Path, model_file: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "mixed [take 1]"  # the glob said for it matches: its brackets escaped
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(make_scene(32)).save(folder / "photo.png")
    for name in ("a.mp4", "sub/b.MOV", "._a.mp4", ".a.1f2e.tmp.mp4"):  # (hidden files are not counted)
        (folder / name).write_bytes(b"never decoded")
    assert stylize_main([str(folder), "-m", str(model_file), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"note: folder {str(folder)!r} holds 2 video(s), which a folder does not stylize" in err, err
    # the globs that name them (a phone's .MOV matched no '*.mp4')
    globs = [str(tmp_path / "mixed [[]take 1]" / "**" / f"*{suffix}") for suffix in (".MOV", ".mp4")]
    assert f"('{globs[0]}' '{globs[1]}')" in err, err  # quoted for a shell (repr doubled a backslash)
    assert stylize_main([globs[1], "-m", str(model_file), "-o", str(tmp_path / "videos")]) == 1  # found, undecodable
    err = capsys.readouterr().err
    assert "no files match" not in err and str(folder / "a.mp4") in err, err
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["photo_tiny.png"]
    # so are a phone's HEIC photos and other formats not read here (they were passed over in silence)
    for name in ("IMG_0001.HEIC", "sub/c.avif"):
        (folder / name).write_bytes(b"never decoded")
    assert stylize_main([str(folder), "-m", str(model_file), "-o", str(tmp_path / "out2")]) == 0
    assert (f"note: folder {str(folder)!r} holds 2 photo(s) in a format not read here (.avif, .heic): convert them "
            "to JPEG or PNG") in capsys.readouterr().err


@pytest.mark.parametrize("bframes", [2, 0])
def test_an_avis_frames_are_timed_by_their_slots(tmp_path: Path, model_file: Path, bframes: int) -> None:
    """AVI has no presentation times: FFmpeg's guesses for B-frames come out shuffled. The frames keep their
    chunks' slots at the constant rate, an empty slot included (a frame given a time two slots after the
    last: the muxer leaves the slots between empty), and a dropped frame does not make the clip count as
    truncated."""
    av = pytest.importorskip("av")
    clip = tmp_path / "old.avi"
    stamps = list(range(8)) if bframes else [0, *range(2, 9)]
    with av.open(str(clip), "w") as container:
        video = h264(container, 32, bf=str(bframes))
        for index, stamp in enumerate(stamps):
            frame = av.VideoFrame.from_ndarray(make_scene(32, index), format="rgb24")
            frame.pts = stamp
            container.mux(video.encode(frame))
        container.mux(video.encode())
    with av.open(str(clip)) as container:  # the chunks that hold a picture, by slot
        slots = [packet.dts for packet in container.demux(video=0) if packet.size]
    assert slots == list(range(8)) if bframes else slots[:2] == [0, 2]
    out = tmp_path / "old.mkv"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out)]) == 0
    with av.open(str(out)) as container:
        times = [round(float(frame.time) * 24) for frame in container.decode(video=0)]
    assert times == slots


def test_an_avi_whose_time_base_is_finer_than_its_frames_is_whole(tmp_path: Path, model_file: Path) -> None:
    """An AVI of 24 frames/s in a 1 ms time base: its header counts 1 ms slots (the 16 frames span 667),
    and each picture holds about 42 of them. Complete, it was called truncated ("16 of 667 frames", exit
    1): the last picture's slots after its own were never counted."""
    av = pytest.importorskip("av")
    clip = tmp_path / "fine.avi"
    with av.open(str(clip), "w") as container:
        video = container.add_stream("mpeg4", rate=24)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        for index in range(16):
            frame = av.VideoFrame.from_ndarray(make_scene(32, index), format="rgb24")
            frame.pts, frame.time_base = index * 1000 // 24, Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode())
    with av.open(str(clip)) as container:
        assert container.streams.video[0].frames == 667
    out = tmp_path / "fine.mkv"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out)]) == 0
    assert len(read_clip(out)["frames"]) == 16
    # at one slot a frame, a frame dropped before a cut does not make the last picture's slots cover the cut
    for stamps, read in (([*range(8), 9, 10], 9), ([0, 2, 3], 2), ([0, *range(2, 16, 2), 15], 8)):
        dropped = tmp_path / "dropped.avi"
        with av.open(str(dropped), "w") as container:
            video = container.add_stream("mpeg4", rate=24)
            video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
            for index, stamp in enumerate(stamps):  # the slots between left empty: dropped frames
                frame = av.VideoFrame.from_ndarray(make_scene(32, index), format="rgb24")
                frame.pts = stamp
                container.mux(video.encode(frame))
            container.mux(video.encode())
        with av.open(str(dropped)) as container:
            last = next(packet.pos for packet in container.demux(video=0) if packet.dts == stamps[-1])
        (cut := tmp_path / "cut.avi").write_bytes(dropped.read_bytes()[:last])  # the last picture lost
        with pytest.raises(StylenetError, match=rf"cut.avi' is truncated or corrupt: it ended after {read} of "
                                                rf"{stamps[-1] + 1} frames"):
            list(iter_video_frames(cut))


def test_the_main_video_stream_is_stylised_not_merely_the_first(tmp_path: Path, model_file: Path) -> None:
    """A small one-frame stream (a thumbnail) ahead of the real one: FFmpeg's choice of stream, as players'."""
    av = pytest.importorskip("av")
    clip = tmp_path / "two.mkv"
    with av.open(str(clip), "w") as container:
        thumbnail = h264(container, 16)
        main = h264(container, 48)
        write_frames(av, container, thumbnail, 1, 16)
        write_frames(av, container, main, 6, 48)
    out = tmp_path / "two_styled.mkv"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out)]) == 0
    frames = read_clip(out)["frames"]
    assert len(frames) == 6 and frames[0].shape == (48, 48, 3)


def test_a_video_stream_no_decoder_knows_is_passed_over_or_named_in_one_line(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A track whose codec this FFmpeg has no decoder for (no codec context in PyAV) was an AttributeError:
    where another video stream decodes, that one is stylised; where none does, one line names the file."""
    av = pytest.importorskip("av")
    clip = tmp_path / "two.mkv"
    with av.open(str(clip), "w") as container:
        first, main = h264(container, 16), h264(container, 48)
        write_frames(av, container, first, 3, 16)
        write_frames(av, container, main, 6, 48)
    data = clip.read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 2
    at = data.rindex(b"V_MPEG4/ISO/AVC")  # the main stream's codec id, made one none knows
    (tmp_path / "main_unknown.mkv").write_bytes(data[:at] + b"V_QQQQQ/ISO/AVC" + data[at + 15:])
    out = tmp_path / "styled.mkv"
    assert stylize_main([str(tmp_path / "main_unknown.mkv"), "-m", str(model_file), "-o", str(out)]) == 0
    frames = read_clip(out)["frames"]
    assert len(frames) == 3 and frames[0].shape == (16, 16, 3)
    (tmp_path / "unknown.mkv").write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/AVC"))
    capsys.readouterr()
    assert stylize_main([str(tmp_path / "unknown.mkv"), "-m", str(model_file), "-o", str(tmp_path / "no.mkv")]) == 1
    err = capsys.readouterr().err
    assert "unknown.mkv': none of its video streams (#0, #1) is in a codec this FFmpeg can decode" in err
    assert "Traceback" not in err and not (tmp_path / "no.mkv").exists()


def test_a_clip_cut_before_its_first_key_frame_is_not_taken_for_a_truncated_one(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A clip cut (without re-encoding) a few frames before a key frame: the decoder drops those frames, as
    FFmpeg's tools do. They counted as a break at the end: "truncated after 20 of 26 frames", exit 1, and a
    second run refused to replace the output. Now the frames after the key frame are the clip, with a note."""
    av = pytest.importorskip("av")
    with av.open(str(whole := tmp_path / "whole.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt, stream.options = 64, 48, "yuv420p", {"g": "10", "bf": "2"}
        for k in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * k, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(whole)) as source, av.open(str(cut := tmp_path / "cut.mp4"), "w") as target:
        kept = target.add_stream_from_template(source.streams.video[0])
        for number, packet in enumerate(p for p in source.demux(source.streams.video[0]) if p.dts is not None):
            if number >= 4:  # from a P or B frame on, before the key frame at 10
                packet.stream = kept
                target.mux(packet)
    decodable = sum(1 for _ in av.open(str(cut)).decode(video=0))
    assert 0 < decodable < 26
    for _ in range(2):  # and again: the earlier output is replaced, as any finished output is
        assert stylize_main([str(cut), "-m", str(model_file), "-o", str(tmp_path / "out.mp4")]) == 0
        err = capsys.readouterr().err
        assert "error" not in err and f"cut.mp4: {26 - decodable} frame(s) before its first key frame cannot be " \
            "decoded" in err, err
    assert len(read_clip(tmp_path / "out.mp4")["frames"]) == decodable


def test_a_complete_variable_rate_matroska_is_not_taken_for_a_truncated_one(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture) -> None:
    """Matroska has no frame count: the one from its duration assumes a constant rate. Frames with gaps
    between them (a variable rate) that reach the end are the whole clip, also when the last frame is
    held for 3 s (its packet's duration)."""
    av = pytest.importorskip("av")
    clip = tmp_path / "vfr.mkv"
    stamps = [*range(8), 30, 31, 60, 61]
    with av.open(str(clip), "w") as container:
        video = h264(container, 32, bf="0")
        video.codec_context.time_base = Fraction(1, 24)
        packets = []
        for stamp in stamps:
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 4 * stamp, np.uint8), format="rgb24")
            frame.pts, frame.time_base = stamp, Fraction(1, 24)
            packets += video.encode(frame)
        packets += video.encode()
        packets[-1].duration = 72  # 3 s at 1/24
        container.mux(packets)
    assert video_io.probe_video(clip).expected_frames == 61 + 72  # the duration's count, at 24 frames/s
    out = tmp_path / "vfr_styled.mkv"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out)]) == 0, capsys.readouterr().err
    assert len(read_clip(out)["frames"]) == len(stamps)
    assert len(list(iter_video_frames(clip))) == len(stamps)


def test_memory_stays_bounded_on_a_long_clip(tmp_path: Path) -> None:
    """The frames alive between decoder and encoder stay within the queues' bounds however long the
    clip (a reader that ran ahead unbounded would hold most of its 300 frames)."""
    from stylenet.inference import InferenceModel
    from stylenet.video import stylize_video

    clip = make_clip(tmp_path / "long.mkv", frames=300, size=(16, 24), audio=False, rotation=0)
    torch.manual_seed(0)
    model = InferenceModel(TransformerNet(channels=8, residual_blocks=1), device="cpu", precision="fp32")
    result = stylize_video(clip, tmp_path / "long_styled.mkv", model, depth=3)
    assert result.frames == result.decoded == 300 and len(read_clip(tmp_path / "long_styled.mkv")["frames"]) == 300
    assert result.max_in_flight <= 2 * 3 + 2


def test_the_python_api_takes_the_style_of_a_several_style_model_and_checks_the_size(tmp_path: Path) -> None:
    """stylize_video(..., style=) as load_model(...).stylize(..., style=): a model of several styles
    needs one (the error says so), and a size of no pixels is refused before any work."""
    from tests.test_multistyle import multi_file

    clip = make_clip(tmp_path / "clip.mkv", frames=3, size=(16, 24), audio=False, rotation=0)
    model = load_model(multi_file(tmp_path / "multi.safetensors"), device="cpu", precision="fp32")
    with pytest.raises(StylenetError, match="holds 3 styles: pass style="):
        stylize_video(clip, tmp_path / "none.mkv", model)
    for size in [(0, 10), (2.5, 3), (True, 40), 30]:  # (True, 40) wrote a clip one pixel high, 30 was a TypeError
        with pytest.raises(StylenetError, match=r"size must be \(height, width\) in whole pixels >= 1, got " +
                           re.escape(str(size))):
            stylize_video(clip, tmp_path / "none.mkv", model, style="b", size=size)
    path = str(tmp_path / "multi.safetensors")  # a file name was an AttributeError traceback, depth 0 a ValueError
    for wrong, message in (({"model": path}, f"model must be a loaded model (stylenet.load_model(path)), got {path!r}"),
                           ({"model": model, "depth": 0}, "depth must be a whole number of frames >= 1, got 0")):
        with pytest.raises(StylenetError, match=f"^{re.escape(message)}$"):
            stylize_video(clip, tmp_path / "none.mkv", style="b", **wrong)
    still = tmp_path / "still.png"  # FFmpeg reads a photo as a clip of one frame: written, exit 0
    Image.new("RGB", (24, 16)).save(still)
    with pytest.raises(StylenetError, match=f"^{re.escape(repr(str(still)))} is a picture, not a video: stylize it "):
        stylize_video(still, tmp_path / "none.mkv", model, style="b")
    huge = tmp_path / "huge.png"  # beyond Pillow's bound (its header only): a picture still, not a clip to stylize
    huge.write_bytes(png_with_header_size(20000, 20000))
    with pytest.raises(StylenetError, match=f"^{re.escape(repr(str(huge)))} is a picture, not a video"):
        stylize_video(huge, tmp_path / "none.mkv", model, style="b")
    animated = tmp_path / "animated.gif"  # a picture of several frames is a clip
    frames = [Image.new("RGB", (24, 16), (40 * i, 90, 200 - 40 * i)) for i in range(3)]
    frames[0].save(animated, save_all=True, append_images=frames[1:], duration=100)
    assert stylize_video(animated, tmp_path / "gif.mkv", model, style="b").frames == 3
    assert not list(tmp_path.glob("none*"))
    result = stylize_video(clip, tmp_path / "b.mkv", model, style="b")
    first = read_clip(tmp_path / "b.mkv")["frames"][0].astype(int)
    source = Image.fromarray(read_clip(clip)["frames"][0])
    distance = {style: np.abs(first - np.asarray(model.stylize(source, style=style)).astype(int)).mean()
                for style in "abc"}  # H.264 at 24 x 16 px loses much: the nearest style, not equality
    assert result.frames == 3 and min(distance, key=distance.get) == "b", distance


def test_prefetch_runs_at_most_depth_ahead_and_hands_on_errors() -> None:
    produced = []

    def source():
        for index in range(50):
            produced.append(index)
            yield index
        raise ValueError("broken at 50")

    prefetch = Prefetch(source(), depth=4)
    seen = []
    with pytest.raises(ValueError, match="broken at 50"):
        for item in prefetch:
            time.sleep(0.001)
            seen.append(item)
            assert len(produced) - len(seen) <= 4 + 1  # the queue plus the item in the producer's hand
    assert seen == list(range(50)) and prefetch.high_water <= 4
    stopped = Prefetch(iter(range(10**9)), depth=2)
    next(stopped)
    stopped.close()
    assert not any(thread.name == "stylenet-prefetch" for thread in threading.enumerate())


def test_sink_consumes_in_order_and_raises_the_consumers_error() -> None:
    got = []
    sink = Sink(got.append, depth=2)
    for item in range(20):
        sink.put(item)
    sink.close()
    assert got == list(range(20))

    def fail(item: int) -> None:
        raise OSError("disk full")

    broken = Sink(fail, depth=2)
    with pytest.raises(OSError, match="disk full"):
        for item in range(100):
            broken.put(item)
        broken.close()


def test_truncated_clips_give_one_line_and_a_valid_shorter_file_or_nothing(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture) -> None:
    whole = make_clip(tmp_path / "whole.mkv", frames=30).read_bytes()
    (tmp_path / "cut.mkv").write_bytes(whole[: len(whole) * 6 // 10])  # Matroska streams: frames up to the cut
    mp4 = make_clip(tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(mp4[: len(mp4) * 6 // 10])  # its index is at the end: nothing to read
    out = tmp_path / "out"
    assert stylize_main([str(tmp_path / "cut.mkv"), str(tmp_path / "cut.mp4"), "-m", str(model_file),
                         "-o", str(out) + "/"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "'" + str(tmp_path / "cut.mkv") + "' is truncated or corrupt" in errors[0]
    assert str(tmp_path / "cut.mp4") in errors[1] and "not a readable video" in errors[1]
    assert sorted(path.name for path in out.iterdir()) == ["cut_tiny.mkv"]  # no temporary files either
    shorter = read_clip(out / "cut_tiny.mkv")
    assert 5 <= len(shorter["frames"]) < 30 and shorter["rotation"] == 90
    with pytest.raises(StylenetError, match=r"cut.mkv' is truncated or corrupt: it ended after \d+ of 30 frames"):
        list(iter_video_frames(tmp_path / "cut.mkv"))  # stylenet-stability --video reads clips with it


def test_a_truncated_clip_leaves_an_earlier_output_as_it_was(tmp_path: Path, model_file: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """A failed run replaces no finished file: the shorter video is written only where there was none."""
    whole = make_clip(tmp_path / "whole.mkv", frames=30).read_bytes()
    (tmp_path / "cut.mkv").write_bytes(whole[: len(whole) * 6 // 10])
    earlier = tmp_path / "styled.mkv"
    earlier.write_bytes(b"an earlier run's video")
    assert stylize_main([str(tmp_path / "cut.mkv"), "-m", str(model_file), "-o", str(earlier)]) == 1
    err = capsys.readouterr().err
    assert "is truncated or corrupt" in err and f"{str(earlier)!r} exists already and is left as it was" in err
    assert earlier.read_bytes() == b"an earlier run's video" and not list(tmp_path.glob(".*"))


def test_a_matroska_cut_in_its_audio_near_the_end_is_called_truncated(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture) -> None:
    """A Matroska file's frame count is estimated from its duration, which forgives a frame: a cut that
    loses audio (here all of it is muxed after the video) and at most one frame was taken for a whole
    file. Each stream must reach where the header says it ends, and the file the size of its Segment."""
    av = pytest.importorskip("av")

    def write(path: Path, tags: dict[str, str]) -> Path:
        with av.open(str(path), "w") as container:
            video = h264(container, 32)  # (B-frames: x264's default)
            video.metadata.update(tags)
            audio = container.add_stream("pcm_s16le", rate=8000, layout="mono")
            write_frames(av, container, video, 12, 32)
            for start in range(0, 4000, 100):  # 0.5 s in 40 packets
                tone = (np.sin(np.arange(start, start + 100) / 5) * 9000).astype(np.int16)[None]
                frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
                frame.sample_rate, frame.pts = 8000, start
                container.mux(audio.encode(frame))
            container.mux(audio.encode(None))
        return path

    whole = write(tmp_path / "whole.mkv", {})
    # a clip cut by FFmpeg from a longer mkvmerge file keeps that file's DURATION-eng beside its own DURATION
    stale = write(tmp_path / "stale.mkv", {"DURATION-eng": "00:23:40.003000000"})
    assert len(list(iter_video_frames(stale))) == 12
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 9 // 10])
    assert len(list(iter_video_frames(whole))) == 12  # the whole file is whole
    out = tmp_path / "out.mkv"
    assert stylize_main([str(cut), "-m", str(model_file), "-o", str(out)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{str(cut)!r} is truncated or corrupt: its audio stream #1 ended at" in line, line
    assert 11 <= len(read_clip(out)["frames"]) <= 12  # the frames before the break, a valid file
    cut.write_bytes(data[:-1])  # one byte: what is lost shows in no stream's time, but in the Segment's size
    with pytest.raises(StylenetError, match=r"cut.mkv' is truncated or corrupt: it breaks off 1 bytes before"):
        list(iter_video_frames(cut))


def remux(source: Path, target: Path, change: Any = None, extra_audio: str | None = None) -> Path:
    """``source``'s packets into ``target``, each passed through ``change(packet, audio_count)`` (the count
    of audio packets so far); ``extra_audio``: one more audio stream of that codec, a second of silence."""
    av = pytest.importorskip("av")
    with av.open(str(source)) as reader, av.open(str(target), "w") as writer:
        streams = {stream.index: writer.add_stream_from_template(stream) for stream in reader.streams}
        extra = writer.add_stream(extra_audio, rate=8000, layout="mono") if extra_audio else None
        audio = 0
        for packet in reader.demux():
            if packet.dts is None:
                continue
            audio += packet.stream.type == "audio"
            if change is not None:
                change(packet, audio)
            packet.stream = streams[packet.stream_index]
            writer.mux(packet)
        if extra is not None:
            silence = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
            silence.sample_rate, silence.pts = 8000, 0
            writer.mux(extra.encode(silence))
            writer.mux(extra.encode(None))
    return target


def test_an_audio_stream_of_a_codec_ffmpeg_does_not_know_is_left_out_with_a_note(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture) -> None:
    """A track no decoder of this FFmpeg knows (a new phone's extra audio, say) has no codec to copy it as:
    the video and the other audio are written, and a note names what was left out."""
    clip = make_clip(tmp_path / "clip.mp4", frames=6)
    both = remux(clip, tmp_path / "both.mkv", extra_audio="pcm_s16le")
    data = both.read_bytes()
    assert data.count(b"A_PCM/INT/LIT") == 1
    (tmp_path / "unknown.mkv").write_bytes(data.replace(b"A_PCM/INT/LIT", b"A_QQQ/INT/LIT"))  # a codec id none knows
    out = tmp_path / "styled.mp4"
    assert stylize_main([str(tmp_path / "unknown.mkv"), "-m", str(model_file), "-o", str(out)]) == 0
    assert "note: unknown.mkv: left out audio stream #2" in capsys.readouterr().err
    styled, source = read_clip(out), read_clip(clip)
    assert len(styled["frames"]) == 6 and styled["audio"] == source["audio"]


def test_audio_no_written_format_can_hold_is_left_out_with_a_note(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture) -> None:
    """Windows Media audio (WMA) fits none of .mkv, .mov, .mp4 and .webm: a .wmv clip was refused into
    every one of them ("choose .mkv", also when the output was .mkv). Its video is stylized, the audio
    left out with a note; audio that another format holds is still refused, naming that format."""
    av = pytest.importorskip("av")
    clip = tmp_path / "win.wmv"
    with av.open(str(clip), "w", format="asf") as container:
        video = container.add_stream("wmv2", rate=24)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = container.add_stream("wmav2", rate=22050)
        audio.layout, audio.codec_context.bit_rate = "mono", 64000
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 22050 // 4), np.float32), format="fltp", layout="mono")
        sound.sample_rate, sound.pts = 22050, 0
        container.mux(audio.encode(sound))
        container.mux(audio.encode())
        write_frames(av, container, video, 6, 32)
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(tmp_path / "out") + "/"]) == 0
    assert ("note: win.wmv: left out audio stream #1 (wmav2): none of .mkv, .mov, .mp4, .webm can hold it "
            "untouched") in capsys.readouterr().err
    styled = read_clip(tmp_path / "out" / "win_tiny.mkv")
    assert len(styled["frames"]) == 6 and not styled["audio"]
    aac = make_clip(tmp_path / "clip.mp4", frames=2)
    assert stylize_main([str(aac), "-m", str(model_file), "-o", str(tmp_path / "clip.webm")]) == 1
    err = capsys.readouterr().err
    assert "cannot hold the aac audio of " in err and "choose .mkv or .mov or .mp4, which can" in err


def test_an_audio_time_that_goes_back_is_moved_on_as_ffmpeg_moves_it(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture) -> None:
    """An MP4 muxer refuses a packet whose time does not increase: at the very end, once every frame was
    stylized. It is moved on by a tick, as ffmpeg does, and said in a note."""
    clip = make_clip(tmp_path / "clip.mp4", frames=24)
    previous: dict[str, int] = {}

    def repeat_a_time(packet: Any, audio: int) -> None:
        if packet.stream.type != "audio":
            return
        if audio == 10:
            packet.pts, packet.dts = previous["pts"], previous["dts"]
        previous.update(pts=packet.pts, dts=packet.dts)

    odd = remux(clip, tmp_path / "odd.mkv", repeat_a_time)
    out = tmp_path / "styled.mp4"
    assert stylize_main([str(odd), "-m", str(model_file), "-o", str(out)]) == 0, capsys.readouterr().err
    assert "note: odd.mkv: 1 audio packet(s) whose time went back were moved on by a tick" in capsys.readouterr().err
    styled = read_clip(out)
    assert len(styled["frames"]) == 24 and styled["audio"] == read_clip(clip)["audio"]


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_audio_packets_without_durations_are_all_kept_in_an_mp4(tmp_path: Path, model_file: Path,
                                                                 suffix: str) -> None:
    """Matroska leaves an ALAC track's packet durations out (0 when read); MP4 and MOV end a track where its
    last packet ends, so its last 4096 samples were cut off. Each packet is timed by the next, the last as
    long as the one before it."""
    av = pytest.importorskip("av")
    clip = tmp_path / "alac.mkv"
    with av.open(str(clip), "w") as container:
        video, audio = h264(container, 32), container.add_stream("alac", rate=48000)
        audio.layout, audio.format = "mono", "s16p"
        for start in range(0, 6 * 4096, 4096):
            tone = (np.sin(np.arange(start, start + 4096) / 10) * 8000).astype(np.int16)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="s16p", layout="mono")
            frame.sample_rate, frame.pts = 48000, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
        write_frames(av, container, video, 12, 32)

    def packets(path: Path) -> list[Any]:
        with av.open(str(path)) as container:
            return [(bytes(packet), packet.duration) for packet in container.demux(audio=0) if packet.size]

    def samples(path: Path) -> int:
        with av.open(str(path)) as container:
            return sum(frame.samples for frame in container.decode(audio=0))

    assert [duration for _, duration in packets(clip)] == [0] * 6 and samples(clip) == 6 * 4096
    out = tmp_path / f"styled{suffix}"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out)]) == 0
    assert [data for data, _ in packets(out)] == [data for data, _ in packets(clip)]
    assert samples(out) == 6 * 4096


def test_frames_closer_than_the_output_s_time_step_keep_times_of_their_own(tmp_path: Path,
                                                                         model_file: Path) -> None:
    """Two frames 0.33 ms apart in an MP4 (1/90000 s steps) would share one millisecond in Matroska, where a
    player drops one of them: the second is moved on to the next millisecond, and every frame is kept."""
    av = pytest.importorskip("av")
    clip = tmp_path / "close.mp4"
    with av.open(str(clip), "w") as container:
        video = h264(container, 32)
        video.codec_context.time_base = Fraction(1, 90000)
        for index, pts in enumerate([0, 30, 3000, 6000, 6030, 9000, 12000, 15000]):
            frame = av.VideoFrame.from_ndarray(make_scene(32, shift=index), format="rgb24")
            frame.pts = pts
            container.mux(video.encode(frame))
        container.mux(video.encode())
    out = tmp_path / "close.mkv"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out)]) == 0
    with av.open(str(out)) as container:
        times = [frame.pts for frame in container.decode(video=0)]
    assert len(times) == 8 and times == sorted(set(times)), times  # each its own, in order


def test_max_pixels_holds_a_clips_frames_as_a_photos(tmp_path: Path, model_file: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """--max-pixels was passed over in silence for a clip: a frame above it is refused, one line, nothing written."""
    clip = make_clip(tmp_path / "clip.mp4", frames=2)
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(tmp_path / "a.mp4"), "--max-pixels", "100"]) == 1
    width, height = video_io.probe_video(clip).width, video_io.probe_video(clip).height
    assert (f"its frames of {width}x{height} = {width * height} pixels exceed --max-pixels 100"
            in capsys.readouterr().err) and not (tmp_path / "a.mp4").exists()
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(tmp_path / "b.mp4"),
                         "--max-pixels", str(width * height)]) == 0


def test_a_matroska_whose_video_starts_late_is_whole(tmp_path: Path, model_file: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """Matroska's DURATION tag is where a stream ends, not how long it is: a clip whose first frame is at
    0.5 s (as stylenet's own .mkv of a camcorder's .mts, which keeps its start) is whole, not "ended
    after 24 of 36 frames"."""
    av = pytest.importorskip("av")
    clip = tmp_path / "late.mkv"
    with av.open(str(clip), "w") as container:
        video = h264(container, 32)
        video.codec_context.time_base = Fraction(1, 24)
        for index in range(24):
            frame = av.VideoFrame.from_ndarray(make_scene(32, shift=index), format="rgb24")
            frame.pts, frame.time_base = 12 + index, Fraction(1, 24)
            container.mux(video.encode(frame))
        container.mux(video.encode())
    assert video_io.probe_video(clip).expected_frames == 24
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(tmp_path / "out.mkv")]) == 0, capsys.readouterr()
    assert len(read_clip(tmp_path / "out.mkv")["frames"]) == 24


def test_a_transport_stream_is_read_and_its_output_is_matroska(tmp_path: Path, model_file: Path) -> None:
    """A camcorder's AVCHD ``.mts`` (MPEG transport stream) is a video, not an image of an unknown format."""
    av = pytest.importorskip("av")
    clip = tmp_path / "00001.MTS"
    with av.open(str(clip), "w", format="mpegts") as container:
        write_frames(av, container, h264(container, 32), 6, 32)
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(tmp_path / "out") + "/"]) == 0
    assert len(read_clip(tmp_path / "out" / "00001_tiny.mkv")["frames"]) == 6


def test_names_that_ffmpeg_would_read_as_urls_are_files(tmp_path: Path, model_file: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``take:1.mp4`` is a file here, not a URL of a protocol ``take``, going in and coming out."""
    monkeypatch.chdir(tmp_path)
    make_clip(Path("take:1.mp4"), frames=4)
    assert stylize_main(["take:1.mp4", "-m", str(model_file), "-o", "v:2.mp4"]) == 0
    assert len(read_clip(tmp_path / "v:2.mp4")["frames"]) == 4


@pytest.mark.parametrize("index", [24, 46])
def test_a_damaged_packet_is_skipped_and_the_rest_written(tmp_path: Path, model_file: Path,
                                                         capsys: pytest.CaptureFixture, index: int) -> None:
    """As FFmpeg's own tools do: the decoder refuses one packet (midway, or the third-last, whose error
    a frame-threaded decoder reports only at the final flush), the other frames and every audio packet
    are still written, and the line names the input and what was skipped (exit 1)."""
    av = pytest.importorskip("av")
    clip = make_clip(tmp_path / "clip.mp4", frames=48)
    with av.open(str(clip)) as container:
        packets = [(packet.pos, packet.size) for packet in container.demux(video=0) if packet.size]
    data = bytearray(clip.read_bytes())
    position, size = packets[index]
    data[position:position + size] = b"\xff" * size  # one frame's bytes overwritten, in the middle
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    out = tmp_path / "out.mp4"
    assert stylize_main([str(damaged), "-m", str(model_file), "-o", str(out)]) == 1
    printed = capsys.readouterr()
    (line,) = printed.err.strip().splitlines()
    assert "0 done, 1 failed, " in printed.out and "no pixels processed" not in printed.out  # 47 frames' pixels
    assert f"'{damaged}' is corrupt: 1 damaged video packet(s) skipped (" in line and "wrote 47 frames" in line
    written, source = read_clip(out), read_clip(clip)
    assert len(written["frames"]) == 47 and written["audio"] == source["audio"] and written["rotation"] == 90
    with pytest.raises(StylenetError, match=r"damaged.mp4' is truncated or corrupt: 1 damaged video packet"):
        list(iter_video_frames(damaged))


def test_a_damaged_first_key_frame_is_skipped_like_any_other_packet(tmp_path: Path, model_file: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """The first frame is read to probe the clip (its size, rotation, colour tags): a first key frame the
    decoder refuses is passed over there too, and the clip is written from the next key frame on. The
    frames that depend on the damaged one are lost with it: the clip did not end early."""
    av = pytest.importorskip("av")
    clip = tmp_path / "keys.mp4"
    with av.open(str(clip), "w") as container:
        write_frames(av, container, h264(container, 32, g="5"), 20, 32)  # a key frame every 5 frames
    with av.open(str(clip)) as container:
        position, size = next((packet.pos, packet.size) for packet in container.demux(video=0) if packet.size)
    data = bytearray(clip.read_bytes())
    data[position:position + size] = b"\xff" * size
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    with av.open(str(damaged)) as container:  # what FFmpeg itself decodes of it
        decodable = 0
        for packet in container.demux(video=0):
            with contextlib.suppress(av.InvalidDataError):
                decodable += len(packet.decode())
    assert 10 <= decodable < 20
    out = tmp_path / "out.mp4"
    assert stylize_main([str(damaged), "-m", str(model_file), "-o", str(out)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"'{damaged}' is corrupt: 1 damaged video packet(s) skipped (" in line, line
    assert f"wrote {decodable} frames" in line and len(read_clip(out)["frames"]) == decodable


def test_a_clip_with_damage_that_starts_late_and_breaks_off_is_still_called_short() -> None:
    """With damaged packets, a clip is whole when its last frame ends where its count says, counted from
    the stream's start (a clip may start at 1 s): one cut short is still reported."""
    info = video_io.VideoInfo(width=8, height=8, rate=Fraction(24), time_base=Fraction(1, 24), expected_frames=48,
                              exact_count=True, display_matrix=None, rotation=0, color_range=0, colorspace=2,
                              start=1.0)
    cut = video_io.VideoResult(decoded=26, damaged=1, last_time=1.0 + 27 / 24)
    assert video_io.shortfall(info, cut) == "it ended after 26 of 48 frames"
    whole = video_io.VideoResult(decoded=43, damaged=1, last_time=1.0 + 48 / 24)  # 4 frames lost with the damage
    assert video_io.shortfall(info, whole) is None


def test_an_mp4_trimmed_without_reencoding_is_whole(tmp_path: Path, model_file: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """``ffmpeg -ss .. -c copy`` keeps the frames before the cut and an edit list that discards them:
    the header counts them, the player does not show them, and neither is this a truncated clip."""
    av = pytest.importorskip("av")
    clip = tmp_path / "trimmed.mp4"
    with av.open(str(clip), "w") as container:
        video = container.add_stream("libx264", rate=24, options={"bf": "0"})
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.time_base = Fraction(1, 24)
        packets = []
        for index in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * index, np.uint8), format="rgb24")
            frame.pts, frame.time_base = index - 6, Fraction(1, 24)  # 6 frames before the cut point
            packets += video.encode(frame)
        container.mux([*packets, *video.encode()])
    assert video_io.probe_video(clip).expected_frames == 30
    assert len(list(iter_video_frames(clip))) == 24
    out = tmp_path / "out.mp4"
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(out)]) == 0, capsys.readouterr().err
    assert len(read_clip(out)["frames"]) == 24


def test_a_decoder_error_midway_keeps_the_frames_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FFmpeg failing mid-stream (a corrupt packet): the frames decoded before it are written as a
    valid video, and the error names the file and the cause."""
    from stylenet.inference import InferenceModel
    from stylenet.video import TruncatedVideoError, stylize_video

    clip = make_clip(tmp_path / "clip.mkv", frames=12)
    real = video_io.read_video

    def breaks_after_five(*args: object) -> object:
        frames = 0
        for item in real(*args):
            frames += isinstance(item, video_io._Frame)
            if frames > 5:
                raise video_io._InputError("Invalid data found when processing input")
            yield item

    monkeypatch.setattr(video_io, "read_video", breaks_after_five)
    model = InferenceModel(TransformerNet(channels=8, residual_blocks=1), device="cpu", precision="fp32")
    with pytest.raises(TruncatedVideoError, match=r"clip.mkv' is truncated or corrupt: Invalid data") as caught:
        stylize_video(clip, tmp_path / "out.mkv", model)
    assert caught.value.result.frames == 5 and len(read_clip(tmp_path / "out.mkv")["frames"]) == 5


def test_video_outputs_are_checked_before_any_work(tmp_path: Path, model_file: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    clip = tmp_path / "clip.MOV"
    clip.write_bytes(b"never decoded")
    assert is_video(clip) and not is_video(tmp_path / "photo.png") and ".webm" in VIDEO_SUFFIXES
    assert video_target(clip, tmp_path / "out" / "clip_tiny.png", in_folder=True).name == "clip_tiny.mov"
    assert video_target(clip, tmp_path / "out" / "clip-styled.png", in_folder=True).name == "clip-styled.mov"  # --name
    assert video_target(clip, tmp_path / "out" / "clip.webm", in_folder=True).name == "clip.webm"
    assert video_target(clip, tmp_path / "out" / "clip_tiny", in_folder=True).name == "clip_tiny.mov"
    for name in ("trip.day1-tiny", "clip_v1.5"):  # no image suffix to swap: a dotted name is not cut
        with pytest.raises(StylenetError, match=fr"{name}' for video .* needs a video extension \(.mp4, .m4v, .mov, "
                                                fr".mkv, .webm\)$"):  # not .avi, which is refused
            video_target(clip, tmp_path / "out" / name, in_folder=True)
        # unless the --name pattern gives no suffix itself ('{stem}_{style}' of trip.day1.mp4, a blend's a0.5+c0.5)
        assert video_target(clip, tmp_path / "out" / name, in_folder=True, named_suffix=False).name == f"{name}.mov"
    # AVI holds neither reordered frames nor exact timestamps nor a rotation: read, never written
    assert video_target(tmp_path / "old.AVI", tmp_path / "out" / "old_tiny.png", in_folder=True).name == "old_tiny.mkv"
    with pytest.raises(StylenetError, match=r"x.avi': .avi videos are read, not written .* name a .mkv"):
        video_target(clip, tmp_path / "x.avi", in_folder=False)
    with pytest.raises(StylenetError, match=r"x.mts': .mts videos are read, not written"):  # a camcorder's AVCHD
        video_target(clip, tmp_path / "x.mts", in_folder=False)
    (tmp_path / "taken.dat").write_bytes(b"a file")  # an output folder that is a file: before any work
    with pytest.raises(StylenetError, match=r"cannot write video .*x.mp4': '.*taken.dat' is a file, not a folder"):
        video_target(clip, tmp_path / "taken.dat" / "x.mp4", in_folder=False)
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(tmp_path / "x.png")]) == 1
    assert "needs a video extension" in capsys.readouterr().err
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(tmp_path / "y.mp4"), "--tile", "64"]) == 1
    assert "--tile does not apply to videos" in capsys.readouterr().err
    for option in (["--quality", "80"], ["--keep-gray"], ["--tile-overlap", "8"]):  # asked for, and not done: refused
        assert stylize_main([str(clip), "-m", str(model_file), "-o", str(tmp_path / "y.mp4"), *option]) == 1
        assert f"{option[0]} does not apply to videos" in capsys.readouterr().err
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(tmp_path / "z.mp4")]) == 1
    assert "not a readable video" in capsys.readouterr().err and not list(tmp_path.glob("*.mp4"))
    with pytest.raises(StylenetError, match="refusing to overwrite input"):  # the Python API
        stylize_video(clip, clip, load_model(model_file))
    assert clip.read_bytes() == b"never decoded"


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_full_disk_names_the_output_asked_for_and_leaves_nothing(tmp_path: Path, model_file: Path,
                                                                   suffix: str) -> None:
    """The muxer's refusal was replaced by a second error as the file was closed (its trailer, refused again),
    naming the hidden temporary file by FFmpeg's absolute path. A file size limit stands in for the disk."""
    make_clip(tmp_path / "clip.mp4", frames=48, size=(64, 64), audio=False, rotation=0)  # run as clip.mp4
    out = tmp_path / "out"
    out.mkdir()

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 10, 4 << 10))

    target = out / f"styled{suffix}"
    result = subprocess.run([*console_script("stylenet-stylize"), "clip.mp4", "-m", str(model_file), "-o",
                             str(target.relative_to(tmp_path))], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, preexec_fn=small_files)
    last = result.stderr.strip().splitlines()[-2:]
    assert result.returncode == 1 and last[0].startswith(
        f"stylenet-stylize: error: clip.mp4: cannot write {str(target.relative_to(tmp_path))!r}: ") and \
        last[0].endswith("(File too large)") and ".tmp." not in result.stderr, result.stderr[-2000:]
    assert not list(out.iterdir())


def test_sigterm_leaves_no_temporary_file_and_exits_143(tmp_path: Path, model_file: Path) -> None:
    """A scheduler's stop in the middle of a clip: handled as Ctrl-C is (the hidden temporary output is
    removed), one line, exit 143; SIGTERM's default would kill the process and leave the file."""
    clip = make_clip(tmp_path / "long.mp4", frames=3000, size=(32, 32), audio=False, rotation=0)
    out = tmp_path / "out"
    out.mkdir()
    command = [*console_script("stylenet-stylize"), str(clip), "-m", str(model_file), "-o", str(out / "styled.mp4")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob(".*.tmp.mp4")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # until the output is being written
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("stylenet-stylize: terminated; 0 done")
    assert not list(out.iterdir())


def test_without_pyav_the_error_names_the_extra(tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 100)
    assert stylize_main([str(clip), "-m", str(model_file), "-o", str(tmp_path / "out.mp4")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "pip install 'stylenet[video]'" in line and str(clip) in line


def test_progress_line_shows_frames_per_second() -> None:
    from stylenet.video import VideoInfo, VideoResult

    info = VideoInfo(64, 48, Fraction(24), Fraction(1, 24), 100, True, None, 0, 0, 2)
    line = progress_line("[1/1] a.mp4 -> b.mp4", VideoResult(frames=50, seconds=2.0, info=info))
    assert line == "[1/1] a.mp4 -> b.mp4 [##########----------] 50/100 frames, 25.0 frames/s"
    estimated = VideoResult(frames=5, seconds=1.0, info=dataclasses.replace(info, exact_count=False))
    assert progress_line("a", estimated) == "a [#-------------------] 5/~100 frames, 5.0 frames/s"
