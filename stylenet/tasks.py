"""Lightning tasks: what one training step of a feed-forward image network optimises.

:class:`StyleTransferTask` is Johnson et al. 2016, Sec. 3-4.1: a :class:`TransformerNet` trained
with Adam against the frozen-VGG objective of :mod:`stylenet.losses`, one network per style.
:class:`SuperResolutionTask` is Sec. 4.2: a :class:`SuperResolutionNet` trained the same way to map
low-resolution patches to their high-resolution originals. Both share :class:`ImageTask`'s training
step, optimiser and logging. Lightning owns the loop, checkpointing, precision, DDP and logging.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from stylenet import StylenetError, __version__, quality
from stylenet.checkpoints import WEIGHTS_SHA256
from stylenet.errors import first_rank
from stylenet.fastpath import prepare_for_training
from stylenet.image import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    load_rgb,
    read_image_size,
    resize_long_side,
    resolve_image_path,
)
from stylenet.losses import PerceptualLoss, pixel_loss, saturation_loss, setting_weight
from stylenet.metrics import sr_scores, upscale_bicubic
from stylenet.modelfile import read_model
from stylenet.nets import SuperResolutionNet, TransformerNet
from stylenet.styles import check_style_names, file_sha256, style_name_of, style_records
from stylenet.temporal import TemporalConsistency, split_temporal_weight

log = logging.getLogger(__name__)

#: A URL (``https://...``, ``s3://...``): pathlib would read it as a path with one slash lost.
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class StyleImage:
    """One style a run trains: its name, its (3, H, W) image at ``style.size``, and what the model
    file records of it (:meth:`record`)."""

    name: str
    image: torch.Tensor
    spec: str
    sha256: str

    def record(self) -> dict[str, str]:
        """The style's entry in a model file's ``styles`` (see :mod:`stylenet.styles`)."""
        return {"name": self.name, "sha256": self.sha256, "image": self.spec}


def load_styles(style: dict[str, Any]) -> list[StyleImage]:
    """``style.image`` (one style) or ``style.images`` (several in one network, Dumoulin et al. 2017),
    named by ``style.names`` or their files' stems, each resized to ``style.size``."""
    size, specs = style.get("size", 256), style.get("images")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise StylenetError(f"style.size must be a whole number of pixels >= 1, got {size!r}")
    if specs is None:
        if style.get("names") is not None:  # +style.names beside one style.image: read by nothing, said to be
            raise StylenetError(f"style.names ({style['names']!r}) names the styles of style.images; the one style "
                                "of style.image is named by style.name")
        image, path = load_style_image(style.get("image"), size, "style.image")
        name = check_style_names([str(style["name"])], "style.name")[0] if style.get("name") is not None \
            else style_name_of(path)  # (style.name='' is refused: the outputs would be photo_.png)
        return [StyleImage(name, image, recorded_spec(style.get("image")), file_sha256(path))]
    if isinstance(specs, str) or not specs:
        raise StylenetError(f"style.images must be a list of style images, e.g. 'style.images=[a.jpg,b.jpg]', "
                            f"got {specs!r}")
    if style.get("image") is not None:  # +style.image beside style=multi, or +style.images beside one style's image
        raise StylenetError(f"style.image ({style['image']!r}) and style.images are both set, and a network trains "
                            "one or the other: for several styles use style=multi and list every picture in "
                            "style.images")
    if len(specs) == 1:  # a network of one style is style.image's (its file named after it, not "multi")
        raise StylenetError(f"style.images holds one image ({specs[0]!r}): a network of several styles needs two or "
                            f"more; for one style pass style=demo style.image={specs[0]}")
    named = style.get("names")
    if named is not None and (isinstance(named, str) or not isinstance(named, Sequence)
                              or not all(isinstance(name, str | int) and not isinstance(name, bool) for name in named)):
        raise StylenetError(f"style.names must be a list of names, one per style image, e.g. "
                            f"'style.names=[a,b]', got {named!r}")
    if named is not None and len(named) != len(specs):  # ([]: no names, not the files' stems)
        raise StylenetError(f"style.names has {len(named)} names for {len(specs)} style.images")
    styles = []
    for index, spec in enumerate(specs):
        image, path = load_style_image(spec, size, f"style.images[{index}]")
        name = str(named[index]) if named is not None else style_name_of(spec)
        styles.append(StyleImage(name, image, recorded_spec(spec), file_sha256(path)))
    check_distinct_pictures([style.record() for style in styles], "style.images")  # one picture twice, first
    check_style_names([style.name for style in styles], "style.names" if named is not None else
                      "style.images (named after their files: set style.names=[...])")
    return styles


def recorded_spec(spec: Any) -> str:
    """A style picture as a model file records it: ``demo:<name>``, or the file's absolute path, so that a
    later run from another folder (``task=add_style``, its per-style reports) finds it."""
    text = str(spec)
    return text if text.startswith("demo:") else str(Path(text).expanduser().absolute())


