"""The frozen VGG loss network (Simonyan & Zisserman 2015) used by every perceptual loss here.

Johnson et al. 2016 (Sec. 3) measure content and style with a VGG-16 pretrained on ImageNet and
kept fixed. Inputs stay RGB in [0, 1]; the ImageNet normalisation torchvision's weights expect is
applied inside. The network is cut after the deepest layer any loss asks for, and its weights are
non-persistent buffers rather than parameters: frozen by construction, never in a checkpoint, and
still moved by ``.to(device)``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stylenet import StylenetError
from stylenet.errors import load_failure, refused_pickle

log = logging.getLogger(__name__)

#: convolutions per block; every block ends with a 2x2 max-pool.
BLOCK_DEPTHS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
BLOCK_WIDTHS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SOURCES = "'imagenet', 'calibrated', 'random' or a path to a .pth state dict"
#: scikit-image photos whose VGG activations calibrate the ``calibrated`` weights (any natural photos
#: would do; fixed so that the loss network is the same on every machine).
CALIBRATION_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png",
                      "hubble_deep_field.jpg")
CALIBRATION_SIZE = 192


def layer_names(arch: str = "vgg16") -> list[str]:
    """Names of torchvision's ``vgg.features`` modules in order: conv1_1, relu1_1, ..., pool5."""
    if arch not in BLOCK_DEPTHS:
        raise StylenetError(f"unknown VGG architecture {arch!r}; expected one of {sorted(BLOCK_DEPTHS)}")
    names = []
    for block, depth in enumerate(BLOCK_DEPTHS[arch], start=1):
        for i in range(1, depth + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


def conv_shapes(arch: str, num_layers: int) -> dict[int, tuple[int, int]]:
    """(in, out) channels of each convolution among the first ``num_layers`` feature modules,
    keyed by its index in ``vgg.features``."""
    shapes, in_channels = {}, 3
    for index, name in enumerate(layer_names(arch)[:num_layers]):
        if name.startswith("conv"):
            out_channels = BLOCK_WIDTHS[int(name[4]) - 1]
            shapes[index] = (in_channels, out_channels)
            in_channels = out_channels
    return shapes


def random_state(arch: str, num_layers: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded Kaiming-normal weights (fan-out, as torchvision initialises VGG): for tests and
    offline smoke runs only; random features transfer colours and noisy texture, not strokes."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (c_in, c_out) in conv_shapes(arch, num_layers).items():
        std = math.sqrt(2.0 / (c_out * 9))
        state[f"{index}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=generator) * std
        state[f"{index}.bias"] = torch.zeros(c_out)
    return state


def calibrated_state(arch: str, num_layers: int, seed: int) -> dict[str, torch.Tensor]:
    """:func:`calibrate`'s weights, computed once per process (every loss network, Gatys run and
    report of a process that asks for the same ones shares the work); the tensors are the caller's."""
    return {name: tensor.clone() for name, tensor in calibrate(arch, num_layers, seed).items()}


@functools.lru_cache(maxsize=4)
@torch.no_grad()
def calibrate(arch: str, num_layers: int, seed: int) -> dict[str, torch.Tensor]:
    """:func:`random_state`, then each convolution rescaled in order so that every channel's
    pre-ReLU response to natural photos has zero mean and unit variance (a data-dependent
    initialisation in the spirit of LSUV, Mishkin & Matas 2016).

    Why: with torchvision's random initialisation, activations shrink or grow layer by layer and
    channel by channel, so Grams of deep layers are negligible next to shallow ones and a few
    channels dominate each layer; optimising against them gives a blur (the TV term wins). After
    calibration every channel carries a comparable, half-active signal, like a trained network's,
    and random features then do transfer a style's palette and fine texture (He, Wang & Hopcroft
    2016; Ustyuzhaninov et al. 2017). It is no substitute for ImageNet weights: strokes and
    object-scale patterns need learnt features. Deterministic for a given seed; downloads nothing."""
    from stylenet.image import demo_root, load_rgb

    state = random_state(arch, num_layers, seed)
    photos = [load_rgb(demo_root() / name) for name in CALIBRATION_PHOTOS]
    x = torch.stack([F.interpolate(photo[None], size=(CALIBRATION_SIZE, CALIBRATION_SIZE), mode="bilinear",
                                   antialias=True, align_corners=False)[0] for photo in photos])
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for index, name in enumerate(layer_names(arch)[:num_layers]):
        if name.startswith("conv"):
            weight, bias = state[f"{index}.weight"], state[f"{index}.bias"]
            response = F.conv2d(x, weight, bias, padding=1)  # (N, C, H, W)
            mean, std = response.mean(dim=(0, 2, 3)), response.std(dim=(0, 2, 3)).clamp_min(1e-8)
            state[f"{index}.weight"], state[f"{index}.bias"] = weight / std.view(-1, 1, 1, 1), (bias - mean) / std
            x = (response - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        elif name.startswith("relu"):
            x = F.relu(x)
        else:
            x = F.max_pool2d(x, 2)
    return state


def imagenet_state(arch: str, num_layers: int) -> dict[str, torch.Tensor]:
    """torchvision's ``IMAGENET1K_V1`` weights, from the hub cache or downloaded once.

    Raises a StylenetError that says how to pass a local file when the download is impossible,
    rather than silently falling back to random weights. The cached file is checked as a local one
    is (:func:`file_state`): torch.hub checks its hash only as it downloads, and a file copied into
    the cache by hand may be another network's."""
    from torchvision import models

    weights = models.get_model_weights(arch).IMAGENET1K_V1
    filename = weights.url.rsplit("/", 1)[-1]
    cache = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cache.is_file():
        try:
            weights.get_state_dict(progress=False, check_hash=True, weights_only=True)  # into the cache
        except Exception as err:  # URLError, hash mismatch, partial download: all mean "no weights"
            raise StylenetError(
                f"cannot get ImageNet {arch} weights ({type(err).__name__}: {err}); offline? download {weights.url} "
                f"on a connected machine and pass its path (loss.weights=/path/to/{filename}; --weights in "
                f"stylenet-bench and scripts/; weights: in stylenet-report's --loss-config file), or copy it to {cache}"
            ) from None
    return file_state(cache, arch, num_layers)


def file_state(path: Path, arch: str, num_layers: int) -> dict[str, torch.Tensor]:
    """A local torchvision VGG state dict (``features.N.weight`` keys, or bare ``N.weight``),
    loaded without unpickling code and checked key by key: shape, floating-point and finite values,
    and no layer that ``arch`` has not (VGG-19's ``16.weight``, ``vgg16_bn``'s norms: the shapes of
    the first layers alone do not tell these networks apart)."""
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise StylenetError(f"VGG weights file {str(path)!r} {state}; expected {WEIGHT_SOURCES}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        advice = ": save the network's state_dict() instead" if refused_pickle(err) else ""  # torch.save(model)
        raise StylenetError(f"cannot load VGG weights file {str(path)!r}: {load_failure(err, path)}{advice}") from None
    if not isinstance(raw, dict):
        raise StylenetError(f"VGG weights file {str(path)!r} holds a {type(raw).__name__}, not a state dict")
    state = {key.removeprefix("features."): value for key, value in raw.items() if isinstance(value, torch.Tensor)}
    every_conv = conv_shapes(arch, len(layer_names(arch)))
    foreign = [key for key in state if (parts := key.split("."))[0].isdigit()
               and (int(parts[0]) not in every_conv or parts[-1] not in ("weight", "bias"))]
    if foreign:
        raise StylenetError(f"VGG weights file {str(path)!r} holds features.{foreign[0]}, which {arch} has not "
                            f"(another VGG, or one with batch norm?)")
    for index, (c_in, c_out) in conv_shapes(arch, num_layers).items():
        for key, shape in ((f"{index}.weight", (c_out, c_in, 3, 3)), (f"{index}.bias", (c_out,))):
            if key not in state:
                raise StylenetError(f"VGG weights file {str(path)!r} lacks features.{key} ({arch} expected)")
            if tuple(state[key].shape) != shape:
                raise StylenetError(f"VGG weights file {str(path)!r}: features.{key} has shape "
                                    f"{tuple(state[key].shape)}, {arch} needs {shape}")
            if not state[key].is_floating_point():
                raise StylenetError(f"VGG weights file {str(path)!r}: features.{key} holds {state[key].dtype} "
                                    "values, not floating point")
            if not torch.isfinite(state[key]).all():  # every loss would be NaN, blamed on the photos
                raise StylenetError(f"VGG weights file {str(path)!r}: features.{key} holds NaN or infinite values")
    return state


class VGGFeatures(nn.Module):
    """Frozen VGG feature extractor that returns a dict of named activations.

    Args:
        layers: every layer any loss will ask for (e.g. ``relu2_2``); the network is truncated after
            the deepest one.
        arch: ``vgg16`` (Johnson et al.) or ``vgg19`` (Gatys et al.).
        weights: ``imagenet``, ``calibrated`` (offline: :func:`calibrated_state`), ``random`` (tests) or
            a path to a local ``.pth`` state dict.
        seed: seed of the ``random`` weights.
    """

    def __init__(self, layers: Iterable[str], arch: str = "vgg16", weights: str = "imagenet",
                 seed: int = 0) -> None:
        super().__init__()
        names = layer_names(arch)
        layers = list(layers)
        unknown = [name for name in layers if name not in names]
        if unknown or not layers:
            raise StylenetError(f"unknown VGG layer(s) {unknown or layers}; {arch} has {', '.join(names)}")
        self.arch, self.weights_source = arch, str(weights)
        #: the local state dict the weights came from, None for a keyword (``imagenet``, ...)
        self.weights_file: Path | None = None
        self.names = names[: max(names.index(name) for name in layers) + 1]
        if weights == "random":
            log.warning("VGG loss network uses RANDOM weights (seed %d): fine for tests and smoke runs, "
                        "but results will not look artistic; use loss.weights=imagenet or a .pth file", seed)
            state = random_state(arch, len(self.names), seed)
        elif weights == "calibrated":
            log.warning("VGG loss network uses CALIBRATED RANDOM weights (seed %d), the offline stand-in: it "
                        "transfers palette and fine texture, not strokes; use loss.weights=imagenet or a .pth "
                        "file for real styles", seed)
            state = calibrated_state(arch, len(self.names), seed)
        elif weights == "imagenet":
            state = imagenet_state(arch, len(self.names))
        elif str(weights).endswith((".pth", ".pt")) or Path(str(weights)).expanduser().exists():
            self.weights_file = Path(str(weights)).expanduser()
            state = file_state(self.weights_file, arch, len(self.names))
        else:
            raise StylenetError(f"unknown VGG weight source {weights!r}; expected {WEIGHT_SOURCES}")
        for index in conv_shapes(arch, len(self.names)):
            self.register_buffer(f"weight{index}", state[f"{index}.weight"].detach().float().clone(), persistent=False)
            self.register_buffer(f"bias{index}", state[f"{index}.bias"].detach().float().clone(), persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        """The loss network is always in eval mode (it has no dropout or norm here, but callers'
        ``model.train()`` must never change that)."""
        return super().train(False)

    def forward(self, images: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """Activations of ``layers`` for RGB ``images`` in [0, 1]; stops at the deepest one asked
        for, so a content-only pass (relu2_2) costs a fraction of a full relu4_3 pass."""
        wanted = set(layers)
        missing = wanted.difference(self.names)
        if missing:
            raise StylenetError(f"VGG layer(s) {sorted(missing)} are beyond this network's last layer "
                                f"{self.names[-1]}")
        x = (images - self.mean) / self.std
        features: dict[str, torch.Tensor] = {}
        for index, name in enumerate(self.names):
            if name.startswith("conv"):
                x = F.conv2d(x, getattr(self, f"weight{index}"), getattr(self, f"bias{index}"), padding=1)
            elif name.startswith("relu"):
                # In place unless the conv output itself was asked for: saves one activation per layer.
                x = F.relu(x) if self.names[index - 1] in wanted else F.relu_(x)
            else:
                x = F.max_pool2d(x, 2)
            if name in wanted:
                features[name] = x
                if len(features) == len(wanted):
                    break
        return features
