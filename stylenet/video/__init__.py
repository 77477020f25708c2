"""Video in, video out: a clip's frames streamed through a style network, decoded and encoded by PyAV.

Why PyAV (the ``video`` extra, ``pip install 'stylenet[video]'``): it is FFmpeg's maintained Python
binding, its wheels bundle FFmpeg with H.264 (libx264), VP9 and AAC/Opus, and it both decodes and
encodes and copies compressed packets, which keeps the audio untouched. torchvision's own video I/O
is being retired and torchcodec only decodes.

What is kept: the frame count and every frame's timestamp (so the frame rate, constant or
variable), the size (unless ``--max-size``/``--scale`` ask otherwise), the display matrix (rotation
and flips of phone videos), the colour range and BT.709 tags, and every audio stream's packets,
bit for bit. Subtitle and data streams are dropped. Frames are streamed in bounded queues
(:mod:`stylenet.video.pipeline`): memory does not grow with the clip's length. Nothing here imports
PyAV until a video is opened, so the package works without the extra.
"""

from __future__ import annotations

from stylenet.video.formats import VIDEO_SUFFIXES, is_video, video_target
from stylenet.video.io import TruncatedVideoError, VideoInfo, VideoResult, probe_video, stylize_video

__all__ = ["VIDEO_SUFFIXES", "TruncatedVideoError", "VideoInfo", "VideoResult", "is_video", "probe_video",
           "stylize_video", "video_target"]
