"""Lightning callbacks specific to stylenet (everything else is Lightning's own)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl

from stylenet.export import checkpoint_metadata, save_model

log = logging.getLogger(__name__)


class ExportStyleModel(pl.Callback):
    """Write the per-style model file (network weights + metadata, no VGG, no optimiser) when
    training ends, from rank 0 only, so one run ends with one small file to share."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metadata = checkpoint_metadata(dict(pl_module.hparams), trainer.global_step)
        save_model(self.path, pl_module.net, metadata)
        log.info("exported the style model to %s", self.path)
