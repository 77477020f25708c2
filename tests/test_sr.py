"""Super-resolution (Johnson et al. 2016, Sec. 4.2): network, data, training task, configs, export."""

from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import stylenet
from stylenet import StylenetError
from stylenet.callbacks import ExportStyleModel
from stylenet.cli.train import config_dir
from stylenet.data import ImageFolderDataModule, SuperResolutionDataModule, SuperResolutionPatches
from stylenet.export import export_checkpoint, write_models
from stylenet.image import load_rgb
from stylenet.metrics import degrade
from stylenet.modelfile import read_model, save_model
from stylenet.nets import SuperResolutionNet
from stylenet.tasks import SuperResolutionTask
from tests.conftest import make_photo
from tests.helpers import console_script

TINY_SR = {"factor": 4, "channels": 16, "residual_blocks": 1, "norm": "none"}
PIXEL_LOSS = {"weights": "random", "content_weight": 0.0, "style_weight": 0.0, "tv_weight": 0.0,
              "pixel_weight": 1.0}
FEATURE_LOSS = {"weights": "random", "content_layers": ["relu2_2"], "style_layers": [], "content_weight": 1.0,
                "style_weight": 0.0, "tv_weight": 1.0}


def conv_params(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def test_network_has_the_papers_layout() -> None:
    """c9s1-64, R64 x4, u64 x log2(f), c9s1-3 (supplementary material); BatchNorm as in the paper
    on request, no normalisation by default."""
    for factor, stages in ((4, 2), (8, 3)):
        net = SuperResolutionNet(factor, norm="batch")
        convs = conv_params(3, 64, 9) + (8 + stages) * conv_params(64, 64, 3) + conv_params(64, 3, 9)
        norms = (1 + 8 + stages) * 2 * 64
        assert sum(p.numel() for p in net.parameters()) == convs + norms
        modules = list(net.modules())
        assert sum(isinstance(m, nn.Upsample) for m in modules) == stages
        assert sum(isinstance(m, nn.BatchNorm2d) for m in modules) == 1 + 8 + stages
        assert not any(isinstance(m, nn.ConvTranspose2d) for m in modules)
        assert net.scale == factor and net.size_multiple == 1
        default = SuperResolutionNet(factor)
        assert default.config == {"factor": factor, "channels": 64, "residual_blocks": 4, "norm": "none"}
        assert sum(p.numel() for p in default.parameters()) == convs


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("height,width", [(5, 5), (7, 12), (16, 16), (23, 18)])
def test_output_is_factor_times_the_input_and_a_valid_image(factor: int, height: int, width: int) -> None:
    net = SuperResolutionNet(factor, channels=4, residual_blocks=1, norm="instance").eval()
    x = torch.rand(2, 3, height, width) * 4 - 2
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 3, factor * height, factor * width)
    assert y.min() >= 0 and y.max() <= 1


def test_bad_network_settings_are_value_errors() -> None:
    with pytest.raises(ValueError, match="factor must be one of"):
        SuperResolutionNet(3)
    with pytest.raises(ValueError, match="model.norm"):
        SuperResolutionNet(4, norm="layer")
    with pytest.raises(ValueError, match="^model.residual_blocks must be a whole number >= 0, got -1$"):
        SuperResolutionNet(4, residual_blocks=-1)


def photos(root: Path, count: int = 6) -> Path:
    for i in range(count):
        make_photo(root / f"img{i}.png", size=(48 + 8 * i, 40 + 4 * i), seed=i)
    return root


