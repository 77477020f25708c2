"""stylenet: fast neural style transfer (Johnson, Alahi & Fei-Fei, ECCV 2016).

Kept light on purpose: importing ``stylenet`` pulls in neither Lightning nor Hydra (nor even torch),
so the inference CLI and notebooks start fast.

    >>> import stylenet
    >>> model = stylenet.load_model("candy.safetensors")
    >>> model.stylize(Image.open("photo.jpg"), strength=0.8, preserve_color=True).save("out.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stylenet.inference import InferenceModel

__version__ = "0.1.0"


class StylenetError(Exception):
    """A user-facing error: ``str(err)`` is one line that names the offending file or setting."""


def load_model(path: str | Path, *, device: str = "auto", precision: str = "fp32",
               max_memory: int | None = None, task: str | None = "style") -> InferenceModel:
    """Load a style model file (safe: never runs code from the file) ready to ``.stylize(...)``.

    ``device``: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``mps``; ``precision``:
    ``fp32``, ``bf16`` or ``fp16``; ``max_memory``: bytes one forward pass may use before the image
    is tiled. See :class:`stylenet.inference.InferenceModel`.
    """
    from stylenet.inference import InferenceModel

    return InferenceModel.from_file(path, task=task, device=device, precision=precision,
                                    max_memory=max_memory)
