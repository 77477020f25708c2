"""stylenet: fast neural style transfer (Johnson, Alahi & Fei-Fei, ECCV 2016).

Kept light on purpose: importing ``stylenet`` pulls in neither Lightning nor Hydra (nor even torch),
so the inference CLI and notebooks start fast. Neither importing it nor calling it changes anything
process-wide (see :func:`stylenet.fastpath.reuse_freed_memory`, which only the command-line tools
and the trainer switch on).

    >>> import stylenet
    >>> from PIL import Image
    >>> model = stylenet.load_model("candy.safetensors")
    >>> model.stylize(Image.open("photo.jpg"), strength=0.8, preserve_color=True).save("out.png")
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

from stylenet.errors import StylenetError
from stylenet.version import __version__

if TYPE_CHECKING:
    from stylenet.inference.model import InferenceModel

__all__ = ["StylenetError", "__version__", "load_model"]

#: submodules README's Python examples reach as attributes (``stylenet.video.stylize_video``), imported on first
#: use so that ``import stylenet`` stays light
LAZY_SUBMODULES = ("image", "inference", "video")


def __getattr__(name: str) -> object:
    if name in LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"stylenet.{name}")
    raise AttributeError(f"module 'stylenet' has no attribute {name!r}")


def load_model(path: str | Path, *, device: str = "auto", precision: str = "auto",
               max_memory: int | None = None, task: str | None = "style") -> InferenceModel:
    """Load a style model file (safe: never runs code from the file) ready to ``.stylize(...)`` a
    photo or ``.stylize_frames(...)`` a video.

    ``device``: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``mps``; ``precision``:
    ``auto`` (the default, as in ``stylenet-stylize``: bf16 where the device runs it natively, i.e.
    CPUs with AVX512-BF16 or AMX and CUDA GPUs with bf16, else fp32), ``fp32``, ``bf16`` or
    ``fp16``; ``max_memory``: bytes one forward pass may use before a larger image runs layer by
    layer (or in tiles); ``task``: ``"sr"`` for a super-resolution model (``.stylize`` then
    upscales), None for either. See :class:`stylenet.inference.InferenceModel`.
    """
    from stylenet.inference.model import InferenceModel
    from stylenet.modelfile import WrongTaskError

    if not isinstance(path, (str, PathLike)):  # None, 123: pathlib's TypeError deep down
        raise StylenetError(f"path must be a model file's path, got {path!r}")
    if task not in ("style", "sr", None):  # "bogus" read the file, then said it was no 'bogus' model
        raise StylenetError(f"task must be 'style', 'sr' or None, got {task!r}")
    try:
        return InferenceModel.from_file(path, task=task, device=device, precision=precision,
                                        max_memory=max_memory)
    except WrongTaskError as err:  # a super-resolution model, say: how to load it here
        raise StylenetError(f"{err}; load it with load_model(..., task={err.found!r})") from None
