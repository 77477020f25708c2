"""Training end to end on generated photos: loss falls, logs, checkpoints, export, resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stylenet import StylenetError
from stylenet.callbacks import ExportStyleModel
from stylenet.checkpoints import checkpoint_problem
from stylenet.data import ImageFolderDataModule
from stylenet.export import export_checkpoint
from stylenet.modelfile import read_model
from stylenet.tasks import StyleTransferTask

TINY_MODEL = {"channels": 8, "residual_blocks": 1, "norm": "instance"}
RANDOM_LOSS = {"weights": "random", "style_weight": 1000.0, "tv_weight": 1.0}


def make_task(style_image: Path, **loss: object) -> StyleTransferTask:
    return StyleTransferTask(model=TINY_MODEL, loss={**RANDOM_LOSS, **loss},
                             style={"name": "test", "image": str(style_image), "size": 64}, image_size=32)


def make_trainer(run_dir: Path, max_steps: int, **kwargs: object) -> pl.Trainer:
    callbacks = [ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step_{step:06d}", every_n_train_steps=5,
                                 save_last=True, save_top_k=-1, auto_insert_metric_name=False),
                 ExportStyleModel(str(run_dir / "test.safetensors")), *kwargs.pop("callbacks", [])]
    return pl.Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=-1, val_check_interval=5,
                      check_val_every_n_epoch=None, num_sanity_val_steps=0,
                      log_every_n_steps=1, use_distributed_sampler=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=run_dir, callbacks=callbacks,
                      logger=TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False),
                      **kwargs)


def make_data(photo_folder: Path, val_images: int = 2, batch_size: int = 2) -> ImageFolderDataModule:
    return ImageFolderDataModule(source="folder", root=str(photo_folder), image_size=32, batch_size=batch_size,
                                 val_images=val_images)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 30-step run shared by the tests that inspect its artefacts."""
    from tests.conftest import make_photo

    root = tmp_path_factory.mktemp("run")
    photos = root / "photos"
    for i in range(6):
        make_photo(photos / f"img{i}.png", size=(48 + 4 * i, 40), seed=i)
    style = make_photo(root / "style.png", size=(64, 64), seed=42)
    pl.seed_everything(0)
    task = make_task(style)
    trainer = make_trainer(root / "out", max_steps=30)
    trainer.fit(task, datamodule=make_data(photos, val_images=3), weights_only=True)  # 2 validation batches
    return root


def scalars(run: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(run / "out" / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    return [event.value for event in events.Scalars(tag)]


def test_a_crop_too_small_for_the_loss_network_is_refused_before_training(style_image: Path) -> None:
    """relu4_3 lies behind three 2x2 poolings: an 8 px crop reaches it, 4 px would end the first step in a
    pooling's traceback."""
    task = StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, style={"image": str(style_image), "size": 64},
                             image_size=8)
    assert task.loss.smallest_side == 8 and set(task.loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)))
    with pytest.raises(StylenetError) as err:
        StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, style={"image": str(style_image), "size": 64},
                          image_size=4)
    assert str(err.value) == ("data.image_size=4: a training crop is 4x4 px, but the loss network needs at least 8 px "
                              "a side; use a larger data.image_size")


def test_total_loss_falls_clearly(trained_run: Path) -> None:
    totals = scalars(trained_run, "train/total")
    assert len(totals) >= 25
    assert sum(totals[-5:]) / 5 < 0.5 * sum(totals[:3]) / 3


