"""The optimisation baseline: Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural
Networks" (CVPR 2016), on exactly the objective the feed-forward networks are trained with.

Gatys et al. optimise the pixels of one image until its VGG features match the content photo and
its Gram matrices match the style; Johnson et al. 2016 train a network to do the same in one pass
and compare the two in Table 1 (speed) and Fig. 5 (objective reached). For that comparison to mean
anything, both sides must use the same loss: here the image is scored by
:class:`stylenet.losses.PerceptualLoss` called exactly as training calls it, so the numbers are
comparable by construction.

Conventions (and why):

* **Iterations are optimiser iterations**, the unit of Johnson et al.'s Table 1: one L-BFGS
  iteration is one search direction plus a strong-Wolfe line search (usually one objective
  evaluation, sometimes more), and one more at the projected point whenever the projection below
  moved a pixel (about two in all, measured on the offline loss network); one Adam iteration is
  one evaluation. Evaluations are counted separately in :attr:`GatysResult.evaluations`.
* **L-BFGS uses** ``line_search_fn="strong_wolfe"``: without it, ``torch.optim.LBFGS`` with lr 1
  barely moves this objective (measured: -19% after 160 evaluations versus 170x lower with it).
* **Pixels are projected onto [0, 1] after every iteration** (projected L-BFGS / Adam). Every
  reported objective is that of a valid image, the same kind of image a network's scaled tanh
  emits, so Fig. 5 compares like with like.
* **Colour preservation** is the luminance-only transfer of Gatys et al. 2016, "Preserving Color
  in Neural Artistic Style Transfer": the content and style are reduced to luminance (the style's
  mean and spread matched to the content's), the grey image is optimised, and the content's
  chroma is put back (see :func:`with_content_chroma`). Luma and resizing are
  :mod:`stylenet.image`'s and the colour controls :mod:`stylenet.inference`'s, shared with
  ``stylenet-stylize``, so the optimiser and the networks preserve colour with the same arithmetic.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from stylenet.devices import available_memory
from stylenet.devices import resolve_device as resolve_any_device
from stylenet.errors import StylenetError
from stylenet.image import (
    DEFAULT_MAX_PIXELS,
    load_rgb,
    luma,
    resize,
    resolve_image_path,
)
from stylenet.inference.controls import Controls
from stylenet.losses import PerceptualLoss

OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise", "style")
#: default learning rates: L-BFGS takes unit steps scaled by its line search; Adam moves each
#: pixel by about lr per step (0.02 lowered this objective 700x in 100 steps at 192 px).
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}
#: trial points per strong-Wolfe line search (torch's own default for ``max_ls``).
LINE_SEARCH_EVALUATIONS = 25
#: memory per activation value, in float32 feature maps: the forward keeps each conv output for the
#: backward pass, which holds gradients of about the same size (peak measured on the CPU at 512 px:
#: 2.3x; 3 leaves a margin).
ACTIVATION_FACTOR = 3
#: image-sized float32 buffers besides L-BFGS's history: the image, its gradient, the content,
#: the cached evaluation (point and gradient), the last finite image, the line search's copies.
IMAGE_BUFFERS = 12


@dataclass
class Progress:
    """What a callback sees after each iteration (``iteration`` counts all scales, from 1)."""

    iteration: int
    total: int
    scale: int
    #: the unweighted terms and the weighted ``total`` of the current image (python floats).
    terms: dict[str, float]
    #: the current image, (3, H, W) in [0, 1] on the optimisation device; a view: clone to keep it.
    image: torch.Tensor


@dataclass
class GatysResult:
    """The optimised image and how it got there."""

    #: (3, H, W) in [0, 1]: the last image whose objective was finite, colours restored if asked.
    image: torch.Tensor
    #: the objective terms of the optimised image (before any colour restoration).
    terms: dict[str, float]
    #: the objective at the start and after each iteration (``iterations + 1`` values per scale).
    history: list[float] = field(default_factory=list)
    iterations: int = 0
    evaluations: int = 0
    #: why the optimisation stopped early (a non-finite objective), or None.
    stopped: str | None = None


class NonFiniteObjective(Exception):
    """The objective became NaN or infinite; carries its terms for the message."""

    def __init__(self, terms: dict[str, float]) -> None:
        super().__init__(", ".join(f"{name}={value:.4g}" for name, value in terms.items()))
        self.terms = terms


#: what ``device=auto`` tries before the CPU: CUDA only, the documented meaning of ``stylenet-gatys
#: device=auto`` (configs/gatys.yaml), kept so that Gatys runs on a Mac do not move to MPS unannounced.
ACCELERATORS = ("cuda",)


def resolve_device(spec: str, hint: str = "device=cpu") -> torch.device:
    """:func:`stylenet.devices.resolve_device` with :data:`ACCELERATORS`. ``hint`` is how the
    caller's users ask for the CPU (Hydra's ``device=cpu`` by default, ``--device cpu`` for argparse)."""
    return resolve_any_device(spec, hint=hint, accelerators=ACCELERATORS)


def read_image(spec: str | Path, what: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """A (3, H, W) image from a path or ``demo:<name>``, of at most ``max_pixels`` (None: any); errors name
    the setting and the file."""
    try:
        return load_rgb(resolve_image_path(spec), max_pixels=max_pixels)
    except StylenetError as err:
        raise StylenetError(f"{what}: {err}") from None


def resize_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """:func:`stylenet.image.resize` to exactly (height, width), clamped to [0, 1]: every image the
    optimiser starts from or is scored against must be a valid image (see the module docstring)."""
    return resize(image, (height, width), clamp=True)


#: luminance on all three channels: what the loss network sees in luminance-only transfer.
GREY = Controls(gray=True)
#: the content's chroma with the optimised luminance (the same control as ``stylenet-stylize``'s).
PRESERVE_COLOR = Controls(preserve_color=True)


def match_luminance(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The style's grey image with its luminance mean and standard deviation set to the content's
    (Gatys et al. 2016, "Preserving Color", eq. 1), so the content keeps its overall brightness."""
    style_y, content_y = luma(style), luma(content)
    scale = content_y.std() / style_y.std().clamp_min(1e-6)
    matched = (style_y - style_y.mean()) * scale + content_y.mean()
    return matched.clamp(0, 1).expand_as(style).contiguous()