def test_prepared_shards_of_enlarged_photos_are_not_super_resolution_targets(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """stylenet-prepare enlarges a photo smaller than --size to fit (as style training does); super-resolution
    on those shards trained on it, a blurred target, where data=folder skips it. The manifest records the
    photos it enlarged, and super-resolution skips them as bad files; a manifest of an older prepare, which
    records none, is a warning."""
    import json

    from stylenet.cli.prepare import prepare
    from stylenet.shards import MANIFEST

    root = photos(tmp_path / "photos")  # 48x40 ... 88x60
    manifest = prepare(root, tmp_path / "shards", size=48, progress=False)
    assert manifest["enlarged"] == {"img0.png": [48, 40], "img1.png": [56, 44]}
    data = SuperResolutionDataModule(factor=4, source="shards", root=str(tmp_path / "shards"), image_size=32,
                                     val_images=1)
    data.setup("fit")
    items = {Path(item["path"]).name: item for item in (data.make_dataset(data.train_files)[(0, k, k)]
                                                         for k in range(len(data.train_files)))}
    assert {name for name, item in items.items() if item["image"] is None} == {"img1.png"}  # img0 is held out
    assert items["img1.png"]["error"] == (
        f"cannot use image {str(root / 'img1.png')!r}: 56x44 px, enlarged to the prepared dataset's 48 px; "
        "enlarged, it would be a blurred target")
    assert all(item["image"].shape == (3, 32, 32) for name, item in items.items() if name != "img1.png")
    # style training takes them all, as it takes photos smaller than its crop
    style = ImageFolderDataModule(source="shards", root=str(tmp_path / "shards"), image_size=32, val_images=1)
    style.setup("fit")
    assert all(style.make_dataset(style.train_files)[k]["image"] is not None for k in range(len(style.train_files)))
    older = json.loads((tmp_path / "shards" / MANIFEST).read_text())
    del older["enlarged"]
    (tmp_path / "shards" / MANIFEST).write_text(json.dumps(older))
    data = SuperResolutionDataModule(factor=4, source="shards", root=str(tmp_path / "shards"), image_size=32,
                                     val_images=1)
    data.setup("fit")
    with caplog.at_level("WARNING", logger="stylenet.data"):
        data.make_dataset(data.train_files)
        data.make_dataset(data.val_files)
    assert caplog.text.count("does not record which photos it holds enlarged") == 1


def test_data_serves_native_resolution_hr_patches_and_their_lr(tmp_path: Path) -> None:
    root = photos(tmp_path / "photos")
    data = SuperResolutionDataModule(factor=4, source="folder", root=str(root), image_size=32, batch_size=2,
                                     val_images=2)
    data.setup("fit")
    batch = data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)
    assert batch["images"].shape == (2, 3, 32, 32) and batch["lr"].shape == (2, 3, 8, 8)
    first = load_rgb(data.val_files[0])  # a centre crop of the photo itself, not of a resized copy
    top, left = (first.shape[1] - 32) // 2, (first.shape[2] - 32) // 2
    torch.testing.assert_close(batch["images"][0], first[:, top: top + 32, left: left + 32])
    torch.testing.assert_close(batch["lr"], degrade(batch["images"], 4))
    train = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    assert train["lr"].shape == (2, 3, 8, 8) and train["batch_number"] == 0
    # a photo smaller than a patch is a bad file, not a target enlarged (blurred) to fit
    small = SuperResolutionPatches([make_photo(tmp_path / "small.png", size=(60, 44))], image_size=48)
    assert small[0]["image"] is None and small[0]["error"] == (
        f"cannot use image {str(tmp_path / 'small.png')!r}: 60x44 px, smaller than the 48 px high-resolution patch "
        "(data.image_size); enlarged, it would be a blurred target")
    with pytest.raises(StylenetError, match="multiple of the factor 8"):
        SuperResolutionDataModule(factor=8, image_size=36)
    with pytest.raises(StylenetError, match="smaller than the network's minimum of 5 px"):
        SuperResolutionDataModule(factor=8, image_size=32)
    # x2 patches of 12 px: 8 px left once validation shaves the border, under SSIM's 11 px window
    with pytest.raises(StylenetError, match=r"leaves 8 px to score at x2 .* use 16 or more"):
        SuperResolutionDataModule(factor=2, image_size=12)
    SuperResolutionDataModule(factor=2, image_size=16)  # 12 px scored: enough
    # the style network's multiple of 4 is not super-resolution's rule: 30 px at x2 (15 px LR), 21 px at x3
    assert SuperResolutionDataModule(factor=2, image_size=30).image_size == 30
    assert SuperResolutionDataModule(factor=3, image_size=21).image_size == 21
    with pytest.raises(StylenetError, match=r"^data.scale_size is not used by super-resolution"):
        SuperResolutionDataModule(factor=4, image_size=32, scale_size=64)


def make_trainer(run_dir: Path, max_steps: int, export: bool = False) -> pl.Trainer:
    callbacks: list[pl.Callback] = [ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True)]
    if export:
        callbacks.append(ExportStyleModel(str(run_dir / "sr.safetensors")))
    return pl.Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=-1, val_check_interval=10,
                      check_val_every_n_epoch=None, limit_val_batches=1, num_sanity_val_steps=0,
                      log_every_n_steps=1, use_distributed_sampler=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=run_dir, callbacks=callbacks,
                      logger=TensorBoardLogger(run_dir, name="tensorboard", version="",
                                               default_hp_metric=False))