def test_tensorboard_holds_every_loss_term_and_image_grids(trained_run: Path) -> None:
    events = EventAccumulator(str(trained_run / "out" / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    for tag in ("train/total", "train/content", "train/style", "train/tv", "train/style/relu1_2",
                "train/style/relu4_3", "val/total"):
        assert tag in tags["scalars"], tag
    assert "style" in tags["images"] and "val/content_stylized" in tags["images"]
    grids = events.Images("val/content_stylized")  # after steps 5, 10, ..., beside the validation's scalars
    assert [g.step for g in grids] == [event.step for event in events.Scalars("val/total")] == [4, 9, 14, 19, 24, 29]
    # one row per held-out image (of both validation batches), content | stylized side by side, make_grid's
    # padding of 2 px
    assert (grids[0].width, grids[0].height) == (2 * 32 + 2 * 2, 3 * 32 + 4 * 2)


def test_checkpoints_load_safely_and_export_round_trips(trained_run: Path, tmp_path: Path) -> None:
    ckpt_dir = trained_run / "out" / "checkpoints"
    assert {p.name for p in ckpt_dir.iterdir()} >= {"last.ckpt", "step_000005.ckpt", "step_000030.ckpt"}
    checkpoint = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 30
    assert not any(key.startswith("loss.") for key in checkpoint["state_dict"])  # no VGG in checkpoints
    exported = export_checkpoint(ckpt_dir / "last.ckpt", tmp_path / "style.safetensors")
    model, at_end = read_model(exported), read_model(trained_run / "out" / "test.safetensors")
    assert model.metadata["steps"] == 30 and model.metadata["style_name"] == "test"
    assert model.metadata["network"] == {"class": "TransformerNet", **TINY_MODEL}
    assert len(model.metadata["style_sha256"]) == 64 and model.metadata["image_size"] == 32
    assert exported.stat().st_size < 200_000  # weights only: no VGG, no optimiser
    task = StyleTransferTask.load_from_checkpoint(ckpt_dir / "last.ckpt", weights_only=True)
    image = torch.rand(1, 3, 36, 44)
    with torch.no_grad():
        expected = task.net.eval()(image)
        assert torch.equal(model.net(image), expected)
        assert torch.equal(at_end.net(image), expected)


class StreamPositions(pl.Callback):
    """The stream position of each training batch's first sample."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: dict, index: int) -> None:
        self.seen.append(batch["position"])


@pytest.mark.parametrize("resumed_batch_size", [2, 3])
def test_resume_restores_step_optimizer_and_data_stream(tmp_path: Path, photo_folder: Path, style_image: Path,
                                                        resumed_batch_size: int) -> None:
    """The resumed run takes the stream on from the first sample the interrupted one did not take, also
    with another data.batch_size (the stream's batch numbers at the new size skipped or repeated samples)."""
    pl.seed_everything(0)
    first = make_trainer(tmp_path / "a", max_steps=5)
    first.fit(make_task(style_image), datamodule=make_data(photo_folder), weights_only=True)
    checkpoint = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["optimizer_states"][0]["state"][0]["step"] == 5
    assert checkpoint["ImageFolderDataModule"]["next_batch"] == 5
    assert checkpoint["ImageFolderDataModule"]["next_position"] == 10

    data, positions = make_data(photo_folder, batch_size=resumed_batch_size), StreamPositions()
    resumed = make_trainer(tmp_path / "b", max_steps=8, callbacks=[positions])
    resumed.fit(make_task(style_image), datamodule=data, ckpt_path=tmp_path / "a" / "checkpoints" / "last.ckpt",
                weights_only=True)
    assert resumed.global_step == 8 and data.next_batch == 8
    assert positions.seen == [10 + k * resumed_batch_size for k in range(3)]
    assert data.next_position == 10 + 3 * resumed_batch_size
    assert resumed.optimizers[0].state_dict()["state"][0]["step"] == 8
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()


class LearningRates(pl.Callback):
    """The learning rate each training step runs at."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_schedule_and_its_resume(tmp_path: Path, photo_folder: Path, style_image: Path,
                                               schedule: str) -> None:
    """cosine: step k of a run of T runs at lr (1 + cos(pi k / T)) / 2, also across a resume (the
    schedule's position is in the checkpoint); constant: lr throughout, as in the paper."""
    def task(lr: float = 1e-3) -> StyleTransferTask:
        return StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, lr=lr, lr_schedule=schedule, image_size=32,
                                 style={"name": "test", "image": str(style_image), "size": 64})

    total, rates = 8, LearningRates()
    pl.seed_everything(0)
    make_trainer(tmp_path / "a", max_steps=total, callbacks=[rates]).fit(
        task(), datamodule=make_data(photo_folder), weights_only=True)
    expected = [1e-3 * ((1 + math.cos(math.pi * k / total)) / 2 if schedule == "cosine" else 1) for k in range(total)]
    assert rates.seen == pytest.approx(expected, rel=1e-6)
    resumed = LearningRates()
    make_trainer(tmp_path / "b", max_steps=total, callbacks=[resumed]).fit(
        task(), datamodule=make_data(photo_folder), ckpt_path=tmp_path / "a" / "checkpoints" / "step_000005.ckpt",
        weights_only=True)
    assert resumed.seen == pytest.approx(expected[5:], rel=1e-6)
    # resumed at half the rate (as the non-finite loss error advises): the schedule goes on from there
    lowered = LearningRates()
    make_trainer(tmp_path / "c", max_steps=total, callbacks=[lowered]).fit(
        task(lr=5e-4), datamodule=make_data(photo_folder),
        ckpt_path=tmp_path / "a" / "checkpoints" / "step_000005.ckpt", weights_only=True)
    assert lowered.seen == pytest.approx([rate / 2 for rate in expected[5:]], rel=1e-6)
    # Lightning would restore the saved schedule as it is: another schedule, or a cosine planned over
    # another number of steps, cannot continue this checkpoint
    checkpoint, hparams = tmp_path / "a" / "checkpoints" / "step_000005.ckpt", dict(task().hparams)
    other = "cosine" if schedule == "constant" else "constant"
    assert checkpoint_problem(checkpoint, None, hparams, total) is None
    assert checkpoint_problem(checkpoint, None, {**hparams, "lr_schedule": other}, total) == (
        f"trained with another task.lr_schedule ({schedule!r}, this run has {other!r})")
    longer = checkpoint_problem(checkpoint, None, hparams, 2 * total)
    assert longer == (f"its cosine decay was planned over {total} steps, this run has trainer.max_steps={2 * total}"
                      if schedule == "cosine" else None)
    if schedule == "cosine":  # an endless photo stream: only max_steps says where the decay ends
        trainer = pl.Trainer(accelerator="cpu", max_steps=-1, max_epochs=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        with pytest.raises(StylenetError, match=r"lr_schedule=cosine needs trainer.max_steps > 0 \(.*\), got -1"):
            trainer.fit(task(), datamodule=make_data(photo_folder), weights_only=True)


def test_bad_task_settings_fail_before_training(tmp_path: Path, style_image: Path) -> None:
    with pytest.raises(StylenetError, match="does not exist"):
        StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, style={"image": str(tmp_path / "nope.jpg")})
    with pytest.raises(StylenetError, match=r"is a folder, not an image \(style.image\)"):
        StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, style={"image": str(tmp_path)})
    with pytest.raises(StylenetError, match="style.image is required"):
        StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, style={"image": "???"})
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(StylenetError, match="text.png"):
        StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, style={"image": str(tmp_path / "text.png")})
    with pytest.raises(StylenetError, match="model: model.norm"):
        StyleTransferTask(model={**TINY_MODEL, "norm": "layer"}, loss=RANDOM_LOSS, style={"image": str(style_image)})
    with pytest.raises(StylenetError, match="task.identity_steps must be a whole number >= 0, got -1"):
        StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, style={"image": str(style_image)}, identity_steps=-1)
    with pytest.raises(StylenetError, match="task.saturation_weight must be a number >= 0, got -1"):
        StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, style={"image": str(style_image)}, saturation_weight=-1)
    with pytest.raises(StylenetError, match="task.lr_schedule must be constant or cosine, got 'linear'"):
        StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, style={"image": str(style_image)}, lr_schedule="linear")


