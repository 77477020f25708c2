"""Per-style model files: the transformation network's weights, and nothing that can run code.

A trained style is one small ``.safetensors`` file (Hugging Face's safetensors: a JSON header and raw
tensors, so loading a stranger's file can never execute code, unlike a pickle). The header's
metadata carries the network's constructor arguments (as nanoGPT's checkpoints do), the style's
name and image hash, the loss weights, image size, steps and stylenet version.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from stylenet import StylenetError, __version__
from stylenet.nets import TransformerNet

FORMAT = "stylenet"
FORMAT_VERSION = 1
#: network classes a model file may name, by the class name stored in its metadata.
NETWORKS: dict[str, type[nn.Module]] = {"TransformerNet": TransformerNet}


@dataclass
class ExportedModel:
    """A network rebuilt from a model file, in eval mode on the CPU, and the file's metadata."""

    net: nn.Module
    metadata: dict[str, Any]

    @property
    def task(self) -> str:
        return str(self.metadata.get("task", "style"))


def atomic_write(path: Path, write: Any) -> Path:
    """Run ``write(tmp_path)``, fsync, then rename over ``path``: a crash leaves the old file or
    none, never half a file that looks like a model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_model(path: str | Path, net: nn.Module, metadata: dict[str, Any]) -> Path:
    """Write ``net``'s weights (CPU, contiguous) and ``metadata`` (JSON) to a safetensors file."""
    config = getattr(net, "config", None)
    if config is None:
        raise StylenetError(f"{type(net).__name__} has no .config; cannot record how to rebuild it")
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "stylenet_version": __version__,
              "network": {"class": type(net).__name__, **config}, **metadata}
    tensors = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in net.state_dict().items()}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={FORMAT: json.dumps(header)}))


def load_model(path: str | Path) -> ExportedModel:
    """Rebuild the network stored in a stylenet model file; never unpickles anything."""
    path = Path(path)
    if not path.is_file():
        raise StylenetError(f"model file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = json.loads((handle.metadata() or {}).get(FORMAT, "null"))
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StylenetError(f"model file {str(path)!r} is not a valid stylenet safetensors file: {reason}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StylenetError(f"model file {str(path)!r} has no stylenet metadata (not exported by stylenet-export)")
    network = dict(header.get("network", {}))
    cls = NETWORKS.get(network.pop("class", None))
    if cls is None:
        raise StylenetError(f"model file {str(path)!r} names an unknown network {header.get('network')}")
    try:
        net = cls(**network)
        net.load_state_dict(tensors)
    except (TypeError, ValueError, RuntimeError) as err:
        raise StylenetError(f"model file {str(path)!r} does not match its network: {str(err).splitlines()[0]}") from None
    return ExportedModel(net.eval(), header)


def export_checkpoint(ckpt_path: str | Path, out_path: str | Path) -> Path:
    """Lightning checkpoint -> per-style model file: network weights only (no VGG, no optimiser).

    The checkpoint is read with ``weights_only=True``: our checkpoints hold tensors and primitives."""
    ckpt_path = Path(ckpt_path)
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        hparams = checkpoint["hyper_parameters"]
        prefix = "net."
        state = {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    except (OSError, RuntimeError, KeyError, TypeError, EOFError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StylenetError(f"cannot read checkpoint {str(ckpt_path)!r}: {reason}") from None
    net = TransformerNet(**hparams["model"])
    net.load_state_dict(state)
    return save_model(out_path, net, checkpoint_metadata(hparams, int(checkpoint.get("global_step", 0))))


def checkpoint_metadata(hparams: dict[str, Any], steps: int) -> dict[str, Any]:
    """What a model file records about how it was trained (all JSON primitives)."""
    style = hparams.get("style", {})
    return {
        "task": "style",
        "style_name": style.get("name") or Path(str(style.get("image", "style"))).stem,
        "style_image": str(style.get("image")),
        "style_sha256": hparams.get("style_sha256"),
        "style_size": style.get("size"),
        "loss": hparams.get("loss", {}),
        "image_size": hparams.get("image_size"),
        "steps": steps,
    }
