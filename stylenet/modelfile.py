"""Model files: reading them safely, writing them, and converting the checkpoints users already have.

A trained style is one small ``.safetensors`` file (Hugging Face's safetensors: a JSON header and raw
tensors, so loading a stranger's file can never execute code, unlike a pickle). The header's
metadata carries the network's constructor arguments (as nanoGPT's checkpoints do), the style's
name and image hash, the loss weights, image size, steps and stylenet version.

:func:`read_model` also reads, always with ``torch.load(weights_only=True)`` and never falling back
to unrestricted unpickling (not even under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which only
applies when ``weights_only`` is not passed):

* Lightning checkpoints written by ``stylenet-train`` (``.ckpt``);
* pytorch/examples ``fast_neural_style`` state dicts (``.pth`` / ``.model``), which users already
  have: the same network with 0-255 inputs and outputs and no final activation
  (:class:`ExamplesTransformerNet`).

Other runtimes' formats (ONNX, ``torch.export``) are :mod:`stylenet.export`'s.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from stylenet.atomic import atomic_write
from stylenet.errors import (
    TRUNCATED_ARCHIVE,
    StylenetError,
    check_format_version,
    first_line,
    load_failure,
    refused_pickle,
    unpickler_reason,
)
from stylenet.nets import SuperResolutionNet, TransformerNet
from stylenet.styles import StyleChoice, choice_weights, style_name_of, style_names
from stylenet.version import __version__

FORMAT = "stylenet"
FORMAT_VERSION = 1


class WrongTaskError(StylenetError):
    """A model file made for another task (``found``: ``"sr"`` where a style model was asked for)."""

    def __init__(self, path: Path, found: str, wanted: str) -> None:
        super().__init__(f"model file {str(path)!r} is a {found!r} model, not a {wanted!r} model")
        self.path, self.found, self.wanted = path, found, wanted

    def __reduce__(self) -> tuple[type[WrongTaskError], tuple[Path, str, str]]:
        """Pickled (to another process) and copied with its three arguments, not its message."""
        return type(self), (self.path, self.found, self.wanted)


class ExamplesTransformerNet(TransformerNet):
    """The network of pytorch/examples ``fast_neural_style``, in our layout.

    It is the same InstanceNorm variant of the paper's network (Johnson et al. 2016, supplementary
    Table 1), trained on images in [0, 255] with no activation after the last convolution. This
    wrapper keeps our [0, 1] interface: inputs are multiplied by 255, outputs divided by 255 and
    clamped, where the original tools clamp when saving.
    """

    def __init__(self, channels: int = 32, residual_blocks: int = 5, norm: str = "instance") -> None:
        super().__init__(channels, residual_blocks, norm)
        self.decoder[-1] = nn.Identity()  # no ScaledTanh: the original output is unbounded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (super().forward(x * 255.0) / 255.0).clamp(0.0, 1.0)


#: network classes a model file may name, by the class name stored in its metadata.
NETWORKS: dict[str, type[nn.Module]] = {
    "TransformerNet": TransformerNet,
    "ExamplesTransformerNet": ExamplesTransformerNet,
    "SuperResolutionNet": SuperResolutionNet,
}
#: the network each training task trains, for checkpoints (their hyperparameters name the task;
#: checkpoints from before super-resolution existed name none and are style checkpoints).
TASK_NETWORKS: dict[str, type[nn.Module]] = {"style": TransformerNet, "sr": SuperResolutionNet}


@dataclass
class StoredModel:
    """A network rebuilt from a model file, in eval mode on the CPU, and the file's metadata.

    For converting and exporting; :func:`stylenet.load_model` gives an
    :class:`~stylenet.inference.InferenceModel` ready to process images."""

    net: nn.Module
    metadata: dict[str, Any]
    #: the file it was read from (for error messages)
    path: str | None = None

    @property
    def task(self) -> str:
        """``style`` or ``sr`` (files from before super-resolution existed are style models)."""
        return str(self.metadata.get("task", "style"))

    @property
    def styles(self) -> list[str]:
        """The names of the styles the network holds (one for a single-style file; see
        :mod:`stylenet.styles`)."""
        return style_names(self.metadata)

    def for_style(self, choice: StyleChoice) -> tuple[str, nn.Module]:
        """(label, a plain single-style network) for a style name, index or {name: weight} blend
        (:meth:`TransformerNet.single_style`: the shared weights with the mixed norm parameters of
        Dumoulin et al. 2017); a single-style file's network is returned as it is. An unknown name
        is a one-line :class:`StylenetError` listing the styles."""
        label, weights = choice_weights(self.styles, choice, f"model file {self.path!r}")
        if getattr(self.net, "styles", 1) == 1:
            return label, self.net
        return label, self.net.single_style(weights).eval()

    def style_networks(self) -> list[tuple[str, nn.Module]]:
        """(style name, its single-style network) for every style the file holds."""
        return [self.for_style(name) for name in self.styles]


def header(net: nn.Module, metadata: dict[str, Any]) -> dict[str, Any]:
    """What every model file (and export) records: format, versions, how to rebuild ``net``, metadata."""
    config = getattr(net, "config", None)
    if config is None:
        raise StylenetError(f"{type(net).__name__} has no .config; cannot record how to rebuild it")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "stylenet_version": __version__,
            "network": {"class": type(net).__name__, **config}, **metadata}


def save_model(path: str | Path, net: nn.Module, metadata: dict[str, Any]) -> Path:
    """Write ``net``'s weights (CPU, contiguous) and ``metadata`` (JSON) to a safetensors file."""
    record = header(net, metadata)
    tensors = {key: value.detach().to("cpu", torch.float32).contiguous()
               for key, value in net.state_dict().items()}
    # serialised here and written into atomic_write's file, not by save_file, which renames its own
    # owner-only (0600) temporary file into place whatever the umask
    data = save(tensors, metadata={FORMAT: json.dumps(record)})
    return atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def is_safetensors(path: Path) -> bool:
    """safetensors files start with a little-endian u64 header length and then a JSON object (PyTorch's
    zip archives have a compression method there, its pickles part of an opcode's argument). One cut short,
    or whose length is damaged, is still a safetensors file, whose reader says what is wrong with it (the
    pickle reader would only say "Unsupported operand")."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return head[8:9] == b"{"


#: What :func:`read_model` reads: its safetensors files, Lightning checkpoints and pytorch/examples' ``.pth``.
READ_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt", ".model")
#: What stylenet-export writes for other runtimes, which stylenet itself does not read back.
FOREIGN_EXPORTS = {".onnx": "an ONNX export", ".pt2": "a torch.export program"}


def read_model(path: str | Path, *, task: str | None = None) -> StoredModel:
    """Rebuild the network stored in a model file; never runs code from the file.

    Reads stylenet safetensors files, ``stylenet-train`` Lightning checkpoints and pytorch/examples
    ``fast_neural_style`` checkpoints (see the module docstring). With ``task`` (e.g. ``"style"``)
    a model made for something else (e.g. a super-resolution ``"sr"`` model) is refused. Every
    failure is a :class:`StylenetError` with one line naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise StylenetError(f"model file {str(path)!r} is a folder: name one model file")
    if not path.is_file():
        raise StylenetError(f"model file {str(path)!r} does not exist")
    try:
        with path.open("rb"):  # another user's file, say: one line, not the loaders' guesses
            pass
    except OSError as err:
        raise StylenetError(f"cannot read model file {str(path)!r}: {err.strerror or err}") from None
    if path.stat().st_size == 0:
        raise StylenetError(f"model file {str(path)!r} is empty (0 bytes)")
    if path.suffix.lower() in FOREIGN_EXPORTS:
        raise StylenetError(f"model file {str(path)!r} is {FOREIGN_EXPORTS[path.suffix.lower()]} for other "
                            "runtimes; stylenet reads the .safetensors (or .ckpt) it was exported from")
    model = _load_safetensors(path) if is_safetensors(path) else _load_pickled(path)
    if task is not None and model.task != task:
        raise WrongTaskError(path, model.task, task)
    factor, scale = model.metadata.get("factor"), getattr(model.net, "scale", None)
    if model.task == "sr" and factor is not None and scale is not None and factor != scale:
        raise StylenetError(f"model file {str(path)!r} says it upscales x{factor}, but its network upscales "
                            f"x{scale}")
    return model