def test_identity_targets_stay_inside_the_output_tanh_range(style_image: Path) -> None:
    """A black or white photo is copied as 5 grey levels from the extremes, which tanh reaches at a
    finite input: the warm-up term of a network that outputs the photo itself is (0.02)^2."""
    task = StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, style={"image": str(style_image)}, identity_steps=1)
    images = torch.cat([torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)])
    terms = task.objective(images, images)
    torch.testing.assert_close(terms["identity"], torch.tensor(0.02 ** 2))
    grey = torch.full((2, 3, 8, 8), 0.5)
    assert task.objective(grey, grey)["identity"] == 0


def test_saturation_term_gives_a_saturated_output_its_gradient_back(style_image: Path) -> None:
    """With the output tanh's input far out (a clipped blob), the perceptual terms' gradient through
    tanh vanishes; the saturation term is saturation_loss of that input, weighted into the total,
    and its gradient pulls the input back."""
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    gradients, logits = {}, {}
    for weight in (0.0, 0.5):
        torch.manual_seed(0)
        task = StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, style={"image": str(style_image), "size": 32},
                                 saturation_weight=weight)
        last_conv = task.net.decoder[-2][1]
        with torch.no_grad():
            last_conv.bias.fill_(-20.0)  # every output pixel clipped black
        task.net.decoder[-1].register_forward_hook(lambda m, i, o, key=weight: logits.__setitem__(key, i[0]))
        task.train()
        terms = task.objective(task.net(images), images)
        terms["total"].backward()
        gradients[weight] = last_conv.bias.grad.abs().max().item()
        if weight:
            torch.testing.assert_close(terms["saturation"], (logits[weight].abs() - 2.5).relu().square().mean())
            perceptual = task.loss(task.net(images), images)["total"]
            torch.testing.assert_close(terms["total"], perceptual + 0.5 * terms["saturation"])
        else:
            assert "saturation" not in terms
    assert gradients[0.0] < 1e-6 < gradients[0.5]


