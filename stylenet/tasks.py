"""Lightning tasks: what one training step of a feed-forward image network optimises.

:class:`StyleTransferTask` is Johnson et al. 2016, Sec. 3-4.1: a :class:`TransformerNet` trained
with Adam against the frozen-VGG objective of :mod:`stylenet.losses`, one network per style.
Lightning owns the loop, checkpointing, precision, DDP and logging.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid

from stylenet import StylenetError, __version__
from stylenet.data import resize_long_side, resolve_image_path
from stylenet.image import ImageError, load_rgb
from stylenet.losses import PerceptualLoss
from stylenet.nets import TransformerNet

# The frozen VGG inside the loss is in eval mode on purpose (VGGFeatures.train is a no-op).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", module="pytorch_lightning")


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


class StyleTransferTask(pl.LightningModule):
    """Train one :class:`TransformerNet` for one style (Johnson et al. 2016, Sec. 3).

    Args:
        model: TransformerNet arguments (``channels``, ``residual_blocks``, ``norm``).
        loss: PerceptualLoss arguments (VGG weight source, layers, term weights).
        style: ``image`` (path or ``demo:<name>``), ``size`` (long side in px), ``name``.
        lr: Adam learning rate (1e-3 in the paper).
        image_size: training crop size, recorded in the exported model's metadata.

    All arguments are primitives, so Lightning checkpoints load with ``weights_only=True``.
    """

    def __init__(self, model: dict[str, Any], loss: dict[str, Any], style: dict[str, Any],
                 lr: float = 1e-3, image_size: int = 256) -> None:
        super().__init__()
        if lr <= 0:
            raise StylenetError(f"task.lr must be > 0, got {lr}")
        # The loss network first: a missing VGG weights file fails before any data is read.
        self.loss = PerceptualLoss(**loss)
        style_image, style_path = load_style_image(style.get("image"), int(style.get("size", 256)))
        self.save_hyperparameters()
        self.hparams["style_sha256"] = file_sha256(style_path)
        self.hparams["stylenet_version"] = __version__
        try:
            self.net = TransformerNet(**model)
        except (TypeError, ValueError) as err:
            raise StylenetError(f"model: {err}") from None
        self.loss.set_style([style_image])
        self.register_buffer("style_image", style_image, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)

    def log_terms(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        on_step = stage == "train"
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=not on_step,
                     prog_bar=name == "total", batch_size=batch_size, sync_dist=not on_step)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        images = batch["images"]
        if images.numel() == 0:  # every file of this batch was unreadable: skip the step
            return None
        terms = self.loss(self.net(images), images)
        self.log_terms("train", terms, len(images))
        return terms["total"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = batch["images"]
        if images.numel() == 0:
            return
        output = self.net(images)
        self.log_terms("val", self.loss(output, images), len(images))
        if batch_idx == 0:
            self.add_image("val/content_stylized", torch.cat([images, output.float()], dim=3))

    def on_fit_start(self) -> None:
        if self.global_step == 0:
            self.add_image("style", self.style_image.unsqueeze(0))

    def add_image(self, tag: str, images: torch.Tensor) -> None:
        """Log a grid (one row per image) to TensorBoard, from rank 0 only."""
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image") or self.global_rank != 0:
            return
        grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=1, padding=2)
        experiment.add_image(tag, grid, global_step=self.global_step)