def read_header(path: str | Path) -> dict[str, Any]:
    """A stylenet safetensors file's header (:func:`header`: network, style names, ...) without
    reading its weights: what a listing of model files needs. The tensors' names and shapes are held
    against the network the header names (built on the meta device, so nothing is allocated): a file
    that lists well but cannot load is refused here, as :func:`read_model` would refuse it."""
    return _load_safetensors(Path(path), weights=False).metadata


def _read_safetensors(path: Path, *, weights: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The stylenet header and the tensors; without ``weights``, shape-only tensors on the meta device.
    safetensors checks the layout (dtypes, offsets, the file covered) as it opens the file."""
    try:
        with path.open("rb") as handle, safe_open(_openable(path, handle), framework="pt", device="cpu") as stored:
            header = json.loads((stored.metadata() or {}).get(FORMAT, "null"))
            keys = list(stored.keys())
            tensors = ({key: stored.get_tensor(key) for key in keys} if weights else
                       {key: torch.empty(stored.get_slice(key).get_shape(), device="meta",
                                         dtype=header_dtype(stored.get_slice(key).get_dtype()))
                        for key in keys})
    except (SafetensorError, OSError, ValueError, RecursionError) as err:
        raise StylenetError(f"model file {str(path)!r} is not a valid stylenet safetensors file: "
                            f"{first_line(err)}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StylenetError(f"model file {str(path)!r} has no stylenet metadata "
                            "(not exported by stylenet-export)")
    check_format_version(header.get("format_version"), FORMAT_VERSION, f"model file {str(path)!r}",
                         header.get("stylenet_version"))
    return header, tensors


#: safetensors' names of the dtypes a header may give, for its shape-only tensors (:func:`header_dtype`).
HEADER_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "U16": torch.uint16, "I16": torch.int16,
                 "U32": torch.uint32, "I32": torch.int32, "U64": torch.uint64, "I64": torch.int64,
                 "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                 "C64": torch.complex64}


def header_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name; for a rarer one, what matters to
    :func:`weights_mismatch`: floating point (float8 and the like) or not (uint8 stands in)."""
    if name in HEADER_DTYPES:
        return HEADER_DTYPES[name]
    return torch.float32 if name.startswith(("F", "BF")) else torch.uint8


def _openable(path: Path, handle: BinaryIO) -> str:
    """A name safetensors opens ``path`` by: the path itself, or, for a file name that is not UTF-8 (an
    old archive's Latin-1 name, held by Python as lone surrogates), which safetensors refuses, the
    already open ``handle``'s ``/dev/fd`` entry (Linux and macOS: where such names occur)."""
    try:
        str(path).encode("utf-8")
        return str(path)
    except UnicodeEncodeError:
        return f"/dev/fd/{handle.fileno()}"


def _load_safetensors(path: Path, *, weights: bool = True) -> StoredModel:
    header, tensors = _read_safetensors(path, weights=weights)
    network = dict(header["network"]) if isinstance(header.get("network"), dict) else {}
    cls = NETWORKS.get(network.pop("class", None))
    if cls is None:
        raise StylenetError(f"model file {str(path)!r} names an unknown network {header.get('network')}")
    return _build(path, cls, network, tensors, header, weights=weights)


def first_non_finite(state_dict: Mapping[str, Any]) -> str | None:
    """The first floating-point tensor holding NaN or infinity: a diverged run, not worth resuming,
    and a model whose every output would be NaN, written as a black image. (A meta tensor, a shape
    without values, holds neither.)"""
    for key, value in state_dict.items():
        if (torch.is_tensor(value) and value.is_floating_point() and not value.is_meta
                and not torch.isfinite(value).all()):
            return key
    return None


def weights_mismatch(needed: Mapping[str, torch.Tensor], found: Mapping[str, Any]) -> str | None:
    """The first difference between the tensors a network needs (its ``state_dict()``) and those a file
    holds, as a phrase, with how many more there are; None when every name, shape and kind of number
    fits. ``load_state_dict``'s own message spreads them over lines after a bare heading, and the first
    line alone says nothing; and it casts integers to a weight's floats without a word (a grey picture)."""
    problems = []
    for key, tensor in needed.items():
        shape = getattr(found.get(key), "shape", None)
        if key not in found:
            problems.append(f"{key} is missing")
        elif shape is None or tuple(shape) != tuple(tensor.shape):
            held = tuple(shape) if shape is not None else type(found[key]).__name__
            problems.append(f"{key} is {held} in the file, the network needs {tuple(tensor.shape)}")
        elif tensor.is_floating_point() and not found[key].is_floating_point():
            problems.append(f"{key} holds {str(found[key].dtype).removeprefix('torch.')} values in the file, "
                            "the network needs floating point")
    problems += [f"{key} is not part of the network" for key in found if key not in needed]
    if not problems:
        return None
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


def _build(path: Path, cls: type[nn.Module], config: dict[str, Any], state: dict[str, torch.Tensor],
           metadata: dict[str, Any], *, weights: bool = True) -> StoredModel:
    """The network ``config`` describes, with ``state`` loaded (without ``weights``: ``state`` holds
    shapes only, and the network stays on the meta device). A file's header is not trusted with memory:
    the network is first built on the meta device and held against the file's tensors, and only a file
    that holds every weight it names gets a network of real memory (a header asking for a million
    channels or blocks is refused as a mismatch, not allocated)."""
    blocks = config.get("residual_blocks")
    if isinstance(blocks, int) and blocks > len(state):  # each block holds tensors: not worth building
        raise StylenetError(f"model file {str(path)!r} does not match its network: it names {blocks} residual "
                            f"blocks and holds {len(state)} tensors")
    try:
        with torch.device("meta"):
            net = cls(**config)
        mismatch = weights_mismatch(net.state_dict(), state)
        if mismatch is None and weights:
            net = cls(**config)
            net.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as err:  # arguments the network refuses
        mismatch = first_line(err)
    if mismatch is not None:
        raise StylenetError(f"model file {str(path)!r} does not match its network: {mismatch}")
    bad = first_non_finite(state)
    if bad:
        raise StylenetError(f"model file {str(path)!r} holds NaN or infinite weights ({bad}): a diverged run")
    try:
        names, held = style_names(metadata), getattr(net, "styles", 1)
    except StylenetError as err:
        raise StylenetError(f"model file {str(path)!r}: {err}") from None
    if len(names) != held:  # one name per row of the norm tables
        raise StylenetError(f"model file {str(path)!r} does not match its network: it holds {held} style(s), "
                            f"its metadata names {names}")
    shared = sorted({name for name in names if names.count(name) > 1})
    if shared:  # an edited file: the network is whole, the outputs of two styles would be one file
        raise StylenetError(f"model file {str(path)!r} names two styles {shared[0]!r} (its metadata names {names}): "
                            "each style needs a name of its own")
    return StoredModel(net.eval(), header(net, metadata), str(path))


#: What a file that loads as neither kind is (torch.load's own reasons, such as "101", say little alone).
NEITHER = "is not a model file: neither safetensors nor a PyTorch checkpoint or state dict"


def _load_pickled(path: Path) -> StoredModel:
    """Lightning checkpoints and pytorch/examples state dicts, through the weights-only unpickler.

    torch.load is given the open file, not its path: given a path ending in ``.safetensors`` it reads the
    file as safetensors whatever its bytes (torch 2.14), and a checkpoint renamed so would be refused as
    "header too large". stylenet tells the formats apart by content (:func:`is_safetensors`)."""
    try:
        with warnings.catch_warnings(), open(path, "rb") as handle:
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # the refusal below says it better
            content = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if refused_pickle(err):
            raise StylenetError(
                f"refusing to load model file {str(path)!r}: it is a pickle with more than tensors and plain "
                f"containers, and unpickling it could run code ({unpickler_reason(err)})") from None
        raise StylenetError(f"model file {str(path)!r} {NEITHER} (torch.load: {unpickler_reason(err)})") from None
    except Exception as err:  # torch.load reports random bytes as IndexError, KeyError, RuntimeError...
        if load_failure(err, path) == TRUNCATED_ARCHIVE:  # a checkpoint cut short is still one
            raise StylenetError(f"model file {str(path)!r} is {TRUNCATED_ARCHIVE}") from None
        # a KeyError's message is the key it missed (a number, of random bytes): no reason worth a word
        reason = "" if isinstance(err, LookupError) else f" (torch.load: {first_line(err)})"
        raise StylenetError(f"model file {str(path)!r} {NEITHER}{reason}") from None
    if isinstance(content, dict) and "state_dict" in content and "hyper_parameters" in content:
        return _from_lightning(path, content)
    if isinstance(content, dict) and "conv1.conv2d.weight" in content:
        return _from_examples(path, content)
    raise StylenetError(f"model file {str(path)!r} is neither a stylenet model, a stylenet-train "
                        "checkpoint nor a pytorch/examples fast_neural_style checkpoint")


def _from_lightning(path: Path, checkpoint: dict[str, Any]) -> StoredModel:
    """The transformation network of a ``stylenet-train`` checkpoint (no VGG, no optimiser)."""
    try:
        hparams = checkpoint["hyper_parameters"]
        state = {key.removeprefix("net."): value for key, value in checkpoint["state_dict"].items()
                 if key.startswith("net.")}
        config = dict(hparams["model"])
        metadata = checkpoint_metadata(hparams, int(checkpoint.get("global_step", 0)), f"checkpoint {str(path)!r}")
    except KeyError as err:
        raise StylenetError(f"checkpoint {str(path)!r} lacks {first_line(err)}") from None
    except (TypeError, AttributeError, ValueError) as err:  # another project's checkpoint, of other shapes
        raise StylenetError(f"checkpoint {str(path)!r} is not a stylenet-train checkpoint "
                            f"({first_line(err)})") from None
    return _build(path, TASK_NETWORKS[metadata["task"]], config, state, metadata)


#: pytorch/examples layer names -> ours (ConvLayer keeps its conv in ``.conv2d``).
_EXAMPLES_LAYERS = {
    "conv1": "encoder.0.0.1", "in1": "encoder.0.1",
    "conv2": "encoder.1.0.1", "in2": "encoder.1.1",
    "conv3": "encoder.2.0.1", "in3": "encoder.2.1",
    "deconv1": "decoder.0.1.0.1", "in4": "decoder.0.1.1",
    "deconv2": "decoder.1.1.0.1", "in5": "decoder.1.1.1",
    "deconv3": "decoder.2.1",
}
_EXAMPLES_RESIDUAL_LAYERS = {"conv1": "body.0.0.1", "in1": "body.0.1", "conv2": "body.1.1", "in2": "body.2"}
_EXAMPLES_KEY = re.compile(r"(?:res(?P<block>\d+)\.)?(?P<layer>\w+?)(?:\.conv2d)?\.(?P<param>\w+)")
#: InstanceNorm running statistics that old PyTorch versions saved and nothing uses.
_STALE_PARAMS = ("running_mean", "running_var", "num_batches_tracked")


def _from_examples(path: Path, state: dict[str, Any]) -> StoredModel:
    """Map a pytorch/examples ``fast_neural_style`` state dict onto :class:`ExamplesTransformerNet`."""
    mapped: dict[str, torch.Tensor] = {}
    blocks: set[int] = set()
    for key, value in state.items():
        match = _EXAMPLES_KEY.fullmatch(key)
        if match is None or not isinstance(value, torch.Tensor):
            raise StylenetError(f"model file {str(path)!r} has an unexpected entry {key!r} for a "
                                "pytorch/examples fast_neural_style checkpoint")
        if match["param"] in _STALE_PARAMS:
            continue
        if match["block"] is None:
            target = _EXAMPLES_LAYERS.get(match["layer"])
        else:
            blocks.add(int(match["block"]))
            inner = _EXAMPLES_RESIDUAL_LAYERS.get(match["layer"])
            target = inner and f"residuals.{int(match['block']) - 1}.{inner}"
        if target is None:
            raise StylenetError(f"model file {str(path)!r} has an unexpected layer {key!r} for a "
                                "pytorch/examples fast_neural_style checkpoint")
        mapped[f"{target}.{match['param']}"] = value
    config = {"channels": int(state["conv1.conv2d.weight"].shape[0]), "residual_blocks": len(blocks)}
    # named as a style picture names its run's style ("my mosaic (v2).pth": my_mosaic__v2_), a name every
    # output file can hold and stylenet-export --style-name accepts
    metadata = {"task": "style", "style_name": style_name_of(path), "source": "pytorch/examples fast_neural_style"}
    return _build(path, ExamplesTransformerNet, config, mapped, metadata)


def checkpoint_metadata(hparams: dict[str, Any], steps: int, source: str = "the checkpoint") -> dict[str, Any]:
    """What a model file records about how it was trained (all JSON primitives): the task
    (``style``, or ``sr`` with its ``factor``), the style, the objective (the loss network's
    settings and, for styles, the task's own terms: temporal, saturation, identity warm-up), image
    size and steps. ``source`` names the checkpoint in an error."""
    task = hparams.get("task", "style")
    if task not in TASK_NETWORKS:
        raise StylenetError(f"{source} is of an unknown task {task!r} (expected one of "
                            f"{sorted(TASK_NETWORKS)})")
    if task == "sr":
        return {"task": "sr", "factor": hparams.get("factor"), "loss": hparams.get("loss", {}),
                "image_size": hparams.get("image_size"), "steps": steps}
    style = hparams.get("style", {})
    metadata = {
        "task": "style",
        "style_name": style.get("name") or style_name_of(style.get("image", "style")),
        "style_image": hparams.get("style_image") or (str(style["image"]) if style.get("image") else None),
        "style_sha256": hparams.get("style_sha256"),
        "style_size": style.get("size"),
        "loss": hparams.get("loss", {}),
        **{term: hparams[term] for term in ("temporal_weight", "saturation_weight", "identity_steps")
           if term in hparams},
        "image_size": hparams.get("image_size"),
        "steps": steps,
    }
    if hparams.get("styles"):  # several styles in one network: see stylenet.styles
        metadata["styles"] = [dict(record) for record in hparams["styles"]]
        if hparams.get("base"):
            metadata["base"] = str(hparams["base"])
            metadata["base_sha256"] = hparams.get("base_sha256")
    return metadata