def test_identity_steps_train_a_copy_of_the_input_before_the_perceptual_loss(
        tmp_path: Path, photo_folder: Path, style_image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first ``identity_steps`` minimise per-pixel MSE to the input and never call the perceptual
    loss; every later step is the perceptual objective; both are logged under their own names."""
    pl.seed_everything(0)
    task = StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, image_size=32, identity_steps=3,
                             style={"name": "test", "image": str(style_image), "size": 64})
    steps_seen: list[int] = []
    perceptual = type(task.loss).forward

    def counting(loss: torch.nn.Module, output: torch.Tensor, *args: object, **kwargs: object) -> dict:
        if task.trainer.training:  # not the validation steps, which always score the perceptual loss
            steps_seen.append(task.global_step)
        return perceptual(loss, output, *args, **kwargs)

    monkeypatch.setattr(type(task.loss), "forward", counting)
    trainer = make_trainer(tmp_path, max_steps=5)
    trainer.fit(task, datamodule=make_data(photo_folder), weights_only=True)
    assert steps_seen == [3, 4]
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert {"train/identity", "train/content", "train/style"} <= set(events.Tags()["scalars"])
    # after the warm-up the term is still measured at every step, not its last value repeated
    identity = {event.step: event.value for event in events.Scalars("train/identity")}
    assert sorted(identity) == [0, 1, 2, 3, 4] and identity[2] != identity[3] != identity[4]


@pytest.mark.parametrize(("identity_steps", "adam_steps"), [(3, 2), (0, 5)])
def test_adam_restarts_where_the_identity_warm_up_ends(tmp_path: Path, photo_folder: Path, style_image: Path,
                                                       identity_steps: int, adam_steps: int) -> None:
    """At the first perceptual step Adam's moment estimates start afresh: after 5 steps of which 3 were
    the warm-up, every parameter's Adam state has counted 2 steps (5 without a warm-up)."""
    pl.seed_everything(0)
    task = StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, image_size=32, identity_steps=identity_steps,
                             style={"name": "test", "image": str(style_image), "size": 64})
    trainer = make_trainer(tmp_path, max_steps=5)
    trainer.fit(task, datamodule=make_data(photo_folder), weights_only=True)
    states = list(trainer.optimizers[0].state.values())
    assert len(states) == len(list(task.net.parameters()))
    assert {int(state["step"]) for state in states} == {adam_steps}


def test_a_style_image_beyond_the_pixel_limit_says_to_shrink_it(tmp_path: Path) -> None:
    """Its error named --max-pixels, which stylenet-train does not have, and data.max_pixels, which the
    style image does not read: it says what to do instead, from the header, before any decoding."""
    from stylenet.tasks import load_style_image
    from tests.helpers import png_with_header_size

    scan = tmp_path / "scan.png"
    scan.write_bytes(png_with_header_size(12000, 11000))
    with pytest.raises(StylenetError) as refused:
        load_style_image(str(scan), 256)
    assert str(refused.value) == (f"style image {str(scan)!r} is 12000x11000 px, beyond the 120000000 pixels a style "
                                  "image may have (style.image): shrink it first; it is resized to style.size=256 px "
                                  "anyway")


def test_the_quality_means_of_validation_leave_out_a_photo_they_cannot_judge(style_image: Path) -> None:
    """A flat held-out photo has no structure to keep (NaN): TensorBoard's val/quality/structure is the mean
    of the photos that have one, as quality.md's, over every batch; it read NaN for the whole run."""
    from stylenet import quality

    torch.manual_seed(0)
    task = make_task(style_image)
    flat, textured = torch.full((3, 32, 32), 0.5), torch.rand(3, 32, 32)
    batches = [{"images": torch.stack([flat, textured])}, {"images": flat[None]}]
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    logged = trainer.validate(task, dataloaders=torch.utils.data.DataLoader(batches, batch_size=None),
                              weights_only=True)[0]
    with torch.no_grad():
        expected = quality.score(textured, task.style_image.float(), task.net(textured[None])[0].clamp(0, 1))
    assert logged["val/quality/structure"] == pytest.approx(expected.structure, rel=1e-5)
    assert math.isfinite(logged["val/quality/colour_moved"])