@pytest.fixture(scope="module")
def trained_sr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-step pixel-loss x4 run on 32 px patches, shared by the tests that inspect it."""
    root = tmp_path_factory.mktemp("sr")
    pl.seed_everything(0)
    task = SuperResolutionTask(model=TINY_SR, loss=PIXEL_LOSS, image_size=32)
    data = SuperResolutionDataModule(factor=4, source="folder", root=str(photos(root / "photos")),
                                     image_size=32, batch_size=4, val_images=2)
    make_trainer(root / "out", 30, export=True).fit(task, datamodule=data, weights_only=True)
    return root / "out"


def scalars(run: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return [event.value for event in events.Scalars(tag)]


def test_pixel_loss_falls_and_validation_logs_psnr_ssim_and_grids(trained_sr: Path) -> None:
    pixel = scalars(trained_sr, "train/pixel")
    assert len(pixel) == 30 and sum(pixel[-5:]) / 5 < 0.7 * sum(pixel[:3]) / 3
    events = EventAccumulator(str(trained_sr / "tensorboard"), size_guidance={"images": 0}).Reload()
    for tag in ("val/total", "val/pixel", "val/psnr", "val/ssim", "val/psnr_bicubic", "val/ssim_bicubic"):
        assert tag in events.Tags()["scalars"], tag
    assert scalars(trained_sr, "val/psnr")[-1] > scalars(trained_sr, "val/psnr")[0]
    # the baseline is bicubic upsampling of the same held-out patches: it does not train
    bicubic, network = scalars(trained_sr, "val/psnr_bicubic"), scalars(trained_sr, "val/psnr")
    assert len(bicubic) == 3 and max(bicubic) - min(bicubic) < 1e-4 and bicubic[-1] != network[-1]
    grids = events.Images("val/lr_bicubic_output_hr")
    assert [g.step for g in grids] == [event.step for event in events.Scalars("val/psnr")] == [9, 19, 29]
    # one row per held-out patch: LR (nearest) | bicubic | output | HR, make_grid's padding of 2 px
    assert (grids[0].width, grids[0].height) == (4 * 32 + 2 * 2, 2 * 32 + 3 * 2)


def test_feature_loss_with_tv_trains_x8_too(tmp_path: Path) -> None:
    pl.seed_everything(0)
    task = SuperResolutionTask(model={**TINY_SR, "factor": 8}, loss=FEATURE_LOSS, image_size=40)
    data = SuperResolutionDataModule(factor=8, source="folder", root=str(photos(tmp_path / "photos")),
                                     image_size=40, batch_size=2, val_images=1)
    make_trainer(tmp_path, 12).fit(task, datamodule=data, weights_only=True)
    assert {"train/content", "train/tv", "val/psnr"} <= set(EventAccumulator(str(tmp_path / "tensorboard"))
                                                            .Reload().Tags()["scalars"])
    total = scalars(tmp_path, "train/total")
    assert sum(total[-3:]) / 3 < 0.85 * sum(total[:3]) / 3


def test_bad_task_settings_fail_early() -> None:
    with pytest.raises(StylenetError, match="set loss.style_weight=0"):
        SuperResolutionTask(model=TINY_SR, loss={**FEATURE_LOSS, "style_weight": 10.0})
    with pytest.raises(StylenetError, match="^loss.style_weight must be a number >= 0, got 'abc'$"):
        SuperResolutionTask(model=TINY_SR, loss={**FEATURE_LOSS, "style_weight": "abc"})
    with pytest.raises(StylenetError, match="model: model.factor must be one of"):
        SuperResolutionTask(model={**TINY_SR, "factor": 3}, loss=PIXEL_LOSS)
    with pytest.raises(StylenetError, match="task.lr must be a finite number > 0, got 0"):
        SuperResolutionTask(model=TINY_SR, loss=PIXEL_LOSS, lr=0)
    with pytest.raises(StylenetError, match=r"^data.image_size=1: a training crop is 1x1 px, but the loss network "
                                            r"needs at least 2 px a side"):
        SuperResolutionTask(model=TINY_SR, loss=FEATURE_LOSS, image_size=1)  # relu2_2 lies behind one pooling


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_task_group_picks_network_data_and_loss_and_leaves_style_alone() -> None:
    style = compose_train()
    assert style.task._target_ == "stylenet.tasks.StyleTransferTask" and "factor" not in style.model
    assert style.data._target_ == "stylenet.data.ImageFolderDataModule" and style.loss.style_weight == 1e5
    x4 = compose_train("experiment=sr_x4")
    assert x4.task._target_ == "stylenet.tasks.SuperResolutionTask" and x4.name == "sr_x4"
    model, data, loss = x4.model, x4.data, x4.loss
    assert (model.factor, model.channels, model.residual_blocks, model.norm) == (4, 64, 4, "none")
    assert data._target_ == "stylenet.data.SuperResolutionDataModule"
    assert (data.factor, data.image_size) == (4, 288)
    assert (list(loss.content_layers), loss.style_weight, loss.pixel_weight) == (["relu2_2"], 0.0, 0.0)
    x8 = compose_train("experiment=sr_x8", "loss=pixel", "data=coco", "model.channels=32")
    assert (x8.name, x8.model.factor, x8.data.factor, x8.model.channels) == ("sr_x8", 8, 8, 32)
    assert (x8.loss.content_weight, x8.loss.pixel_weight, x8.data.source) == (0.0, 1.0, "coco")
    # another network size is no silent x4 run: stylenet-train stops, naming it, unless the factor is given
    from stylenet.config_check import check_group_choices

    for size in ("sr", "sr_small", "sr_tiny"):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            clash = compose("train", overrides=["experiment=sr_x8", f"model={size}"], return_hydra_config=True)
            given = compose("train", overrides=["experiment=sr_x8", f"model={size}", "model.factor=8"],
                            return_hydra_config=True)
        with pytest.raises(StylenetError, match=f"experiment=sr_x8 overrides model.factor of model={size}"):
            check_group_choices(clash)
        check_group_choices(given)
        assert (given.name, given.model.factor, given.data.factor) == ("sr_x8", 8, 8)
    mixed = compose_train("experiment=sr_x4", "loss=mixed")
    assert mixed.loss.content_weight > 0 and mixed.loss.pixel_weight > 0 and mixed.loss.tv_weight > 0


def test_export_round_trip_records_task_and_factor(trained_sr: Path, tmp_path: Path) -> None:
    checkpoint = trained_sr / "checkpoints" / "last.ckpt"
    exported = export_checkpoint(checkpoint, tmp_path / "x4.safetensors")
    model, at_end = read_model(exported, task="sr"), read_model(trained_sr / "sr.safetensors", task="sr")
    for metadata in (model.metadata, at_end.metadata):
        assert (metadata["task"], metadata["factor"], metadata["steps"]) == ("sr", 4, 30)
        assert metadata["image_size"] == 32
        assert metadata["network"] == {"class": "SuperResolutionNet", **TINY_SR}
        assert metadata["loss"]["pixel_weight"] == 1.0
    task = SuperResolutionTask.load_from_checkpoint(checkpoint, weights_only=True)
    image = torch.rand(1, 3, 9, 13)
    with torch.no_grad():
        expected = task.net.eval()(image)
        assert expected.shape == (1, 3, 36, 52)
        assert torch.equal(model.net(image), expected) and torch.equal(at_end.net(image), expected)
    with pytest.raises(StylenetError, match="is a 'sr' model, not a 'style' model") as refused:
        read_model(exported, task="style")
    sent = pickle.loads(pickle.dumps(refused.value))  # as a worker process hands it back
    assert (type(sent), str(sent), sent.found) == (type(refused.value), str(refused.value), "sr")
    with pytest.raises(StylenetError, match=r"is a 'sr' model, not a 'style' model; load it with "
                                            r"load_model\(\.\.\., task='sr'\)$"):  # the notebook API says how
        stylenet.load_model(exported, device="cpu")
    upscaler = stylenet.load_model(exported, device="cpu", task="sr")
    assert upscaler.scale == 4
    grey = upscaler.stylize(Image.new("L", (9, 7), 100))  # no tint invented: grey in, grey out
    assert (grey.mode, grey.size) == ("L", (36, 28))


def test_export_cli_and_training_cli_end_to_end(tmp_path: Path) -> None:
    """stylenet-train experiment=sr_x4 (via experiment=sr_smoke) as a user runs it, then stylenet-export."""
    run_dir = tmp_path / "run"
    result = subprocess.run([*console_script("stylenet-train"), "experiment=sr_smoke", "model.factor=8",
                             "data.image_size=48", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    model = read_model(run_dir / "sr_smoke.safetensors", task="sr")
    assert (model.metadata["factor"], model.metadata["steps"], model.net.scale) == (8, 20, 8)
    previews = list(run_dir.glob("*_x8.png"))  # the run ends with an upscaled held-out photo
    assert len(previews) == 1
    out = tmp_path / "exported.safetensors"
    result = subprocess.run([*console_script("stylenet-export"), str(run_dir / "checkpoints" / "last.ckpt"),
                             "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert read_model(out, task="sr").metadata["factor"] == 8


def test_sr_model_exports_to_pt2_and_onnx_at_any_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_model(tmp_path / "x4.safetensors", SuperResolutionNet(**TINY_SR), {"task": "sr", "factor": 4})
    model = read_model(tmp_path / "x4.safetensors", task="sr")
    write_models(model, [tmp_path / "x4.pt2", tmp_path / "x4.onnx"])
    program = torch.export.load(tmp_path / "x4.pt2").module()
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "x4.onnx"))
    for shape in ((1, 3, 13, 21), (2, 3, 40, 7)):
        image = torch.rand(shape)
        with torch.no_grad():
            expected = model.net(image)
            torch.testing.assert_close(program(image), expected)
        assert expected.shape[-2:] == (4 * shape[2], 4 * shape[3])
        onnx_output = session.run(None, {"image": image.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(onnx_output), expected, atol=1e-5, rtol=0)


def test_a_held_out_photo_smaller_than_the_factor_ends_the_run_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The run's model is saved; its upscaled example is what a 2x3 px photo cannot give at x4."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from stylenet.cli.train import finish

    export = save_model(tmp_path / "sr_x4.safetensors", SuperResolutionNet(factor=4, channels=8, residual_blocks=1),
                        {"task": "sr", "factor": 4})
    tiny = make_photo(tmp_path / "tiny.png", size=(3, 2))
    cfg = OmegaConf.create({"callbacks": {"export": {"path": str(export)}}, "style": {"name": "sr_x4"}})
    with caplog.at_level("WARNING"):
        finish(cfg, tmp_path, SimpleNamespace(hparams={}), SimpleNamespace(val_files=[tiny], report_path=None))
    assert f"no upscaled held-out photo: {tiny} is 3x2 px, smaller than the factor 4" in caplog.text
    assert not list(tmp_path.glob("tiny_*.png"))


def test_the_held_out_photo_is_upscaled_at_the_end_of_a_run_within_the_memory_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera's held-out photo was upscaled in one pass (8.5 GB for 12 MP at x4 with a small network, a
    traceback beyond): it is tiled within the budget stylenet-upscale keeps, here made small enough that the
    network never sees the whole low-resolution photo, and the result is the one pass's."""
    from types import SimpleNamespace

    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from stylenet.cli.train import finish
    from stylenet.image import load_rgb
    from stylenet.inference import memory, run_network
    from stylenet.metrics import degrade, modcrop

    torch.manual_seed(0)
    export = save_model(tmp_path / "sr_x4.safetensors", SuperResolutionNet(factor=4, channels=8, residual_blocks=1),
                        {"task": "sr", "factor": 4})
    photo = make_photo(tmp_path / "photo.png", size=(640, 480))
    low = degrade(modcrop(load_rgb(photo), 4).unsqueeze(0), 4)[0]  # (3, 120, 160)
    widest, conv2d = [0], F.conv2d

    def watched(input: torch.Tensor, weight: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if weight.shape[1] == 3:  # the network's first convolution (not the blur's, per channel): what it sees
            widest[0] = max(widest[0], input.shape[-2] * input.shape[-1])
        return conv2d(input, weight, *args, **kwargs)

    monkeypatch.setattr(memory, "CPU_MAX_MEMORY", 12_000_000)  # some 6400 px of the low-resolution photo
    monkeypatch.setattr(F, "conv2d", watched)
    cfg = OmegaConf.create({"callbacks": {"export": {"path": str(export)}}, "style": {"name": "sr_x4"}})
    finish(cfg, tmp_path, SimpleNamespace(hparams={}), SimpleNamespace(val_files=[photo], report_path=None))
    assert 0 < widest[0] < 120 * 160
    monkeypatch.setattr(F, "conv2d", conv2d)
    upscaled = load_rgb(tmp_path / "photo_x4.png")
    expected = run_network(read_model(export).net, low)
    assert upscaled.shape == expected.shape == (3, 480, 640)
    assert (upscaled - expected).abs().max() <= 1.5 / 255


def test_a_model_file_whose_factor_disagrees_with_its_network_is_refused(tmp_path: Path) -> None:
    path = save_model(tmp_path / "sr.safetensors", SuperResolutionNet(factor=4, channels=8, residual_blocks=1),
                      {"task": "sr", "factor": 8})
    with pytest.raises(StylenetError, match=r"says it upscales x8, but its network upscales x4"):
        read_model(path)
