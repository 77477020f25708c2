"""Lightning tasks: what one training step of a feed-forward image network optimises.

:class:`StyleTransferTask` is Johnson et al. 2016, Sec. 3-4.1: a :class:`TransformerNet` trained
with Adam against the frozen-VGG objective of :mod:`stylenet.losses`, one network per style.
:class:`SuperResolutionTask` is Sec. 4.2: a :class:`SuperResolutionNet` trained the same way to map
low-resolution patches to their high-resolution originals. Both share :class:`ImageTask`'s training
step, optimiser and logging. Lightning owns the loop, checkpointing, precision, DDP and logging.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from stylenet import StylenetError, __version__, quality
from stylenet.fastpath import prepare_for_training
from stylenet.image import ImageError, load_rgb, resize_long_side, resolve_image_path
from stylenet.losses import PerceptualLoss, pixel_loss
from stylenet.metrics import sr_scores, upscale_bicubic
from stylenet.nets import SuperResolutionNet, TransformerNet

log = logging.getLogger(__name__)



def file_sha256(path: Path) -> str:
    """Hash of a file's bytes: identifies the style image a model was trained on."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_style_image(spec: str | None, size: int) -> tuple[torch.Tensor, Path]:
    """The style image as a (3, H, W) tensor with its long side resized to ``size``."""
    if spec in (None, "", "???"):
        raise StylenetError("style.image is required: pass style.image=/path/to/painting.jpg "
                            "(the presets' paintings are not shipped)")
    path = resolve_image_path(spec)
    if not path.is_file():
        raise StylenetError(f"style image {str(path)!r} does not exist (style.image)")
    try:
        image = load_rgb(path)
    except ImageError as err:
        raise StylenetError(f"style.image: {err}") from None
    return resize_long_side(image, size), path


