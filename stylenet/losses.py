"""Perceptual losses of Johnson et al. 2016 (Sec. 3.2-3.3) and the one objective built from them.

Training, the Gatys optimiser and evaluation all call :class:`PerceptualLoss`, so their numbers are
comparable by construction.

Units. Images are RGB in [0, 1]; the VGG normalises them with ImageNet's mean and std inside.

* content: ``||phi_j(y_hat) - phi_j(y)||^2 / (C_j H_j W_j)``, the paper's eq. 2, averaged over the batch;
* style: ``sum_j w_j ||G_j(y_hat) - G_j(y_s)||^2 / C_j^2`` with ``G = psi psi^T / (C H W)`` (eq. 3),
  averaged over the batch. This is the *mean* over the C x C Gram entries, where the paper's eq. 4
  writes the squared Frobenius norm (their sum): it is what the code that trained the released models
  computes (the Lua code's ``nn.MSECriterion``, pytorch/examples' ``mse_loss``). With the sum,
  relu4_3 would weigh (512 / 64)^2 = 64x more against relu1_2 than in those models;
* tv: squared neighbour differences (the beta = 2 total variation) per pixel, i.e. summed and
  divided by B*C*H*W, so its weight does not depend on image size;
* pixel: mean squared error against the target image (the super-resolution baseline).

The anchor. pytorch/examples' ``fast_neural_style`` (the objective behind its released candy, mosaic,
rain princess and udnie models) minimises ``1e5 * MSE(relu2_2) + 1e10 * sum_j MSE(G_j)`` on the same
torchvision VGG-16 with the same input scaling (0-255 / 255, ImageNet-normalised). Our terms equal its
terms exactly, layer by layer, so our defaults ``content_weight=1, style_weight=1e5`` are that objective
divided by 1e5 (``tests/test_losses.py`` checks it against an independent implementation). It has no
TV term; ours keeps Johnson's (see :func:`lua_to_ours`).

``normalize=True`` (the offline ``calibrated`` loss network only, ``configs/loss/offline.yaml``)
divides each style layer's term by the mean square of its target Gram and the content term by the
mean square of the content features: relative errors, because random features have no trained
network's balance between layers. The ImageNet path never normalises.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stylenet import StylenetError
from stylenet.errors import check_seed
from stylenet.fastpath import is_channels_last
from stylenet.nets.vgg import BLOCK_WIDTHS, IMAGENET_STD, VGGFeatures

log = logging.getLogger(__name__)

DEFAULT_CONTENT_LAYERS = {"relu2_2": 1.0}
#: Caffe's VGG-16 (Johnson's Lua code) sees 0-255 pixels minus the mean pixel, torchvision's sees
#: (x - mean) / std with x in [0, 1]: the same network would give features larger by 255 * std.
CAFFE_FEATURE_SCALE = 255 * sum(IMAGENET_STD) / len(IMAGENET_STD)
DEFAULT_STYLE_LAYERS = {"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 1.0, "relu4_3": 1.0}


class _Gram(torch.autograd.Function):
    """psi psi^T / n in fp32, with a backward of one matrix product in the features' own precision.

    G is symmetric, so dL/dpsi = (dG + dG^T) psi / n: one batched product where autograd would
    differentiate through both factors (two products, then a transpose-add over the whole feature
    map). Under bf16 autocast the features are bf16 and so is the gradient the VGG's backward
    consumes; computing it in bf16 (fp32 accumulation) skips an fp32 copy of every feature map in
    both directions, the largest non-convolution cost of a training step (``stylenet-bench``).
    ``psi`` is (B, C, N), or (B, N, C) when ``channels_last`` (how NHWC maps reshape in place)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, psi: torch.Tensor, channels_last: bool,
                norm: int) -> torch.Tensor:
        ctx.save_for_backward(psi)
        ctx.channels_last, ctx.norm = channels_last, norm
        psi = psi.float()
        product = torch.bmm(psi.transpose(1, 2), psi) if channels_last else torch.bmm(psi, psi.transpose(1, 2))
        return product / norm  # (B, C, C)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (psi,) = ctx.saved_tensors
        symmetric = ((grad + grad.transpose(1, 2)) / ctx.norm).to(psi.dtype)  # (B, C, C)
        grad_psi = torch.bmm(psi, symmetric) if ctx.channels_last else torch.bmm(symmetric, psi)
        return grad_psi, None, None


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of eq. 3: G = psi psi^T / (C H W) with psi the (C, H*W) reshape of the features.

    Always fp32, also under autocast: a half-precision Gram of relu4_3 overflows. Channels_last
    feature maps (the VGG's layout, :mod:`stylenet.fastpath`) are read as (H*W, C) in place
    rather than copied to channel-major order."""
    batch, channels, height, width = features.shape
    channels_last = is_channels_last(features)
    if channels_last:
        psi = features.permute(0, 2, 3, 1).reshape(batch, height * width, channels)  # (B, HW, C), a view
    else:
        psi = features.reshape(batch, channels, height * width)  # (B, C, HW)
    with torch.autocast(device_type=features.device.type, enabled=False):
        return _Gram.apply(psi, channels_last, channels * height * width)


def feature_reconstruction_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 2: squared Euclidean distance of feature maps divided by C*H*W, averaged over the batch.

    In fp32. Channels_last maps are compared as their contiguous NHWC views (the mean does not
    depend on the order): ``mse_loss``'s gradient then comes back channels_last too, where an
    NCHW gradient would make every later elementwise kernel of the backward pass mix layouts."""
    if is_channels_last(features):
        features, target = features.permute(0, 2, 3, 1), target.permute(0, 2, 3, 1)
    return F.mse_loss(features.float(), target.float())


def style_reconstruction_loss(gram: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Eq. 4 divided by C^2: the mean squared Gram difference over the C x C entries (the reference
    codes' MSE; see the module docstring), averaged over the batch.

    ``target_gram`` may be (1, C, C) and broadcast over the batch; it can come from an image of a
    different size than the output, since Grams are C x C."""
    return (gram - target_gram).pow(2).mean()


def total_variation_loss(images: torch.Tensor) -> torch.Tensor:
    """Total variation regulariser (beta = 2, Mahendran & Vedaldi 2015): squared differences of
    vertical and horizontal neighbours, summed and divided by the number of values B*C*H*W."""
    images = images.float()
    vertical = (images[:, :, 1:, :] - images[:, :, :-1, :]).pow(2).sum()
    horizontal = (images[:, :, :, 1:] - images[:, :, :, :-1]).pow(2).sum()
    return (vertical + horizontal) / images.numel()


def pixel_loss(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean squared error: the paper's super-resolution baseline (Sec. 4.2)."""
    return F.mse_loss(images.float(), target.float())


#: |logit| beyond which :func:`saturation_loss` pushes back: 0.5 * (tanh(2.5) + 1) is 1.7 grey levels from
#: 0 or 255, so a network held inside it writes no clipped values.
SATURATION_BOUND = 2.5


def saturation_loss(logits: torch.Tensor, bound: float = SATURATION_BOUND) -> torch.Tensor:
    """Mean of ``max(0, |logits| - bound)^2`` over the inputs of the output tanh (the paper's scaled
    tanh, Sec. 3.1). Not in the paper. Why: tanh reaches black or white only as its input goes to
    infinity, and its slope there, ~4 exp(-2|x|), vanishes; a region pushed far out once (the network's
    input goes well beyond -40 on a short offline run) gets no gradient from any other term again and
    stays a flat clipped blob. This keeps every pixel where the objective can still move it."""
    return (logits.float().abs() - bound).relu().square().mean()


def setting_weight(value: object, setting: str) -> float:
    """``value`` as a weight: a finite number >= 0, or one line naming ``setting`` (the command line
    and YAML hand over strings such as ``abc`` and ``nan`` as readily as numbers)."""
    try:
        weight = math.nan if isinstance(value, bool) else float(value)  # type: ignore[arg-type]  # true is no 1.0
    except (TypeError, ValueError):
        weight = math.nan
    if not math.isfinite(weight) or weight < 0:
        raise StylenetError(f"{setting} must be a number >= 0, got {value!r}")
    return weight


#: ``loss.style_layer_weights`` that weighs each style layer as Gatys et al. 2016 do (:func:`gatys_layer_weights`).
GATYS_WEIGHTS = "gatys"


def gatys_layer_weights(layers: Sequence[str], setting: str) -> list[float]:
    """(N_l / 64)^2 per layer, N_l its VGG block's channels: Gatys et al. 2016 weigh their layers equally in
    E_l = sum((G - A)^2) / (4 N_l^2 M_l^2) (eq. 4-5), and our layer term (the mean over the N_l x N_l entries
    of Grams normalised by N_l M_l, Johnson's eq. 3-4) is 4 / N_l^2 of E_l: these weights make ours Gatys'
    up to one constant (in ``style_weight``), whichever layers are chosen, without ``normalize`` (which divides
    each layer's term by its own target's scale)."""
    weights = []
    for name in layers:
        match = re.fullmatch(r"(?:conv|relu)([1-5])_\d", name)
        if match is None:
            raise StylenetError(f"{setting}_weights={GATYS_WEIGHTS} weighs VGG conv/relu layers by their channels, "
                                f"got layer {name!r}")
        weights.append((BLOCK_WIDTHS[int(match[1]) - 1] / 64) ** 2)
    return weights


def spelt_out_layer_weights(loss: Any) -> Any:
    """``loss`` settings with ``style_layer_weights: gatys`` as the numbers it stands for: the same objective
    under either spelling (a run of gatys_vgg19's earlier list, [1, 4, 16, 64, 64], resumes under ``gatys``)."""
    if not isinstance(loss, Mapping) or loss.get("style_layer_weights") != GATYS_WEIGHTS:
        return loss
    layers = loss.get("style_layers") or list(DEFAULT_STYLE_LAYERS)
    try:
        weights = gatys_layer_weights([layers] if isinstance(layers, str) else list(layers), "loss.style_layer")
    except StylenetError:  # names gatys does not weigh: compared as spelt
        return loss
    return {**loss, "style_layer_weights": weights}


def layer_weights(layers: Mapping[str, float] | Sequence[str], per_layer: Sequence[float] | str | None,
                  setting: str) -> dict[str, float]:
    """Layer names (weights from ``per_layer``, default 1 each, or :data:`GATYS_WEIGHTS`) or a {layer: weight}
    mapping -> {layer: weight}, rejecting negative weights. One name alone (``loss.style_layers=relu1_2`` on the
    command line) is one layer, not a sequence of characters."""
    if isinstance(layers, str):
        layers = [layers]
    if isinstance(layers, Mapping):  # the settings are loss.style_layers.<layer>
        if per_layer is not None:  # (the mapping's were kept, these dropped without a word)
            raise StylenetError(f"{setting}s gives each layer its weight ({{layer: weight}}): set {setting}_weights "
                                f"to null, or give {setting}s as a list, got {setting}_weights={per_layer!r}")
        return {name: setting_weight(weight, f"{setting}s.{name}") for name, weight in layers.items()}
    if per_layer == GATYS_WEIGHTS:
        per_layer = gatys_layer_weights(layers, setting)
    repeated = sorted({name for name in layers if list(layers).count(name) > 1})
    if repeated:  # {layer: weight} would keep the last weight of each: one of the given weights lost
        raise StylenetError(f"{setting}s names {', '.join(repeated)} more than once: give each layer once")
    if per_layer is not None and (isinstance(per_layer, str) or not isinstance(per_layer, Sequence)):
        raise StylenetError(f"{setting}_weights must be a list of numbers, one per layer, or {GATYS_WEIGHTS}, "
                            f"got {per_layer!r}")
    per_layer = [1.0] * len(layers) if per_layer is None else list(per_layer)
    if len(per_layer) != len(layers):
        raise StylenetError(f"{setting}_weights has {len(per_layer)} values for "
                            f"{len(layers)} layers {list(layers)}")
    return {name: setting_weight(weight, f"{setting}_weights[{index}] ({name})")
            for index, (name, weight) in enumerate(zip(layers, per_layer, strict=True))}


def lua_to_ours(content: float, style: float, tv: float, *, batch_size: int = 4,
                image_size: int = 256) -> dict[str, float]:
    """Johnson's Lua weights (``-content_weights``, ``-style_weights``, ``-tv_strength``) in our units.

    The Lua objective is ``content * MSE(phi) + style * sum_j MSE(G_j) + TV``, on Caffe VGG-16 features of
    0-255 BGR mean-subtracted images (phi at relu3_3, its default ``-content_layers 16``, not the paper's
    relu2_2: a content weight converts only at its own layer), with ``nn.MSECriterion`` means (the same
    per-term reductions as ours, so no C_j^2 factor enters), and a TV module whose gradient is that of
    ``tv * 0.5 * sum(dx^2 + dy^2)`` over the whole batch in 0-255 units. Exact conversions: pixels x255, the TV
    sum over B*C*H*W values where ours is a per-value mean (so it holds at the Lua run's batch size and
    image size; ours does not change with them), and the common factor ``CAFFE_FEATURE_SCALE^2`` by which
    the whole objective is divided. Approximate: content terms grow as the feature scale squared and Gram
    terms as its fourth power only if Caffe's weights equalled torchvision's up to the input scaling; they
    are different trainings of VGG-16, so each layer's real ratio differs from ``CAFFE_FEATURE_SCALE``
    (which is why pytorch/examples' 1e10 / 1e5 is not exactly 5 * 57.6^2)."""
    scale = CAFFE_FEATURE_SCALE
    values = batch_size * 3 * image_size * image_size
    return {"content_weight": content, "style_weight": style * scale**2,
            "tv_weight": tv * 0.5 * 255**2 * values / scale**2}


def style_blend(weights: Sequence[float] | None, count: int) -> list[float]:
    """The weights of ``count`` style images' Gram targets (None: equal), refused with one line unless
    finite, >= 0, not all zero and one per image; as fractions of the largest (:meth:`PerceptualLoss.set_style`
    normalises them by their sum, which [1e308, 1e308] would overflow: the targets became zeros)."""
    blend = [1.0] * count if weights is None else [float(weight) for weight in weights]
    if len(blend) != count or not all(math.isfinite(b) and b >= 0 for b in blend) or max(blend, default=0) <= 0:
        raise StylenetError(f"style weights {blend} must be finite, >= 0, not all zero, one per style image")
    return [b / max(blend) for b in blend]


class PerceptualLoss(nn.Module):
    """The full objective ``content_weight * l_feat + style_weight * l_style + tv_weight * l_tv
    (+ pixel_weight * l_pixel)`` over a frozen VGG, with the style targets computed once.

    ``forward`` returns a dict of the unweighted terms (``content``, ``style``, ``style/<layer>``,
    ``tv``, ``pixel``; only those with a non-zero weight) and the weighted ``total``.
    """

    def __init__(
        self,
        weights: str = "imagenet",
        arch: str = "vgg16",
        seed: int = 0,
        content_layers: Mapping[str, float] | Sequence[str] | None = None,
        style_layers: Mapping[str, float] | Sequence[str] | None = None,
        style_layer_weights: Sequence[float] | str | None = None,
        content_weight: float = 1.0,
        style_weight: float = 1e5,
        tv_weight: float = 7.7,
        pixel_weight: float = 0.0,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(normalize, bool):  # bool("no") is True
            raise StylenetError(f"loss.normalize must be true or false, got {normalize!r}")
        self.normalize = normalize
        # (N_l / 64)^2 on terms that are relative errors already would weigh relu5_1 64 times relu1_1
        if normalize and style_layer_weights == GATYS_WEIGHTS:
            raise StylenetError("loss.style_layer_weights=gatys weighs raw layer terms as Gatys et al. do; with "
                                "loss.normalize=true each term is a relative error already (the weights would "
                                "weigh relu5_1 64 times relu1_1): set one of them otherwise")
        self.term_weights = {term: setting_weight(weight, f"loss.{term}_weight") for term, weight in (
            ("content", content_weight), ("style", style_weight), ("tv", tv_weight), ("pixel", pixel_weight))}
        if not any(self.term_weights.values()):  # the total was the int 0: a traceback at the first step
            raise StylenetError("every term's weight is 0 (loss.content_weight, loss.style_weight, loss.tv_weight, "
                                "loss.pixel_weight): there is nothing to optimise")
        if normalize and weights not in ("calibrated", "random"):  # (relative errors of shallow layers: README)
            log.warning("loss.normalize=true is the offline network's (loss=offline): with loss.weights=%s, "
                        "loss=perceptual is the paper's objective", weights)
        check_seed(seed, "loss.seed")
        self.content_layers = layer_weights(
            DEFAULT_CONTENT_LAYERS if content_layers is None else content_layers, None, "loss.content_layer")
        self.style_layers = layer_weights(
            DEFAULT_STYLE_LAYERS if style_layers is None else style_layers, style_layer_weights, "loss.style_layer")
        for term in ("content", "style"):
            if self.term_weights[term] > 0 and not getattr(self, f"{term}_layers"):
                raise StylenetError(f"loss.{term}_layers is empty but loss.{term}_weight is "
                                    f"{self.term_weights[term]:g}: name a layer or set the weight to 0")
        if self.term_weights["content"] == 0:
            self.content_layers = {}
        if self.term_weights["style"] == 0:
            self.style_layers = {}
        layers = {*self.content_layers, *self.style_layers}
        self.vgg = VGGFeatures(layers, arch=arch, weights=weights, seed=seed) if layers else None
        self.has_style_targets = False

    @property
    def smallest_side(self) -> int:
        """The smallest image side the loss network accepts: every 2x2 pooling before its deepest layer
        must still have a pixel to pool (1 without a network)."""
        return 2 ** sum(name.startswith("pool") for name in self.vgg.names) if self.vgg is not None else 1

    def check_side(self, width: int, height: int, what: str, advice: str = "") -> None:
        """Refuse ``what`` (a style picture, a training crop, Gatys' coarsest image) of ``width`` x ``height``
        px if it is smaller than :attr:`smallest_side`: a pooling's traceback otherwise, mid-run."""
        if min(width, height) < self.smallest_side:
            raise StylenetError(f"{what} is {width}x{height} px, but the loss network needs at least "
                                f"{self.smallest_side} px a side" + (f"; {advice}" if advice else ""))

    @property
    def needs_style(self) -> bool:
        return bool(self.style_layers)

    @torch.no_grad()
    def set_style(self, styles: Sequence[torch.Tensor], blend: Sequence[float] | None = None, *,
                  separate: bool = False) -> None:
        """Compute the style targets once: Gram matrices of each (3, H, W) style image, mixed with
        ``blend`` weights (normalised to sum to 1) when several styles are given; with ``separate``
        each image stays its own target, k, chosen per sample by ``forward(style=...)`` (a network
        of several styles, Dumoulin et al. 2017)."""
        if not self.needs_style:
            return
        for index, style in enumerate(styles):
            which = f"style image {index + 1} of {len(styles)}" if len(styles) > 1 else "a style image"
            self.check_side(style.shape[-1], style.shape[-2], which)
        blend = style_blend(blend, len(styles))
        total = sum(blend)
        for name in self.style_layers:
            grams = [gram_matrix(self.vgg(s.unsqueeze(0).to(self.device), [name])[name]) for s in styles]
            if separate:
                target = torch.cat(grams)  # (N, C, C)
            else:
                target = torch.stack([w / total * gram for gram, w in zip(grams, blend, strict=True)]).sum(0)
            self.register_buffer(f"target_gram_{name}", target, persistent=False)
            scale = target.pow(2).mean((1, 2)).clamp_min(1e-12) if self.normalize else torch.ones(len(target))
            self.register_buffer(f"style_scale_{name}", scale.to(target.device), persistent=False)
        self.has_style_targets = True

    def target_gram(self, layer: str) -> torch.Tensor:
        """The (1, C, C) style target of ``layer``, (N, C, C) for separate targets (a non-persistent
        buffer: recomputed, never saved)."""
        return getattr(self, f"target_gram_{layer}")

    def style_layer_loss(self, layer: str, gram: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        """:func:`style_reconstruction_loss` of one layer's (B, C, C) Grams against each sample's
        target (``style`` (B,) indexes separate targets), over the target's scale."""
        target, scale = self.target_gram(layer), getattr(self, f"style_scale_{layer}")
        if style is not None:
            target, scale = target[style], scale[style]
        elif len(target) != 1:
            raise StylenetError(f"{len(target)} separate style targets: pass style= (one index per sample)")
        return ((gram - target).pow(2).mean((1, 2)) / scale).mean()

    def content_scale(self, target: torch.Tensor) -> torch.Tensor | float:
        """What the content term of one layer is divided by: 1, or with ``normalize`` the mean square
        of the target features (so the term is a relative error)."""
        return target.float().pow(2).mean().clamp_min(1e-12) if self.normalize else 1.0

    @property
    def device(self) -> torch.device:
        return self.vgg.mean.device if self.vgg is not None else torch.device("cpu")

    @torch.no_grad()
    def content_targets(self, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """VGG features of the content images, only up to the deepest content layer."""
        return self.vgg(content, self.content_layers) if self.content_layers else {}

    def forward(
        self,
        output: torch.Tensor,
        content: torch.Tensor | None = None,
        content_features: Mapping[str, torch.Tensor] | None = None,
        style: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms for ``output`` against the content images (or their precomputed features)
        and the stored style targets; ``style`` (B,) picks each sample's target when they are
        separate (``set_style(..., separate=True)``)."""
        if self.needs_style and not self.has_style_targets:
            raise StylenetError("the style targets are not set: call set_style() first")
        if self.content_layers and content_features is None:
            if content is None:
                raise StylenetError("the content loss needs the content images or their features")
            content_features = self.content_targets(content)
        terms: dict[str, torch.Tensor] = {}
        features = self.vgg(output, {*self.content_layers, *self.style_layers}) if self.vgg else {}
        if self.content_layers:
            terms["content"] = sum(w * feature_reconstruction_loss(features[name], content_features[name])
                                   / self.content_scale(content_features[name])
                                   for name, w in self.content_layers.items())
        if self.style_layers:
            for name in self.style_layers:
                terms[f"style/{name}"] = self.style_layer_loss(name, gram_matrix(features[name]), style)
            terms["style"] = sum(w * terms[f"style/{name}"] for name, w in self.style_layers.items())
        if self.term_weights["tv"] > 0:
            terms["tv"] = total_variation_loss(output)
        if self.term_weights["pixel"] > 0:
            if content is None:
                raise StylenetError("the pixel loss needs the target images")
            terms["pixel"] = pixel_loss(output, content)
        terms["total"] = sum(self.term_weights[term] * terms[term] for term in self.term_weights if term in terms)
        return terms