def check_distinct_pictures(records: list[dict[str, Any]], setting: str) -> None:
    """One line naming ``setting`` where two styles (their records: name, sha256, image) are one picture,
    under two names or two paths: the network would train one style twice."""
    first: dict[str, dict[str, Any]] = {}
    for record in records:
        earlier = first.setdefault(record.get("sha256"), record)
        if earlier is not record and record.get("sha256"):
            raise StylenetError(f"{setting}: style {record['name']!r} ({record.get('image')!r}) is the same picture "
                                f"as style {earlier['name']!r} ({earlier.get('image')!r})")


def load_style_image(spec: str | None, size: int, setting: str = "style.image") -> tuple[torch.Tensor, Path]:
    """The style image as a (3, H, W) tensor with its long side resized to ``size``; errors name
    ``setting``, where it came from."""
    if spec in (None, "", "???"):
        raise StylenetError(f"{setting} is required: pass {setting}=/path/to/painting.jpg "
                            "(the presets' paintings are not shipped)")
    if URL.match(str(spec)):
        raise StylenetError(f"{setting} must be a local file, got {spec!r}: URLs are not downloaded (download it "
                            "and pass its path)")
    path = resolve_image_path(spec)
    if not path.is_file():
        what = "is a folder, not an image" if path.is_dir() else "does not exist"
        raise StylenetError(f"style image {str(path)!r} {what} ({setting})")
    try:
        width, height = read_image_size(path)
    except ImageError:
        width = height = 0  # load_rgb says what is wrong with it
    if width * height > DEFAULT_MAX_PIXELS:  # the photos' limit and its --max-pixels do not apply here
        raise StylenetError(f"style image {str(path)!r} is {width}x{height} px, beyond the {DEFAULT_MAX_PIXELS} pixels "
                            f"a style image may have ({setting}): shrink it first; it is resized to style.size={size} "
                            "px anyway")
    try:
        image = load_rgb(path)
    except ImageError as err:
        raise StylenetError(f"{setting}: {err}") from None
    return resize_long_side(image, size), path


#: what a training step does when a loss term is NaN or infinite (``task.nan_policy``).
NAN_POLICIES = ("stop", "skip")
#: The identity warm-up copies the photo clipped to [m, 1 - m] (5 grey levels): see StyleTransferTask.objective.
IDENTITY_MARGIN = 0.02


#: task.lr_schedule values (see :meth:`ImageTask.configure_optimizers`).
LR_SCHEDULES = ("constant", "cosine")


class NonFiniteLossError(StylenetError):
    """A loss term became NaN or infinite: stopping beats training on (black images, wasted hours)."""