#: what a training step does when a loss term is NaN or infinite (``task.nan_policy``).
NAN_POLICIES = ("stop", "skip")


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

    def __init__(self, lr: float, nan_policy: str = "stop", max_nan_skips: int = 5) -> None:
        super().__init__()
        if lr <= 0:
            raise StylenetError(f"task.lr must be > 0, got {lr}")
        if nan_policy not in NAN_POLICIES:
            raise StylenetError(f"task.nan_policy must be stop or skip, got {nan_policy!r}")
        if max_nan_skips < 1:
            raise StylenetError(f"task.max_nan_skips must be >= 1, got {max_nan_skips}")
        self.nan_policy, self.max_nan_skips, self.nan_skips = nan_policy, max_nan_skips, 0

    def network_input(self, batch: dict[str, Any]) -> torch.Tensor:
        """What the network sees: the photos themselves (style transfer)."""
        return batch["images"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)

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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        images = batch["images"]
        # an empty batch: every file of it was unreadable
        terms = self.objective(self.net(self.network_input(batch)), images) if images.numel() else None
        if not self.step_is_usable(terms, batch):
            return None
        self.log_terms("train", terms, len(images))
        return terms["total"]

    def objective(self, output: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms a training step minimises (``total`` among them)."""
        return self.loss(output, images)

    def step_is_usable(self, terms: dict[str, torch.Tensor] | None, batch: dict[str, Any]) -> bool:
        """Whether to take this optimiser step, applying ``nan_policy``; False skips the batch.

        Decided by all ranks together: under DDP a rank that skipped backward alone would leave the
        others waiting for its gradients forever."""
        strategy = self.trainer.strategy
        bad = None
        if terms is not None and not torch.isfinite(terms["total"]):  # one device sync per step
            bad = next(name for name, value in terms.items() if not torch.isfinite(value).all())
        if not strategy.reduce_boolean_decision(bad is None, all=True):
            self.nan_skips += 1
            files = ", ".join(batch.get("paths", [])) or "this batch"
            where = f"train/{bad} = {float(terms[bad])} on {files}" if bad else "on another rank"
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
        return strategy.reduce_boolean_decision(terms is not None, all=True)

    def add_image(self, tag: str, images: torch.Tensor) -> None:
        """Log a grid (one row per image) to TensorBoard, from rank 0 only."""
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image") or self.global_rank != 0:
            return
        grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=1, padding=2)
        experiment.add_image(tag, grid, global_step=self.global_step)


def build_net(cls: type[torch.nn.Module], model: dict[str, Any]) -> torch.nn.Module:
    """The network from the ``model`` settings, with bad settings reported as one-line errors."""
    try:
        return cls(**model)
    except (TypeError, ValueError) as err:
        raise StylenetError(f"model: {err}") from None


class StyleTransferTask(ImageTask):
    """Train one :class:`TransformerNet` for one style (Johnson et al. 2016, Sec. 3).

    Args:
        model: TransformerNet arguments (``channels``, ``residual_blocks``, ``norm``).
        loss: PerceptualLoss arguments (VGG weight source, layers, term weights).
        style: ``image`` (path or ``demo:<name>``), ``size`` (long side in px), ``name``.
        lr: Adam learning rate (1e-3 in the paper).
        image_size: training crop size, recorded in the exported model's metadata.
        nan_policy, max_nan_skips: what a non-finite loss does (see :class:`ImageTask`).
        compile, channels_last: training fast paths (see :meth:`ImageTask.configure_model`).
        identity_steps: steps that first train the network to reproduce its input (see
            :meth:`objective`); 0, as in the paper, for runs of thousands of steps.

    All arguments are primitives, so Lightning checkpoints load with ``weights_only=True``.
    """

    def __init__(self, model: dict[str, Any], loss: dict[str, Any], style: dict[str, Any],
                 lr: float = 1e-3, image_size: int = 256, nan_policy: str = "stop",
                 max_nan_skips: int = 5, compile: bool = False, channels_last: bool | None = None,
                 identity_steps: int = 0) -> None:
        super().__init__(lr, nan_policy, max_nan_skips)
        if identity_steps < 0:
            raise StylenetError(f"task.identity_steps must be >= 0, got {identity_steps}")
        # The loss network first: a missing VGG weights file fails before any data is read.
        self.loss = PerceptualLoss(**loss)
        style_image, style_path = load_style_image(style.get("image"), int(style.get("size", 256)))
        self.save_hyperparameters()
        self.hparams["style_sha256"] = file_sha256(style_path)
        self.hparams["stylenet_version"] = __version__
        self.net = build_net(TransformerNet, model)
        self.loss.set_style([style_image])
        self.register_buffer("style_image", style_image, persistent=False)

    def objective(self, output: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The perceptual objective, after ``identity_steps`` steps of per-pixel MSE to the input.

        Why the warm-up: from its random initialisation the network's output shares nothing with the
        photo, and on a short run (the offline demo's minutes) the style term, which any texture
        satisfies, wins before the content term has taught the network to keep the photo: the result
        is the style's palette in blobs. A network that starts as a rough identity map keeps the
        photo's layout while the style moves in, as the Gatys optimiser starting from the photo does.
        Not in the paper (40k steps make it irrelevant there)."""
        if self.global_step < self.hparams.get("identity_steps", 0):
            identity = pixel_loss(output, images)
            return {"identity": identity, "total": identity}
        return self.loss(output, images)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = batch["images"]
        if images.numel() == 0:
            return
        output = self.net(images)
        self.log_terms("val", self.loss(output, images), len(images))
        # the loss-network-free measures of stylenet.quality, averaged over the held-out photos
        scores = [quality.score(photo, self.style_image.float().cpu(), styled).as_dict()
                  for photo, styled in zip(images.float().cpu(), output.float().clamp(0, 1).cpu(), strict=True)]
        self.log_terms("val", {f"quality/{key}": torch.tensor(sum(s[key] for s in scores) / len(scores))
                               for key in scores[0]}, len(images))
        if batch_idx == 0:
            self.add_image("val/content_stylized", torch.cat([images, output.float()], dim=3))

    def on_fit_start(self) -> None:
        if self.global_step == 0:
            self.add_image("style", self.style_image.unsqueeze(0))


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
        nan_policy, max_nan_skips, compile, channels_last: as for :class:`StyleTransferTask`.
    """

    def __init__(self, model: dict[str, Any], loss: dict[str, Any], lr: float = 1e-3,
                 image_size: int = 288, nan_policy: str = "stop", max_nan_skips: int = 5,
                 compile: bool = False, channels_last: bool | None = None) -> None:
        super().__init__(lr, nan_policy, max_nan_skips)
        if float(loss.get("style_weight", 0.0)) != 0:
            raise StylenetError("super-resolution has no style target: set loss.style_weight=0 (or use "
                                "loss=feature, loss=pixel or loss=mixed)")
        self.loss = PerceptualLoss(**loss)
        self.save_hyperparameters()
        self.hparams["task"] = "sr"
        self.hparams["stylenet_version"] = __version__
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
        if batch_idx == 0:
            nearest = F.interpolate(lr, scale_factor=self.factor, mode="nearest")
            row = torch.cat([nearest, bicubic, output, hr.float()], dim=3)  # LR | bicubic | output | HR
            self.add_image("val/lr_bicubic_output_hr", row)
