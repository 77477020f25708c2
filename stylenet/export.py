"""Exports for other runtimes: ONNX models and ``torch.export`` programs (``.pt2``) that accept any
image size, written beside stylenet's own model files by the extension each output names.

Both exports accept any height and width from the network's ``min_size`` up (8 px for the style
network) and pad exactly as ``stylenet-stylize`` does (:class:`AnySizeNetwork`); both carry the
model file's metadata. Reading and writing stylenet's ``.safetensors`` files is
:mod:`stylenet.modelfile`'s.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stylenet.atomic import atomic_write, publish_together, unwritable
from stylenet.errors import StylenetError
from stylenet.inference.geometry import min_size, padded_forward, size_multiple
from stylenet.modelfile import FORMAT, StoredModel, header, read_model, save_model

#: Output extensions :func:`write_models` understands.
EXPORT_FORMATS = (".safetensors", ".onnx", ".pt2")
#: what torch.onnx's dynamo exporter imports (the ``export`` extra)
ONNX_PACKAGES = ("onnx", "onnxscript")


class AnySizeNetwork(nn.Module):
    """What the exports contain: ``net`` behind :func:`stylenet.inference.geometry.padded_forward`, so ONNX
    and ``.pt2`` programs accept any (B, 3, H, W) with H, W >= ``max(min_size, size_multiple)`` (8 for
    TransformerNet) and compute what ``stylenet-stylize`` and the notebook API compute.

    The padding is the Python path's, by construction (the same function): ``(-side) % multiple``
    pixels of reflection at the bottom/right, none when the side is already a multiple. It enters
    the InstanceNorm statistics, so any other amount (such as always 1..multiple pixels) would give
    other pixels on the same image. The output is cropped back to the input's size times ``scale``.

    A network of several styles (Dumoulin et al. 2017) takes a second input, ``style``: float blend
    weights of shape (N,), in the order of the model file's ``styles``, for the whole batch; one-hot
    picks one style (index k: 1 at k), several non-zero weights blend their norm parameters. The
    weights are normalised to sum to 1, as the Python API's and the CLI's blends are (7:3 is 0.7:0.3).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.min_side = max(min_size(net), size_multiple(net))

    def forward(self, image: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        height, width = image.shape[-2:]
        # Recorded as runtime checks; they also let torch.export prove that the padding takes its
        # reflection branch for every size, so no branch on the size enters the graph.
        torch._check(height >= self.min_side)
        torch._check(width >= self.min_side)
        # ``style``: blend weights >= 0 with a positive sum, unchecked here (a check on the values would be
        # a branch on data, which neither export keeps): the caller's, as stylenet.styles.choice_weights does
        return padded_forward(self.net, image, None if style is None else style / style.sum())


def export_inputs(net: nn.Module) -> dict[str, torch.Tensor]:
    """Example inputs of the exports, by name: ``image``, and ``style`` for a network of several styles."""
    inputs = {"image": torch.rand(2, 3, 64, 64)}  # batch 2: a size-1 example would be specialised to 1
    styles = getattr(net, "styles", 1)
    if styles > 1:
        inputs["style"] = torch.full((styles,), 1.0 / styles)
    return inputs


def export_program(net: nn.Module) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`AnySizeNetwork` with dynamic batch, height and width (fp32, CPU);
    a network of several styles takes its (N,) style weights as the second input."""
    wrapper = AnySizeNetwork(net).eval()
    dynamic = torch.export.Dim.DYNAMIC
    inputs = export_inputs(net)
    shapes = {"image": {0: dynamic, 2: dynamic, 3: dynamic}, **({"style": None} if "style" in inputs else {})}
    return torch.export.export(wrapper, tuple(inputs.values()), dynamic_shapes=shapes)


def check_export_path(path: str | Path) -> Path:
    """``path`` as a Path if :func:`write_models` can write its extension; a one-line error otherwise."""
    path = Path(path)
    if path.suffix.lower() not in EXPORT_FORMATS:
        raise StylenetError(f"cannot write {str(path)!r}: unknown extension {path.suffix or '(none)'!r} "
                            f"(use {', '.join(EXPORT_FORMATS)})")
    reason = unwritable(path)
    if reason is not None:
        raise StylenetError(f"cannot write {str(path)!r}: {reason}")
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None] if (
        path.suffix.lower() == ".onnx") else []
    if missing:
        raise StylenetError(f"cannot write {str(path)!r}: ONNX export needs {' and '.join(missing)}: "
                            "pip install 'stylenet[export]'")
    return path


def write_model(model: StoredModel, path: str | Path) -> Path:
    """Write ``model`` to one file; see :func:`write_models`."""
    return write_models(model, [path])[0]


def write_models(model: StoredModel, paths: list[str | Path]) -> list[Path]:
    """Write ``model`` to each path, atomically, in the format its extension names: a stylenet model
    file (``.safetensors``), an ONNX model (``.onnx``, the ``torch.onnx`` dynamo exporter, opset
    chosen by torch) or a ``torch.export`` program (``.pt2``). All extensions are checked before
    anything is written, and nothing is moved into place before every file is written (a failure
    leaves all outputs as they were); the network is traced once for all exports. The exports carry the
    metadata too (ONNX ``metadata_props`` key ``stylenet``; ``.pt2`` extra file ``stylenet.json``)."""
    paths = [check_export_path(path) for path in paths]
    net = model.net.eval().cpu().float()
    metadata = {key: value for key, value in model.metadata.items()
                if key not in ("format", "format_version", "stylenet_version", "network")}
    record = json.dumps(header(net, metadata))
    program = functools.cache(lambda: export_program(net))  # traced once, and only for .pt2 or .onnx

    def writer(path: Path) -> Callable[[Path], Any]:
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            return lambda tmp: save_model(tmp, net, metadata)
        if suffix == ".pt2":
            return lambda tmp: save_pt2(program(), tmp, record)
        return lambda tmp: save_onnx(program(), tmp, record, list(export_inputs(net)))

    publish_together([(path, writer(path)) for path in paths])
    return paths


def save_pt2(program: torch.export.ExportedProgram, path: Path, record: str) -> Path:
    """Write ``program`` as a ``.pt2`` file, with the model file's JSON ``record`` as the extra file
    ``stylenet.json``. Serialised in memory (a few MB), then written by Python: torch's own file writer
    turns a full disk into a RuntimeError and then aborts the process as it is destroyed."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={"stylenet.json": record})
    return atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def save_onnx(program: torch.export.ExportedProgram, path: Path, record: str,
              inputs: list[str] | None = None) -> Path:
    """Convert ``program`` with the ``torch.onnx`` dynamo exporter (opset chosen by torch) and write
    it as one ``.onnx`` file, the model file's JSON ``record`` in ``metadata_props["stylenet"]``;
    ``inputs``: the graph's input names (``image``, and ``style`` for several styles)."""
    onnx_program = torch.onnx.export(program, dynamo=True, input_names=inputs or ["image"],
                                     output_names=["output"], verbose=False)
    onnx_program.model.metadata_props[FORMAT] = record
    return atomic_write(path, functools.partial(onnx_program.save, external_data=False))


def export_checkpoint(ckpt_path: str | Path, out_path: str | Path) -> Path:
    """Lightning checkpoint -> per-style model file: network weights only (no VGG, no optimiser).

    The checkpoint is read with ``weights_only=True``: our checkpoints hold tensors and primitives."""
    model = read_model(ckpt_path)
    return write_model(model, out_path)