class ImageTask(pl.LightningModule):
    """What every feed-forward image task shares: ``self.net`` maps :meth:`network_input` to an
    image that ``self.loss`` (a :class:`PerceptualLoss`) scores against ``batch["images"]``; Adam
    (Johnson et al. 2016, Sec. 4) on the network only; loss terms and image grids in TensorBoard.
    Subclasses build ``self.net`` and ``self.loss`` and add validation.

    A non-finite loss never reaches the optimiser: ``nan_policy="stop"`` raises
    :class:`NonFiniteLossError` naming the step, the term and the files (the weights, and so every
    checkpoint, stay finite); ``"skip"`` drops the batch and stops after ``max_nan_skips`` in a row."""

    net: torch.nn.Module
    loss: PerceptualLoss

    def __init__(self, lr: float, nan_policy: str = "stop", max_nan_skips: int = 5,
                 lr_schedule: str = "constant") -> None:
        super().__init__()
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise StylenetError(f"task.lr must be a finite number > 0, got {lr!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise StylenetError(f"task.lr_schedule must be {' or '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        if nan_policy not in NAN_POLICIES:
            raise StylenetError(f"task.nan_policy must be stop or skip, got {nan_policy!r}")
        if max_nan_skips < 1:
            raise StylenetError(f"task.max_nan_skips must be >= 1, got {max_nan_skips}")
        self.nan_policy, self.max_nan_skips, self.nan_skips = nan_policy, max_nan_skips, 0
        #: a batch since the last optimiser step was not skipped (see training_step): the step updates
        self.used_batch = False
        #: the validation grids being built: tag -> (the dimension parts join along, the batches' parts)
        self.val_grids: dict[str, tuple[int, list[torch.Tensor]]] = {}

    def record_loss_weights(self) -> None:
        """The sha256 of a ``loss.weights`` file in the hyper-parameters, as the style image's: a resume
        then knows the loss network by its file's content, not by the path as typed (another spelling of
        it, or another file put there: :func:`stylenet.checkpoints.checkpoint_problem`)."""
        if self.loss.vgg is not None and self.loss.vgg.weights_file is not None:
            self.hparams[WEIGHTS_SHA256] = file_sha256(self.loss.vgg.weights_file)

    def network_input(self, batch: dict[str, Any]) -> torch.Tensor:
        """What the network sees: the photos themselves (style transfer)."""
        return batch["images"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """Adam at ``task.lr``: constant, as in the paper, or with ``task.lr_schedule=cosine`` decayed to 0
        over the run (Loshchilov & Hutter, ICLR 2017, without restarts). A run of a few hundred steps
        stops wherever its last full-size steps left the weights, one seed's texture far from another's;
        the decay lets those steps settle (experiment=demo; README, "The offline loss network")."""
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)
        if self.lr_schedule == "constant":
            return optimizer
        if self.trainer.max_steps <= 0:  # the photo stream is endless: only max_steps says where the run ends
            raise StylenetError(f"task.lr_schedule=cosine needs trainer.max_steps > 0 (the steps to decay over), "
                                f"got {self.trainer.max_steps}")
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "step"}}

    def on_train_start(self) -> None:
        """A resumed run trains on at this run's ``task.lr``. Lightning restores the checkpoint's rate,
        so a rate lowered after a non-finite loss (what that error advises) would not apply. A cosine
        decay keeps its position, rescaled to the new peak."""
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                peak = group.get("initial_lr", group["lr"])  # a scheduler's peak, else the constant rate
                group["lr"] *= self.hparams.lr / peak
                if "initial_lr" in group:
                    group["initial_lr"] = self.hparams.lr
        for config in self.trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [self.hparams.lr] * len(config.scheduler.base_lrs)

    def configure_model(self) -> None:
        """The training fast paths of :func:`stylenet.fastpath.prepare_for_training`, for the device
        the trainer runs on (``task.channels_last: null`` = the faster layout there) and
        ``task.compile``. Precision is the trainer's (``trainer.precision``); keys are unchanged."""
        if self._trainer is None:  # load_from_checkpoint calls this hook too: a plain model then
            return
        prepare_for_training(self.net, self.loss, self.trainer.strategy.root_device,
                             channels_last=self.hparams.get("channels_last"),
                             compile=bool(self.hparams.get("compile", False)))

    def log_terms(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        on_step = stage == "train"
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=not on_step,
                     prog_bar=name == "total", batch_size=batch_size, sync_dist=not on_step)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["images"]
        # an empty batch: every file of it was unreadable
        terms = self.step_terms(batch) if images.numel() else None
        usable = self.step_is_usable(terms, batch)
        self.used_batch = self.used_batch or usable  # decided by every rank together: each steps, or none does
        if not usable or terms is None:  # skipped; or under DDP this rank's batch alone was unreadable
            # no TensorBoard point from a batch that trained nothing: Lightning logs the on-step values it
            # holds at every logging step, and would log the last used batch's again (its results are
            # the only handle on them)
            if self.trainer._results is not None:
                self.trainer._results.reset(metrics=False, fx="training_step")
            # Not None (Lightning's skip), which DDP refuses: a zero loss on every trained weight keeps
            # each rank in the gradient all-reduce, and adds nothing to the gradients
            return sum(weight.sum() for weight in self.net.parameters() if weight.requires_grad) * 0.0
        self.log_terms("train", terms, len(images))
        return terms["total"]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """An update whose batches were all skipped has zero gradients, which must be no gradients:
        Adam leaves a weight without one as it is (its moments would otherwise still move it). With
        ``+trainer.accumulate_grad_batches=N`` the used batches of a window keep their update."""
        if not self.used_batch:
            optimizer.zero_grad(set_to_none=True)
        self.used_batch = False

    def step_terms(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The loss terms of one training batch: the network's output scored by :meth:`objective`."""
        return self.objective(self.net(self.network_input(batch)), batch["images"])

    def objective(self, output: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms a training step minimises (``total`` among them)."""
        return self.loss(output, images)

    def step_is_usable(self, terms: dict[str, torch.Tensor] | None, batch: dict[str, Any]) -> bool:
        """Whether to take this optimiser step, applying ``nan_policy``; False skips the batch.

        Decided by all ranks together: under DDP a rank that skipped backward alone would leave the
        others waiting for its gradients forever. A non-finite loss on any rank skips the step (it would
        reach every rank's gradients); an unreadable batch only when every rank's is: the others' photos
        still train (they were thrown away with it)."""
        strategy = self.trainer.strategy
        bad = None
        if terms is not None and not torch.isfinite(terms["total"]):  # one device sync per step
            bad = next(name for name, value in terms.items() if not torch.isfinite(value).all())
        if not strategy.reduce_boolean_decision(bad is None, all=True):
            self.nan_skips += 1
            files = ", ".join(batch.get("paths", [])) or "this batch"
            where = f"train/{bad} = {float(terms[bad].detach())} on {files}" if bad else "on another rank"
            if self.nan_policy == "stop":
                raise NonFiniteLossError(f"non-finite loss at step {self.global_step}: {where}; weights and "
                                         "checkpoints are still finite: lower task.lr, check the loss "
                                         "weights, or set task.nan_policy=skip")
            if self.nan_skips > self.max_nan_skips:
                raise NonFiniteLossError(f"non-finite loss in {self.nan_skips} batches in a row (task."
                                         f"max_nan_skips={self.max_nan_skips}), last at step "
                                         f"{self.global_step}: {where}")
            log.warning("skipping a batch: non-finite loss at step %d: %s", self.global_step, where)
            return False
        self.nan_skips = 0
        return strategy.reduce_boolean_decision(terms is not None, all=False)

    def keep_for_grid(self, tag: str, images: torch.Tensor, dim: int = 0) -> None:
        """A validation batch's part of grid ``tag``: the parts are joined along ``dim`` and logged once
        validation ends, so the grid shows every held-out photo, whatever the batch size."""
        self.val_grids.setdefault(tag, (dim, []))[1].append(images.detach().float().cpu())

    def on_validation_epoch_end(self) -> None:
        """The grids of the held-out photos; none for Lightning's sanity check (``trainer.num_sanity_val_steps``),
        whose scalars Lightning drops: its grid of the untrained network would stand alone at step 0."""
        if not self.trainer.sanity_checking:  # at the step Lightning logs the validation's scalars at: the
            step = self.trainer.fit_loop.epoch_loop._batches_that_stepped  # batches that stepped before it
            for tag, (dim, parts) in self.val_grids.items():               # (global_step is one more by now)
                self.add_image(tag, torch.cat(parts, dim=dim), step)
        self.val_grids = {}

    def add_image(self, tag: str, images: torch.Tensor, step: int | None = None) -> None:
        """Log a grid (one row per image) to TensorBoard, from rank 0 only, at ``step`` (default: the
        global step)."""
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image") or self.global_rank != 0:
            return
        grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=1, padding=2)
        experiment.add_image(tag, grid, global_step=self.global_step if step is None else step)


def build_net(cls: type[torch.nn.Module], model: dict[str, Any]) -> torch.nn.Module:
    """The network from the ``model`` settings, with bad settings reported as one-line errors."""
    try:
        return cls(**model)
    except (TypeError, ValueError) as err:
        raise StylenetError(f"model: {err}") from None


def check_crop_size(loss: PerceptualLoss, image_size: object) -> None:
    """The training crop must reach the loss network's deepest layer through its poolings, as a style picture
    must: refused before the first step, not as a pooling's traceback in it (a size that is no whole number
    is the data module's to refuse, in words of its own)."""
    if isinstance(image_size, int):
        loss.check_side(image_size, image_size, f"data.image_size={image_size}: a training crop",
                        "use a larger data.image_size")


def check_fast_path_flags(compile: object, channels_last: object) -> None:
    """``task.compile`` (true or false) and ``task.channels_last`` (also null: where faster), refused
    in one line otherwise: ``bool("no")`` is True, so ``task.compile=no`` would compile."""
    if not isinstance(compile, bool):
        raise StylenetError(f"task.compile must be true or false, got {compile!r}")
    if channels_last is not None and not isinstance(channels_last, bool):
        raise StylenetError(f"task.channels_last must be true, false or null, got {channels_last!r}")


class StyleTransferTask(ImageTask):
    """Train one :class:`TransformerNet` for one style (Johnson et al. 2016, Sec. 3), or for several
    (Dumoulin et al. 2017: shared convolutions, a scale and shift per style in every InstanceNorm).

    With several styles every sample of a batch takes one, in turn by its position in the data
    stream (each style gets the same number of samples, on every rank, again after a resume), and
    is scored against that style's Grams, computed once per run. Validation logs every style's loss
    terms and quality measures under ``val/<style>/`` and one grid row per style (``val/styles``).

    Args:
        model: TransformerNet arguments (``channels``, ``residual_blocks``, ``norm``; ``styles`` is
            set from the number of style images).
        loss: PerceptualLoss arguments (VGG weight source, layers, term weights).
        style: ``image`` (path or ``demo:<name>``), ``size`` (long side in px), ``name``; or, for
            several styles, ``images`` (a list) and optionally ``names`` (default: the file stems).
        lr: Adam learning rate (1e-3 in the paper).
        lr_schedule: ``constant`` (the paper) or ``cosine`` (see :meth:`ImageTask.configure_optimizers`).
        image_size: training crop size, recorded in the exported model's metadata.
        nan_policy, max_nan_skips: what a non-finite loss does (see :class:`ImageTask`).
        compile, channels_last: training fast paths (see :meth:`ImageTask.configure_model`).
        identity_steps: steps that first train the network to reproduce its input (see
            :meth:`objective`); 0, as in the paper, for runs of thousands of steps.
        saturation_weight: weight of :func:`stylenet.losses.saturation_loss` on the output tanh's
            inputs (0: off, as in the paper).

    All arguments are primitives, so Lightning checkpoints load with ``weights_only=True``.
    """

    def __init__(self, model: dict[str, Any], loss: dict[str, Any], style: dict[str, Any],
                 lr: float = 1e-3, image_size: int = 256, nan_policy: str = "stop",
                 max_nan_skips: int = 5, compile: bool = False, channels_last: bool | None = None,
                 identity_steps: int = 0, saturation_weight: float = 0.0, lr_schedule: str = "constant") -> None:
        super().__init__(lr, nan_policy, max_nan_skips, lr_schedule)
        check_fast_path_flags(compile, channels_last)
        if isinstance(identity_steps, bool) or not isinstance(identity_steps, int) or identity_steps < 0:
            raise StylenetError(f"task.identity_steps must be a whole number >= 0, got {identity_steps!r}")
        if isinstance(saturation_weight, bool) or not isinstance(saturation_weight, (int, float)) or \
                not saturation_weight >= 0:
            raise StylenetError(f"task.saturation_weight must be a number >= 0, got {saturation_weight!r}")
        # loss.temporal_weight is this task's term (stylenet.temporal), not the loss network's: hparams["loss"]
        # (and so model files) keep PerceptualLoss's settings only
        loss, temporal_weight = split_temporal_weight(loss)
        # The loss network first: a missing VGG weights file fails before any data is read.
        self.loss = PerceptualLoss(**loss)
        check_crop_size(self.loss, image_size)
        # loss=pixel, feature or mixed (super-resolution's) on a style; said once, by the first DDP process
        if not self.loss.term_weights["style"] and first_rank():
            log.warning("loss.style_weight is 0: this style run has no style term and learns no style "
                        "(loss=perceptual, offline or gatys_vgg19 have one)")
        styles = load_styles(style)
        self.save_hyperparameters()
        # two of ours beside the constructor's arguments, saved again so that they are in hparams_initial too,
        # which Lightning writes to TensorBoard's hparams.yaml (runs with and without the term told apart there)
        # (and the loss network's settings alone: a subclass's own frame, task=add_style's, gave the loss as given)
        self.save_hyperparameters({**self.hparams, "loss": loss, "stylenet_version": __version__,
                                   "temporal_weight": temporal_weight})
        self.record_loss_weights()
        self.temporal = TemporalConsistency(temporal_weight)
        #: the styles this run trains, and their rows in the network's norm tables
        self.styles, self.trained_styles = styles, list(range(len(styles)))
        self.net: TransformerNet = self.build_network(model, styles)
        if "images" not in style:  # absolute: a run from another folder finds it (add_style; the one added)
            self.hparams["style_image"] = recorded_spec(style["image"])
        if "images" not in style and self.net.styles == 1:  # one style: as before multi-style networks
            self.hparams["style_sha256"] = styles[0].sha256
        try:
            self.loss.set_style([s.image for s in styles], separate=self.multi)
        except StylenetError as err:  # too small once its long side is style.size
            raise StylenetError(f"style.size={style.get('size', 256)}: {err}; use a larger style.size") from None
        self.register_buffer("style_image", styles[0].image, persistent=False)
        #: the newest training pass's inputs of the output tanh, for the saturation term (the temporal
        #: term's second pass leaves its own here; the next step's first pass replaces them)
        self.logits: torch.Tensor | None = None
        if saturation_weight:
            self.net.decoder[-1].register_forward_hook(self.keep_logits)

    def keep_logits(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        """Forward hook on the output tanh: keeps its inputs while training, for :meth:`objective`."""
        if self.training:
            self.logits = inputs[0]

    @property
    def multi(self) -> bool:
        """Whether the network has several styles (the style is then an input of every pass)."""
        return self.net.styles > 1

    def build_network(self, model: dict[str, Any], styles: list[StyleImage]) -> TransformerNet:
        """The network, of ``len(styles)`` styles; records them in the hyper-parameters."""
        count = len(styles)
        if int(model.get("styles", count)) != count:
            raise StylenetError(f"model.styles={model['styles']} but there are {count} style images")
        if count > 1:
            model = {**model, "styles": count}
            self.hparams["model"] = model
        if count > 1 or "images" in self.hparams["style"]:
            self.hparams["styles"] = [s.record() for s in styles]
            self.hparams["style_sha256"] = [s.sha256 for s in styles]
        return build_net(TransformerNet, model)

    def batch_styles(self, batch: dict[str, Any], count: int) -> torch.Tensor:
        """Which of the trained styles (0..len-1) each of the ``count`` samples takes: its position in
        the data stream (:class:`stylenet.data.StreamSampler`) modulo the number of styles, so every
        style gets an equal share, on every rank, reproducibly after a resume, and a sample skipped as
        unreadable leaves the others' styles as they were. A batch from elsewhere (no ``positions``)
        counts from the step."""
        if "positions" in batch:
            positions = torch.tensor(batch["positions"], dtype=torch.long, device=self.device)
        else:
            first = int(batch.get("position", self.global_step * (count + len(batch.get("skipped", [])))))
            positions = first + torch.arange(count, device=self.device)
        return positions % len(self.trained_styles)

    def step_terms(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if not self.multi:
            return super().step_terms(batch)
        images = batch["images"]
        slots = self.batch_styles(batch, len(images))
        rows = torch.tensor(self.trained_styles, device=slots.device)[slots]
        return self.objective(self.net(images, rows), images, slots)

    def objective(self, output: torch.Tensor, images: torch.Tensor,
                  style: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The perceptual objective, after ``identity_steps`` steps of per-pixel MSE to the input;
        ``style`` (B,): each sample's trained style (its Gram targets), for several styles.

        Why the warm-up: from its random initialisation the network's output shares nothing with the
        photo, and on a short run (the offline demo's minutes) the style term, which any texture
        satisfies, wins before the content term has taught the network to keep the photo: the result
        is the style's palette in blobs. A network that starts as a rough identity map keeps the
        photo's layout while the style moves in, as the Gatys optimiser starting from the photo does.
        Not in the paper (40k steps make it irrelevant there). Its targets are the photo clipped to
        [``IDENTITY_MARGIN``, 1 - ``IDENTITY_MARGIN``]: the output tanh reaches 0 or 1 only at an
        infinite input, so copying a black or white pixel exactly would drive its input without bound
        and leave it stuck there (see :func:`stylenet.losses.saturation_loss`).

        ``task.saturation_weight`` adds that term on the output tanh's inputs of this pass."""
        logits, self.logits = self.logits, None
        warm_up = self.hparams.get("identity_steps", 0)
        copied = images.clamp(IDENTITY_MARGIN, 1 - IDENTITY_MARGIN) if warm_up else images
        if self.global_step < warm_up:
            identity = pixel_loss(output, copied)
            return {"identity": identity, "total": identity}
        terms = self.loss(output, images, style=style)
        if warm_up:  # logged on as a measure, how far the output has moved from the photo (else Lightning
            terms = {**terms, "identity": pixel_loss(output.detach(), copied)}  # repeats its last warm-up value)
        if logits is not None:
            saturation = saturation_loss(logits)
            terms = {**terms, "saturation": saturation,
                     "total": terms["total"] + self.hparams["saturation_weight"] * saturation}
        # Wang et al. 2020: N(W(x) + noise) against W(N(x)) (stylenet.temporal); nothing at temporal_weight 0
        return self.temporal.add_term(terms, lambda x: self.net(x, None if style is None else torch.tensor(
            self.trained_styles, device=style.device)[style]), images, output, self.global_step, self.global_rank)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = batch["images"]
        if images.numel() == 0:
            return
        if self.multi:
            self.validate_styles(images)
            return
        output = self.net(images)
        self.log_terms("val", self.loss(output, images), len(images))
        self.log_quality("val", images, output, self.style_image)
        self.log_terms("val", self.temporal.instability(self.net, images, output), len(images))
        self.keep_for_grid("val/content_stylized", torch.cat([images, output.float()], dim=3))

    def log_quality(self, stage: str, images: torch.Tensor, output: torch.Tensor, style: torch.Tensor) -> None:
        """The loss-network-free measures of :mod:`stylenet.quality`, averaged over the held-out photos
        each one can judge (a flat photo has no structure to keep), as quality.md averages them: each
        batch's mean weighs as many photos as it is defined for, none where it is for none (the epoch's
        mean is NaN only when no photo is judged; every rank logs every key, as DDP's reduction needs)."""
        scores = [quality.score(photo, style.float().cpu(), styled).as_dict()
                  for photo, styled in zip(images.float().cpu(), output.float().clamp(0, 1).cpu(), strict=True)]
        for key in scores[0]:
            values = [score[key] for score in scores]
            judged = sum(math.isfinite(value) for value in values)
            mean = quality.finite_mean(values) if judged else 0.0
            # on the module's device: NCCL (GPU DDP) all-reduces no CPU tensor
            self.log_terms(stage, {f"quality/{key}": torch.tensor(mean, device=self.device)}, judged)

    def validate_styles(self, images: torch.Tensor) -> None:
        """Every trained style on the held-out photos: its loss terms, measures and instability
        (``temporal/e_warp``, ``temporal/flicker``) under ``val/<style>/``, their mean ``val/total``,
        and a grid (``val/styles``) whose first row is the photos and each further row one style's outputs."""
        rows, totals = [images.float()], []
        for slot, (row, style) in enumerate(zip(self.trained_styles, self.styles, strict=True)):
            output = self.net(images, row)
            terms = self.loss(output, images, style=torch.full((len(images),), slot, device=images.device))
            self.log_terms(f"val/{style.name}", terms, len(images))
            self.log_quality(f"val/{style.name}", images, output, style.image)
            self.log_terms(f"val/{style.name}", self.temporal.instability(
                lambda x, row=row: self.net(x, row), images, output), len(images))
            rows.append(output.float())
            totals.append(terms["total"])
        self.log_terms("val", {"total": torch.stack(totals).mean()}, len(images))
        # (1 + styles, 3, H, B * W): one row per style, the photos side by side (each batch's to the right)
        self.keep_for_grid("val/styles", torch.stack([torch.cat(list(row), dim=2) for row in rows]), dim=3)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Restart Adam's moment estimates where the identity warm-up hands over to the perceptual
        objective (:meth:`objective`).

        Why: the warm-up's gradients are orders of magnitude smaller than the perceptual ones, and
        Adam's second moment (beta2 = 0.999) forgets them over ~1000 steps while the first
        (beta1 = 0.9) follows the new gradients within ~10, so for the next hundred-odd steps every
        update is about twice the learning rate (three times after a warm-up of a few hundred steps),
        all in the new objective's direction: the network leaves the identity map in saturated blobs
        and a short run never recovers the photo. A fresh Adam takes steps of the learning rate from
        the first perceptual step. A run resumed from a checkpoint of this very step restarts them
        too, as the uninterrupted run did."""
        if self.global_step == self.hparams.get("identity_steps", 0) > 0:
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()

    def on_train_start(self) -> None:
        """The style image(s) in TensorBoard, once per run folder: a run resumed in its own folder has
        them already (Lightning restores the step after ``on_fit_start``, so it is read here); one
        resumed from another folder's checkpoint starts new event files."""
        super().on_train_start()
        resumed_from = Path(self.trainer.ckpt_path).resolve().parent.parent if self.trainer.ckpt_path else None
        save_dir = getattr(self.logger, "save_dir", None)
        if self.global_step and save_dir is not None and resumed_from == Path(save_dir).resolve():
            return
        if self.multi:
            for style in self.styles:
                self.add_image(f"style/{style.name}", style.image.unsqueeze(0))
        else:
            self.add_image("style", self.style_image.unsqueeze(0))


class AddStyleTask(StyleTransferTask):
    """Add one style to a trained network (Dumoulin et al. 2017, Sec. 2: a style is the scale and
    shift of every InstanceNorm): the network of ``base`` grows a row of norm parameters, started
    at the mean of its styles, and only that row trains; the shared convolutions and the other
    styles' parameters are frozen (their gradients are masked to zero, so Adam never moves them).
    The model file it writes holds the base's styles and the new one (N + 1).

    Args:
        base: the model file to extend (a multi-style file, or a single-style one, which becomes two).
        style: the new style: ``image`` and ``size``.
        style_name: the new style's name (default: the image's file stem).
        Others: as :class:`StyleTransferTask` (the network's shape comes from ``base``).
    """

    def __init__(self, base: str, loss: dict[str, Any], style: dict[str, Any], style_name: str | None = None,
                 **kwargs: Any) -> None:
        if "images" in style:
            raise StylenetError("task=add_style adds one style: pass style.image=new.jpg, not style.images")
        if not isinstance(base, str) or not base.strip():  # null, 42, '': a TypeError, or the folder '.'
            raise StylenetError(f"task.base must name the model file to grow (task.base=/path/to/model.safetensors), "
                                f"got {base!r}")
        if URL.match(base):
            raise StylenetError(f"task.base must be a local file, got {base!r}: URLs are not downloaded (download it "
                                "and pass its path)")
        base = str(Path(base).expanduser().absolute())  # (recorded so: save_hyperparameters reads the arguments
        # from here; absolute as the style pictures are, the file recorded where another folder finds it)
        # the setting that gave the name, for the errors about it (build_network checks it against the base's);
        # '' or 0 is a name given, refused or kept as for one style, not the image's stem
        given = style_name if style_name is not None else style.get("name")
        self.name_setting = ("task.style_name" if style_name is not None else "style.name" if given is not None
                             else f"style.image ({style.get('image')}; its name)")
        name = str(given) if given is not None else style_name_of(str(style.get("image")))
        name = check_style_names([name], self.name_setting)[0]
        super().__init__({}, loss, {**style, "name": name}, **kwargs)

    def build_network(self, model: dict[str, Any], styles: list[StyleImage]) -> TransformerNet:
        try:
            stored = read_model(self.hparams["base"], task="style")
        except StylenetError as err:  # which setting named the file
            raise StylenetError(f"task.base: {err}") from None
        if type(stored.net) is not TransformerNet or stored.net.config["norm"] != "instance":
            raise StylenetError(f"base {self.hparams['base']!r}: only stylenet TransformerNet files with "
                                "InstanceNorm (model.norm=instance) can grow a style")
        base: TransformerNet = stored.net
        # Each style's record keeps how it was trained: the file's own style_size and loss are this run's,
        # the added style's (a base's styles may have been trained at another size and weights). A base
        # trained in one run gives its own to each of its styles; a grown base's are its last run's only.
        trained = ({key: stored.metadata[key] for key in ("style_size", "loss") if key in stored.metadata}
                   if "base" not in stored.metadata else {})
        records = [{**trained, **record} for record in style_records(stored.metadata)]
        added = {**styles[0].record(), "style_size": self.hparams["style"].get("size"), "loss": self.hparams["loss"]}
        check_distinct_pictures([*records, added], "style.image (a new picture)")  # before the names it gives
        check_style_names([r["name"] for r in records] + [styles[0].name], f"{self.name_setting} (a new name)",
                          new=len(records))  # a file of names equal but for case, from before they were refused
        new = base.styles
        net = base.with_styles([*range(new), torch.full((new,), 1.0 / new)])
        net.requires_grad_(False)
        keep = F.one_hot(torch.tensor(new), new + 1).float()[:, None]  # (N + 1, 1): the new row only
        for norm in net.conditional_norms().values():
            for table in (norm.weight, norm.bias):
                table.requires_grad_(True)
                table.register_hook(lambda grad, keep=keep: grad * keep.to(grad))
        self.trained_styles = [new]
        self.hparams["base_sha256"] = file_sha256(Path(self.hparams["base"]))  # a resume must extend the same file
        self.hparams["model"] = net.config
        self.hparams["styles"] = [*records, added]
        self.hparams["style_sha256"] = [r["sha256"] for r in self.hparams["styles"]]
        return net


class SuperResolutionTask(ImageTask):
    """Train one :class:`SuperResolutionNet` (Johnson et al. 2016, Sec. 4.2) on ``batch["lr"]`` ->
    ``batch["images"]`` pairs from :class:`stylenet.data.SuperResolutionDataModule`.

    The objective is :class:`PerceptualLoss` against the HR patch: feature reconstruction at
    relu2_2 plus TV (the paper's model, ``loss=feature``), per-pixel MSE (the paper's baseline,
    ``loss=pixel``), or a weighted mix (``loss=mixed``); there is no style term. Validation logs the
    loss terms, PSNR/SSIM on Y (border = factor) for the network and for bicubic upsampling, and a
    grid per held-out patch: LR (nearest-upscaled) | bicubic | output | HR.

    Args:
        model: SuperResolutionNet arguments (``factor``, ``channels``, ``residual_blocks``, ``norm``).
        loss: PerceptualLoss arguments; ``style_weight`` must be 0.
        lr: Adam learning rate (1e-3 in the paper).
        image_size: HR patch size (288 in the paper), recorded in the exported model's metadata.
        nan_policy, max_nan_skips, compile, channels_last, lr_schedule: as for :class:`StyleTransferTask`.
    """

    def __init__(self, model: dict[str, Any], loss: dict[str, Any], lr: float = 1e-3,
                 image_size: int = 288, nan_policy: str = "stop", max_nan_skips: int = 5,
                 compile: bool = False, channels_last: bool | None = None, lr_schedule: str = "constant") -> None:
        super().__init__(lr, nan_policy, max_nan_skips, lr_schedule)
        check_fast_path_flags(compile, channels_last)
        if setting_weight(loss.get("style_weight", 0.0), "loss.style_weight") != 0:
            raise StylenetError("super-resolution has no style target: set loss.style_weight=0 (or use "
                                "loss=feature, loss=pixel or loss=mixed)")
        loss, temporal_weight = split_temporal_weight(loss)
        if temporal_weight:
            raise StylenetError("loss.temporal_weight applies to style networks only: set it to 0 for super-resolution")
        self.loss = PerceptualLoss(**loss)
        check_crop_size(self.loss, image_size)
        self.save_hyperparameters()
        self.hparams["task"] = "sr"
        self.hparams["stylenet_version"] = __version__
        self.record_loss_weights()
        self.net = build_net(SuperResolutionNet, model)
        self.factor = int(self.net.scale)
        self.hparams["factor"] = self.factor  # recorded in exported model files

    def network_input(self, batch: dict[str, Any]) -> torch.Tensor:
        """The low-resolution patches the data module made from the HR ones."""
        return batch["lr"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hr, lr = batch["images"], batch["lr"]
        if hr.numel() == 0:
            return
        output = self.net(lr).float()
        bicubic = upscale_bicubic(lr, self.factor)
        scores = {f"{name}{suffix}": value.mean().float()
                  for suffix, images in (("", output), ("_bicubic", bicubic))
                  for name, value in sr_scores(images, hr, border=self.factor).items()}
        self.log_terms("val", {**self.loss(output, hr), **scores}, len(hr))
        nearest = F.interpolate(lr, scale_factor=self.factor, mode="nearest")
        row = torch.cat([nearest, bicubic, output, hr.float()], dim=3)  # LR | bicubic | output | HR
        self.keep_for_grid("val/lr_bicubic_output_hr", row)
