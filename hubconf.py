"""``torch.hub`` entry points for stylenet.

    model = torch.hub.load("path/to/stylenet", "style_model", path="candy.safetensors", source="local")
    stylized = model.stylize(Image.open("photo.jpg"))

Works offline with ``source="local"``; the model file is the user's, loaded without unpickling code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stylenet.inference.model import InferenceModel

dependencies = ["torch", "safetensors", "PIL", "numpy"]


def style_model(path: str, device: str = "auto", precision: str = "auto", max_memory: int | None = None,
                task: str | None = "style") -> InferenceModel:
    """A style model file (stylenet ``.safetensors``, ``stylenet-train`` ``.ckpt`` or pytorch/examples
    ``.pth``/``.model``) as a :class:`stylenet.inference.InferenceModel` with ``.stylize(...)``; the
    arguments are :func:`stylenet.load_model`'s (``task="sr"``: a super-resolution model)."""
    import stylenet

    return stylenet.load_model(path, device=device, precision=precision, max_memory=max_memory, task=task)