def with_content_chroma(image: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """``image``'s luminance with ``content``'s chroma (Cb, Cr of BT.601 YCbCr): the
    ``preserve_color`` of :class:`stylenet.inference.Controls`, after resizing the content to the
    image, which is smaller at the coarse scales of :func:`optimize_image`'s pyramid."""
    return PRESERVE_COLOR.apply(image, resize_to(content, *image.shape[-2:]))


def activation_values(loss: PerceptualLoss, height: int, width: int) -> int:
    """Number of feature values one pass of the loss network produces for an H x W image (every
    conv output and pooled map up to the deepest layer the objective uses)."""
    if loss.vgg is None:
        return 0
    total, channels = 0, 3
    for index, name in enumerate(loss.vgg.names):
        if name.startswith("conv"):
            channels = getattr(loss.vgg, f"weight{index}").shape[0]
        elif name.startswith("pool"):
            height, width = height // 2, width // 2
        else:
            continue  # ReLUs run in place
        total += channels * height * width
    return total


def estimate_memory(loss: PerceptualLoss, height: int, width: int, optimizer: str | None = "lbfgs",
                    history_size: int = 100) -> int:
    """Bytes that optimising one H x W image needs, roughly: the loss network's activations kept for
    the backward pass, plus image-sized buffers (L-BFGS keeps ``2 * history_size`` of them, Adam 2);
    ``optimizer`` None: an image scored, not optimised (a style image's Grams), with no optimiser state."""
    image_values = 3 * height * width
    state = {"lbfgs": 2 * history_size, "adam": 2}.get(optimizer or "", 0)
    buffers = IMAGE_BUFFERS + state
    return 4 * (ACTIVATION_FACTOR * activation_values(loss, height, width) + buffers * image_values)


def check_memory(loss: PerceptualLoss, height: int, width: int, optimizer: str | None, history_size: int,
                 device: torch.device, setting: str = "size") -> None:
    """Refuse, before any work, an image size whose estimated footprint exceeds the free memory,
    instead of being killed by the OOM killer an hour later; ``setting`` is the one to lower;
    ``optimizer`` None for a style image (see :func:`estimate_memory`)."""
    needed, free = estimate_memory(loss, height, width, optimizer, history_size), available_memory(device)
    if free is not None and needed > free:
        gib = 1024**3
        more = ", optimizer=adam or a smaller history_size" if optimizer == "lbfgs" and setting == "size" else ""
        held = f"VGG activations + {optimizer} state" if optimizer else "VGG activations"
        raise StylenetError(
            f"a {width}x{height} image needs about {needed / gib:.1f} GiB on {device} ({held}), but only "
            f"{free / gib:.1f} GiB is free; use a smaller {setting}{more}")


def check_style_term(loss: PerceptualLoss, choose: str) -> None:
    """Refuse an objective without a style term (``loss=pixel``, a style weight of 0): the photo is then
    its own optimum, and the "result" the photo untouched (every style layer weighted 0 is none either).
    ``choose`` names the settings that have one."""
    if not loss.needs_style or not loss.term_weights["style"] > 0 or not any(
            weight > 0 for weight in loss.style_layers.values()):
        raise StylenetError(f"the loss has no style term to optimise: choose {choose}")


def check_sizes(shape: Sequence[int], scales: int, styles: Sequence[torch.Tensor], loss: PerceptualLoss) -> None:
    """Refuse a result of (H, W) ``shape`` whose coarsest scale, or a style image, is too small for the loss
    network (``PerceptualLoss.smallest_side``): the result first, since a style's size follows the result's
    unless ``style_size`` is set."""
    height, width = halved(*shape, min(scales - 1, 64))  # (not the whole list: a mistyped scales=300000 hung)
    loss.check_side(width, height, "the coarsest image" if scales > 1 else "the image",
                    "use a larger size or fewer scales")
    for index, style in enumerate(styles):
        loss.check_side(style.shape[-1], style.shape[-2], f"style image {index + 1} of {len(styles)}"
                        if len(styles) > 1 else "the style image", "use a larger style_size")


class CachedObjective:
    """The L-BFGS/Adam closure: the objective and its gradient, remembered for the last point.

    The loop below runs the optimiser one iteration per ``step()`` so that progress bars,
    snapshots and TensorBoard see every iteration. ``LBFGS.step()`` starts by evaluating the point
    where the previous line search ended, and the loop evaluates the current image to report it:
    remembering the last evaluation makes both free, so stepping one iteration at a time costs what
    ``LBFGS(max_iter=n)`` would. Content features are computed once, not at every evaluation.
    """

    def __init__(self, loss: PerceptualLoss, image: torch.Tensor, content: torch.Tensor) -> None:
        self.loss, self.image, self.content = loss, image, content  # a (1, 1, H, W) image: grey, as RGB
        self.content_features = loss.content_targets(content)
        self.evaluations = 0
        self.point: torch.Tensor | None = None
        self.grad = torch.empty(0)
        self.terms: dict[str, torch.Tensor] = {}

    def __call__(self) -> torch.Tensor:
        if self.point is None or not torch.equal(self.point, self.image.detach()):
            self.image.grad = None
            rgb = self.image.expand(-1, 3, -1, -1)
            terms = self.loss(rgb, self.content, content_features=self.content_features)
            if not torch.isfinite(terms["total"]):
                raise NonFiniteObjective({name: float(value.detach()) for name, value in terms.items()})
            terms["total"].backward()
            self.evaluations += 1
            self.point, self.grad = self.image.detach().clone(), self.image.grad.clone()
            self.terms = {name: value.detach() for name, value in terms.items()}
        self.image.grad = self.grad.clone()
        return self.terms["total"]

    def current_terms(self) -> dict[str, float]:
        """Evaluate (or recall) the objective of the current image, as python floats."""
        self()
        return {name: float(value) for name, value in self.terms.items()}


def check_settings(*, iterations: int, optimizer: str, lr: float | None, history_size: int,
                   init: str | torch.Tensor = "content", scales: int = 1) -> None:
    """Reject bad optimisation settings with a one-line error naming the setting, before any work."""
    problems = [
        (iterations < 0, f"iterations must be >= 0, got {iterations}"),
        (optimizer not in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}"),
        (lr is not None and not 0 < lr < math.inf,
         f"lr must be a finite number > 0 (or null for the optimiser's default), got {lr}"),
        (history_size < 1, f"history_size must be >= 1, got {history_size}"),
        (isinstance(init, str) and init not in INITS, f"init must be one of {', '.join(INITS)}, got {init}"),
        (scales < 1, f"scales must be >= 1, got {scales}"),
    ]
    for bad, message in problems:
        if bad:
            raise StylenetError(message)


def make_optimizer(name: str, image: torch.Tensor, lr: float | None,
                   history_size: int) -> torch.optim.Optimizer:
    """L-BFGS with a strong-Wolfe line search, one iteration per ``step()``, or Adam."""
    lr = DEFAULT_LR[name] if lr is None else float(lr)
    if name == "adam":
        return torch.optim.Adam([image], lr=lr)
    return torch.optim.LBFGS([image], lr=lr, max_iter=1, max_eval=1 + LINE_SEARCH_EVALUATIONS,
                             history_size=history_size, line_search_fn="strong_wolfe")


def optimize(content: torch.Tensor, loss: PerceptualLoss, *, iterations: int = 500, optimizer: str = "lbfgs",
             lr: float | None = None, history_size: int = 100, init: str | torch.Tensor = "content",
             seed: int = 0, callback: Callable[[Progress], None] | None = None, grey: bool = False) -> GatysResult:
    """Optimise one image at the content's size against ``loss``, whose style targets are already set.

    Args:
        content: (3, H, W) in [0, 1]; the output has its size.
        loss: the objective, style targets set (``loss.set_style``), on the device to use.
        iterations: optimiser iterations (see the module docstring).
        init: ``content``, ``noise`` (uniform, seeded by ``seed``) or a (3, H, W) starting image.
        callback: called after every iteration with the current image and objective terms.
        grey: optimise one luminance channel, seen by the loss as three equal ones: the luminance-only
            transfer of Gatys et al. 2016, "Preserving Color" (Sec. 2), whose result stays grey (three
            free channels drift apart, and the objective would not be that of the luminance kept).

    A non-finite objective stops the run; the result then holds the last finite image and says why
    in ``stopped``.
    """
    check_settings(iterations=iterations, optimizer=optimizer, lr=lr, history_size=history_size, init=init)
    device = loss.device
    content = content.to(device).unsqueeze(0)  # (1, 3, H, W)
    if isinstance(init, torch.Tensor):
        start = init.to(device).unsqueeze(0)
    elif init == "content":
        start = content
    elif init == "noise":
        shape = (1, 1 if grey else 3, *content.shape[-2:])
        start = torch.rand(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    else:
        raise StylenetError(f"init={init} needs the style images: use optimize_image()")
    if grey and start.shape[1] == 3:
        start = luma(start)
    # contiguous: torch.optim.LBFGS flattens the gradient with view(-1), which a 1 x 1 photo's
    # channels-last strides (an HWC decode, permuted) would refuse
    image = start.detach().clone(memory_format=torch.contiguous_format).clamp_(0, 1).requires_grad_(True)
    objective = CachedObjective(loss, image, content)
    solver = make_optimizer(optimizer, image, lr, history_size)
    last_good = image.detach().expand(-1, 3, -1, -1).clone()  # (1, 3, H, W)
    try:
        terms = objective.current_terms()
    except NonFiniteObjective as err:
        return GatysResult(last_good[0], err.terms, [], 0, objective.evaluations,
                           f"the objective is not finite ({err}) at the initial image")
    history, done, stopped = [terms["total"]], 0, None
    for iteration in range(1, iterations + 1):
        try:
            solver.step(objective)
            with torch.no_grad():
                image.clamp_(0, 1)
            current = objective.current_terms()
        except NonFiniteObjective as err:
            stopped = (f"the objective became non-finite ({err}) during iteration {iteration}; "
                       f"kept the image of iteration {done}")
            break
        if (optimizer == "lbfgs" and current["total"] >= history[0]
                and torch.equal(image.detach(), last_good[:, :image.shape[1]])
                and image.grad is not None and image.grad.abs().max() > solver.defaults["tolerance_grad"]):
            # its line search found no step down from the start (a run that converged went down; a start at the
            # minimum has no gradient), and every later iteration would try the same direction
            stopped = (f"L-BFGS made no progress in iteration {iteration}: its line search found no step that "
                       "lowers the objective from this image (large flat areas do this: max-pooling's ties give "
                       "no direction of descent); optimizer=adam, or init=noise, moves it")
            break
        terms, done = current, iteration
        last_good.copy_(image.detach().expand_as(last_good))
        history.append(terms["total"])
        if callback is not None:
            callback(Progress(iteration, iterations, 0, terms, last_good[0]))
    return GatysResult(last_good[0], terms, history, done, objective.evaluations, stopped)


def style_at(style: torch.Tensor, shrink: int, smallest_side: int) -> torch.Tensor:
    """A (3, H, W) style picture shrunk ``shrink`` times for a coarse scale of :func:`optimize_image`, its
    short side not below ``smallest_side`` (the loss network's: the picture's aspect ratio kept)."""
    if shrink == 1:
        return style
    height, width = style.shape[-2:]
    factor = max(1 / shrink, min(1.0, smallest_side / min(height, width)))
    return resize_to(style, max(1, round(height * factor)), max(1, round(width * factor)))


def halved(height: int, width: int, times: int) -> tuple[int, int]:
    """(height, width) halved ``times`` times, at least 1 px each."""
    return max(1, round(height / 2**times)), max(1, round(width / 2**times))


def scale_shapes(height: int, width: int, scales: int) -> list[tuple[int, int]]:
    """Coarse-to-fine shapes: halving ``scales - 1`` times, coarsest first, ending at (height, width)."""
    return [halved(height, width, k) for k in range(scales - 1, -1, -1)]


def optimize_image(content: torch.Tensor, styles: Sequence[torch.Tensor], loss: PerceptualLoss, *,
                   style_weights: Sequence[float] | None = None, iterations: int = 500,
                   optimizer: str = "lbfgs", lr: float | None = None, history_size: int = 100,
                   init: str | torch.Tensor = "content", scales: int = 1, preserve_color: bool = False,
                   seed: int = 0, callback: Callable[[Progress], None] | None = None) -> GatysResult:
    """Gatys et al. 2016 style transfer of ``content`` (3, H, W) with the blend of ``styles``.

    Optimises with :func:`optimize` at each scale of a coarse-to-fine pyramid (``scales`` levels, each
    half the size of the next, each run for ``iterations`` iterations and started from the previous result
    upsampled), against the style targets (``loss.set_style``) of the styles shrunk alike (:func:`style_at`);
    coarse scales settle the large structures cheaply, as in Gatys et al. 2017, "Controlling Perceptual
    Factors". The ``loss`` is left with the targets of the last scale run.
    ``init=style`` starts from the first style image stretched to the content's shape; a (3, h, w)
    image (an interrupted run's result, to go on from it) is stretched likewise.
    """
    check_settings(iterations=iterations, optimizer=optimizer, lr=lr, history_size=history_size, init=init,
                   scales=scales)
    check_sizes(content.shape[-2:], scales, styles, loss)
    # no iterations: no pyramid either (down and up again, it would only blur the start)
    shapes = scale_shapes(*content.shape[-2:], scales if iterations else 1)
    content = content.to(loss.device)
    target = GREY.apply(content, None) if preserve_color else content
    if preserve_color:
        styles = [match_luminance(style.to(content.device), content) for style in styles]
    if isinstance(init, torch.Tensor) and (init.ndim != 3 or init.shape[0] != 3):
        raise StylenetError(f"init must be a (3, H, W) image, got a tensor of shape {tuple(init.shape)}")
    if isinstance(init, torch.Tensor):  # its luminance alone where the colours are the content's
        start: str | torch.Tensor = GREY.apply(init.to(content.device), None) if preserve_color else init
    else:
        start = styles[0] if init == "style" else init
    total = iterations * scales
    history: list[float] = []
    evaluations = 0

    def readout(image: torch.Tensor) -> torch.Tensor:
        return with_content_chroma(image, content) if preserve_color else image

    for scale, (height, width) in enumerate(shapes):
        offset = scale * iterations
        # each scale's style targets from the styles shrunk with the image (Gatys et al. 2017, Sec. 5: the
        # low-resolution pass stylises the downsampled pair), the pattern's size kept to the image's
        shrink = 2 ** (len(shapes) - 1 - scale)
        loss.set_style([style_at(style, shrink, loss.smallest_side) for style in styles], style_weights)

        def report(progress: Progress, scale: int = scale, offset: int = offset) -> None:
            callback(replace(progress, iteration=offset + progress.iteration, total=total, scale=scale,
                             image=readout(progress.image)))

        result = optimize(resize_to(target, height, width), loss, iterations=iterations, optimizer=optimizer,
                          lr=lr, history_size=history_size, seed=seed, callback=report if callback else None,
                          init=resize_to(start, height, width) if isinstance(start, torch.Tensor) else start,
                          grey=preserve_color)
        history += result.history
        evaluations += result.evaluations
        start = result.image
        if result.stopped:
            result.stopped += f" (scale {scale + 1} of {scales}, {width}x{height} px)" if scales > 1 else ""
            break
    image = result.image
    if image.shape[-2:] != content.shape[-2:]:  # stopped at a coarse scale: at full size, as an interrupted run's
        image = resize_to(image, *content.shape[-2:])
    return replace(result, image=readout(image), history=history, evaluations=evaluations,
                   iterations=offset + result.iterations)


def parse_comparison_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                          counts: Sequence[str], requirements: str, results: Sequence[str] = ()) -> argparse.Namespace:
    """Parse the command line of a network-versus-Gatys comparison (scripts/reproduce_table1.py,
    scripts/reproduce_fig5.py): one place for the limits the two reproductions share.

    Refused, with ``requirements`` as the usage error (exit status 2): ``--sizes`` under 8 px (the
    smallest side the default objective's VGG layers accept: three 2x2 poolings), ``--iterations``
    under 1, and any of the script's own integer options ``counts`` (argparse destinations) under 1.
    An ``--out`` folder that cannot be written is refused too, before the measuring rather than after, and
    one that holds any of the files ``results`` the run writes (an earlier run's hours of measuring).
    """
    from stylenet.atomic import unwritable

    args = parser.parse_args(argv)
    if min(args.sizes) < 8 or min(args.iterations) < 1 or any(getattr(args, count) < 1 for count in counts):
        parser.error(requirements)
    reason = unwritable(Path(args.out) / "results")  # a file in the folder: the folder must be one
    if reason:
        parser.error(f"cannot write into --out {args.out!r}: {reason}")
    earlier = next((name for name in results if (Path(args.out) / name).exists()), None)
    if earlier is not None:
        parser.error(f"--out {args.out!r} holds an earlier run's {earlier}: pass another --out (or move it away)")
    return args
