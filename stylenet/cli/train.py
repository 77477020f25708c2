"""``stylenet-train``: the Hydra application that trains a model (configs/train.yaml).

Builds, in this order so that bad settings fail before any data is read or any step runs: the
task (loss network weights, style image, network), the data module (lists the files), then the
Lightning trainer with its logger and callbacks.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from stylenet import StylenetError


def config_dir() -> str:
    """The configs folder: inside the installed package, or the checkout's top-level ``configs/``."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"stylenet configs not found next to {package}")


def train(cfg: DictConfig) -> Path:
    """Run one training job; returns the run folder."""
    import pytorch_lightning as pl
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from stylenet.image import save_image

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    task = instantiate(cfg.task, _convert_="all")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    datamodule.report_path = run_dir / "skipped_images.txt"
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values() if callback]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate(cfg.logger))
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    if trainer.is_global_zero and datamodule.val_files:
        from stylenet.export import load_model
        from stylenet.image import load_rgb

        from stylenet.inference import run_network

        photo = datamodule.val_files[0]
        stylized = run_network(load_model(cfg.callbacks.export.path).net, load_rgb(photo))
        out = save_image(run_dir / f"{photo.stem}_{cfg.style.name}.png", stylized)
        logging.getLogger(__name__).info("stylized %s -> %s", photo.name, out)
    return run_dir


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except StylenetError as err:
        print(f"stylenet-train: error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()
