"""stylenet-train as users run it: the console script, Hydra overrides and bad settings."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stylenet import StylenetError
from stylenet.cli.train import build, config_dir, train
from stylenet.losses import lua_to_ours
from stylenet.modelfile import read_model
from tests.conftest import make_photo
from tests.helpers import console_script
from tests.test_fault_tolerance import compose_run


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*console_script("stylenet-train"), *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_smoke_experiment_end_to_end_through_the_console_script(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("experiment=smoke", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "step_000020.ckpt").is_file()
    model = read_model(run_dir / "smoke.safetensors")
    assert model.metadata["steps"] == 20 and model.metadata["style_name"] == "ihc"
    assert len(list(run_dir.glob("*_ihc.png"))) == 1  # the run ends with a stylized photo
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert "train/total" in events.Tags()["scalars"]
    assert "VGG loss network uses CALIBRATED RANDOM weights" in result.stderr + result.stdout  # never silent
    assert not (tmp_path / "outputs").exists()  # hydra.run.dir holds every artefact
    assert "identity warm-up" not in result.stderr + result.stdout


def test_a_run_that_ends_within_the_identity_warm_up_says_so(tmp_path: Path) -> None:
    """As ``experiment=video trainer.max_steps=60`` would (the demo's 80 warm-up steps use the whole run):
    here the smoke run's 20 steps, all of them warm-up."""
    result = run_cli("experiment=smoke", "task.identity_steps=20", "callbacks.export=null",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("trainer.max_steps=20 ends within the identity warm-up (task.identity_steps=20): the run trains neither "
            "the style nor any other term of its objective") in result.stderr + result.stdout


def compose_train(tmp_path: Path, *overrides: str, experiment: str | None = "smoke"):
    chosen = [f"experiment={experiment}"] if experiment else []
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*chosen, f"hydra.run.dir={tmp_path}", *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_tensorboard_shows_each_step_that_trained_once_and_each_validation_at_one_step(tmp_path: Path) -> None:
    """A batch of bad files trains nothing: its step had a point, the last used batch's values logged again.
    A validation's grid was one step after its scalars (the optimiser's count, not the logger's), and
    Lightning's sanity check left a grid of the untrained network at step 0, without scalars."""
    for k in range(10):
        make_photo(tmp_path / "photos" / f"p{k:02d}.png", size=(72, 72), seed=k)
    for name in ("bad1.png", "bad2.png"):  # held out: bad1 (index 0 of 12); in training: bad2, met in 11 steps
        (tmp_path / "photos" / name).write_bytes(f"not a png: {name}".encode())  # (not copies of each other)
    from tests.test_fault_tolerance import run_in_process

    run_dir = tmp_path / "run"
    run_in_process(run_dir, "experiment=smoke", "data=folder", f"data.root={tmp_path / 'photos'}",
                   "data.batch_size=1", "data.val_images=2", "data.max_bad_fraction=0.5", "trainer.max_steps=11",
                   "trainer.val_check_interval=5", "trainer.log_every_n_steps=1", "trainer.num_sanity_val_steps=2",
                   "callbacks.export=null")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    steps = [event.step for event in events.Scalars("train/total")]
    assert len(steps) == len(set(steps)) == 10 and set(steps) < set(range(11))  # one of the 11 batches skipped
    validated = [event.step for event in events.Scalars("val/total")]
    assert len(validated) == 2 and [event.step for event in events.Images("val/content_stylized")] == validated


def test_a_style_is_named_after_its_image_unless_named(tmp_path: Path) -> None:
    """Not after the default style's preset: two models of two paintings must not both be "demo"
    (stylenet-stylize -m a -m b would write photo_demo.png twice)."""
    cfg = compose_train(tmp_path, "style.image=/paintings/my_painting.png", experiment=None)
    assert (cfg.style.name, cfg.name) == ("my_painting", "my_painting")
    cfg = compose_train(tmp_path, "name=run1", "style.image=/paintings/my_painting.png", experiment=None)
    assert (cfg.style.name, cfg.name) == ("my_painting", "run1")
    cfg = compose_train(tmp_path, "style.image='/paintings/My Painting (2).png'", experiment=None)
    assert cfg.style.name == "My_Painting__2_"  # what a style name can hold: a file-name part
    cfg = compose_train(tmp_path, "style.image=demo:brick", "style.name=bricks", experiment=None)
    assert (cfg.style.name, cfg.name) == ("bricks", "bricks")
    assert compose_train(tmp_path, "style.image=/paintings/c.jpg", experiment="johnson2016_candy").style.name == "candy"


@pytest.mark.parametrize("override,message", [
    ("style.image=/no/such/painting.jpg", "style image '/no/such/painting.jpg' does not exist"),
    ("style.image=http://example.com/x.jpg", "style.image must be a local file, got 'http://example.com/x.jpg': "
                                             "URLs are not downloaded"),  # was a missing 'http:/example.com/x.jpg'
    ("style=multi style.images=[demo:ihc,s3://bucket/y.png] style.size=32",
     "style.images[1] must be a local file, got 's3://bucket/y.png'"),
    ("loss.style_layers=[relu1_2,relu9_1]", "unknown VGG layer"),
    ("loss.style_layer_weights=[1,1,1,-1,1]", "loss.style_layer_weights[3] (relu2_2) must be a number >= 0"),
    ("loss.content_weight=-1", "loss.content_weight must be a number >= 0"),
    ("loss.tv_weight=nan", "loss.tv_weight must be a number >= 0, got nan"),
    ("loss.style_weight=abc", "loss.style_weight must be a number >= 0, got 'abc'"),
    ("loss.temporal_weight=abc", "loss.temporal_weight must be a number >= 0, got 'abc'"),
    ("loss.temporal_weight=true", "loss.temporal_weight must be a number >= 0, got True"),  # not read as 1.0
    # an unset shell variable ($W) or null trained without the term, exit 0
    ("loss.temporal_weight=", "loss.temporal_weight must be a number >= 0, got ''"),
    ("loss.temporal_weight=null", "loss.temporal_weight must be a number >= 0, got None"),
    ("loss.normalize=no", "loss.normalize must be true or false, got 'no'"),
    # (a read-only folder too): the first save's traceback, up to 1000 steps or 10 minutes in
    ("callbacks.checkpoint.dirpath=/dev/null/ck",
     "callbacks.checkpoint: cannot write checkpoints in '/dev/null/ck': '/dev/null' is a file, not a folder"),
    ("task.compile=no", "task.compile must be true or false, got 'no'"),  # bool('no') compiled
    ("task.channels_last=abc", "task.channels_last must be true, false or null, got 'abc'"),
    ("seed=abc", "seed must be a whole number from 0 to 2**32 - 1, got 'abc'"),
    ("seed=-5", "seed must be a whole number from 0 to 2**32 - 1, got -5"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval must be a whole number of steps > 0"),
    # an int trained the same batches again each "epoch", a float was Lightning's traceback
    ("+trainer.limit_train_batches=2", "trainer.limit_train_batches=2 would end epochs of the endless photo stream"),
    ("+trainer.limit_train_batches=0.5", "trainer.limit_train_batches=0.5 would end epochs"),
    ("+trainer.limit_train_batches=1", "trainer.limit_train_batches=1 would end epochs"),  # one batch an epoch
    ("+trainer.accumulate_grad_batches=null", "trainer.accumulate_grad_batches must be a whole number of batches"),
    ("trainer.log_every_n_steps=abc", "trainer.log_every_n_steps must be a whole number of steps > 0, got 'abc'"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be a whole number of steps > 0, got 0"),  # no
    ("trainer.log_every_n_steps=2.5", "trainer.log_every_n_steps must be a whole number of steps > 0, got 2.5"),  # log
    ("+trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be a whole number of batches > 0"),
    ("trainer.val_check_interval=0.5", "trainer.val_check_interval must be a whole number of steps > 0 (the photo "
     "stream has no epochs to share), got 0.5"),  # Lightning's refusal, with a hint about GPUs
    ("data.image_size=30", "data.image_size must be a multiple of 4 and at least 8, got 30"),
    ("data.image_size=4", "data.image_size must be a multiple of 4 and at least 8, got 4"),  # once a traceback
    ("loss.weights=alexnet", "unknown VGG weight source 'alexnet'"),
    ("loss.weights=/no/such/vgg16.pth", "VGG weights file '/no/such/vgg16.pth' does not exist"),
    ("loss.style_layers=[]", "loss.style_layers is empty but loss.style_weight is"),
    ("trainer.max_steps=0", "trainer.max_steps must be > 0"),
    ("trainer.max_steps=-1", "trainer.max_steps must be > 0 (the photo stream is endless"),  # ran forever
    ("style.size=0", "style.size must be a whole number of pixels >= 1, got 0"),
    ("style.size=2", "style.size=2: a style image is 2x2 px, but the loss network needs at least"),
    ("data.max_pixels=abc", "data.max_pixels must be a whole number or null, got 'abc'"),
    ("data.val_images=null", "data.val_images must be a whole number, got None"),  # Python's '<' TypeError
    ("data.max_pixels=-5", "data.max_pixels must be null or >= 1, got -5"),
    ("data.scale_size=abc", "data.scale_size must be a whole number or null, got 'abc'"),
    ("data.val_images=-1", "data.val_images must be >= 0"),
    ("data.timeout_s=-1", "data.timeout_s must be a number of seconds >= 0"),
    ("task.identity_steps=abc", "task.identity_steps must be a whole number >= 0, got 'abc'"),
    ("task.saturation_weight=lots", "task.saturation_weight must be a number >= 0, got 'lots'"),
    ("style.name=../x", "style.name: style name '../x' must be letters"),
    ("style.name=''", "style.name: style name '' must be letters"),  # trained, and wrote photo_.png
    ("name=2024 trainer.max_steps=0", "trainer.max_steps must be > 0"),  # a name Hydra reads as a number passes
    ("name=../x", "name must be letters, digits"),  # the model file went to ../x.safetensors, out of the run folder
    ("style=multi style.images=[demo:ihc,/no/such.jpg] style.size=32", "does not exist (style.images[1])"),
    ("style=multi style.size=2", "style.size=2: style image 1 of 2 is 2x2 px, but the loss network"),
    ("style=multi +style.image=demo:gravel", "style.image ('demo:gravel') and style.images are both set"),  # ignored
    ("task=add_style task.base=/no/such.safetensors style.image=demo:gravel",
     "task.base: model file '/no/such.safetensors' does not exist"),
    # null and 42 were TypeErrors, '' the folder '.'
    ("task=add_style task.base=null style.image=demo:gravel", "task.base must name the model file to grow"),
    ("task=add_style task.base=42 style.image=demo:gravel", "task.base must name the model file to grow"),
    ("task=add_style task.base='' style.image=demo:gravel", "task.base must name the model file to grow"),
    ("task=add_style task.base=https://x/y.safetensors style.image=demo:gravel",  # https:/x/y does not exist
     "task.base must be a local file, got 'https://x/y.safetensors': URLs are not downloaded"),
    ("task=sr model=sr_tiny loss=pixel", "task=sr trains on low- and high-resolution pairs: use experiment=sr_x4"),
    ("task.lr=nan", "task.lr must be a finite number > 0, got nan"),
    ("ckpt_path=last", "resume=must: no valid checkpoint of experiment"),
    ("trainer=ddp_cpu model.norm=batch +trainer.sync_batchnorm=true", "trainer.sync_batchnorm=true with model.norm"),
    ("trainer.devices=2 model.norm=batch +trainer.sync_batchnorm=true", "trainer.sync_batchnorm=true with model.norm"),
    # read only as fit() starts, a traceback there (the logger's: test_a_bad_logger_setting_is_one_line)
    ("model.channels=abc", "model: model.channels must be a whole number >= 1, got 'abc'"),  # Python's '<' error
    ("~callbacks", "callbacks.checkpoint is no callback (it has no _target_); remove it with ~callbacks.checkpoint"),
    ("callbacks.checkpoint_time.train_time_interval.minutes=0",  # last.ckpt rewritten after every step
     "callbacks.checkpoint_time.train_time_interval must be longer than 0, got 0:00:00; callbacks.checkpoint_time="),
])
def test_bad_settings_fail_before_training_with_the_setting_named(tmp_path: Path, override: str,
                                                                  message: str) -> None:
    with pytest.raises(StylenetError, match=re.escape(message)):
        train(compose_train(tmp_path, *override.split(" ")), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_adding_a_style_never_writes_over_its_base(tmp_path: Path) -> None:
    from tests.test_multistyle import multi_file

    base = multi_file(tmp_path / "plus.safetensors")
    before = base.read_bytes()
    with pytest.raises(StylenetError, match=r"would write its model file over task.base .*plus.safetensors"):
        train(compose_train(tmp_path, "task=add_style", f"task.base={base}", "style.image=demo:ihc", "style.size=32",
                            f"callbacks.export.path={tmp_path}/./plus.safetensors"), tmp_path)  # the same file
    assert base.read_bytes() == before and not (tmp_path / "checkpoints").exists()


def test_help_says_what_to_type_and_what_the_exit_status_means() -> None:
    result = subprocess.run([*console_script("stylenet-train"), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert result.stdout.startswith("stylenet-train: train a fast style-transfer network")
    assert "  stylenet-train experiment=demo " in result.stdout and "== Configuration groups ==" in result.stdout
    assert result.stdout.rstrip().endswith("143 SIGTERM (last.ckpt saved: resume=auto continues the run).")


@pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is not None, reason="transformer-engine installed")
def test_a_precision_whose_package_is_missing_is_one_line() -> None:
    trainer = OmegaConf.create({"_target_": "pytorch_lightning.Trainer", "accelerator": "cpu",
                                "precision": "transformer-engine", "logger": False})
    with pytest.raises(StylenetError, match=r"^trainer: .*transformer"):  # not Hydra's wrapped traceback
        build(trainer)


@pytest.mark.parametrize(("override", "message"), [
    ("+logger.foo=1", "logger: SummaryWriter.__init__() got an unexpected keyword argument 'foo'"),
    ("logger.save_dir=/proc/nope", "logger: [Errno 2] No such file or directory: '/proc/nope'"),
    ("+trainer.foo=1", "pytorch_lightning.Trainer: Trainer.__init__() got an unexpected keyword argument 'foo'")])
def test_a_bad_logger_setting_is_one_line(tmp_path: Path, override: str, message: str) -> None:
    """TensorBoard reads its settings as its writer starts, inside fit(): a traceback there, exit 1."""
    with pytest.raises(StylenetError) as err:
        train(compose_train(tmp_path, f"logger.save_dir={tmp_path}", override), tmp_path)
    assert str(err.value) == message
    assert not list(tmp_path.rglob("events.out.tfevents*"))  # a refused run starts no TensorBoard file


def test_logger_can_be_left_out_and_an_unresolved_setting_is_one_line(tmp_path: Path) -> None:
    """``~logger``: a run without TensorBoard, its model exported; a ``${...}`` that does not resolve is
    one line naming the setting, not OmegaConf's traceback."""
    result = subprocess.run([*console_script("stylenet-train"), "experiment=smoke", "~logger", "trainer.max_steps=2",
                             f"hydra.run.dir={tmp_path / 'quiet'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "quiet" / "smoke.safetensors").is_file() and not (tmp_path / "quiet" / "tensorboard").exists()
    result = subprocess.run([*console_script("stylenet-train"), "experiment=smoke", "data.batch_size=${oops}",
                             f"hydra.run.dir={tmp_path / 'oops'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert line.startswith("stylenet-train: error: setting data.batch_size: ") and "oops" in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_trainer_without_a_gpu_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    result = subprocess.run([*console_script("stylenet-train"), "experiment=smoke", "trainer=gpu",
                             f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if "error" in line.lower()] == [
        "stylenet-train: error: trainer: No supported gpu backend found! (trainer.accelerator=gpu, trainer.devices=1; "
        "trainer=cpu or trainer=ddp_cpu run on the CPU)"]
    result = subprocess.run([*console_script("stylenet-train"), "experiment=smoke", "trainer.precision=foo",
                             f"hydra.run.dir={tmp_path / 'precision'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert line.startswith("stylenet-train: error: trainer: Precision 'foo' is invalid. Allowed precision values:")


def test_a_config_group_set_to_null_says_how_to_leave_it_out(tmp_path: Path) -> None:
    """logger=null (Lightning users' habit) was Hydra's 25-line traceback; ~logger leaves the group out."""
    result = run_cli("experiment=smoke", "logger=null", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip() == ("stylenet-train: error: logger=null: a config group is left out with ~logger, "
                                     "not set to null (logger=<choice> picks one of configs/logger/)")
    assert not (tmp_path / "run").exists()
    result = subprocess.run([*console_script("stylenet-gatys"), "logger=null"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)  # a group of stylenet-train's that stylenet-gatys has not
    assert result.returncode == 2 and result.stderr.strip() == (
        "stylenet-gatys: error: logger=null: stylenet-gatys has no logger group (its groups: loss)")


def test_a_removed_setting_the_run_needs_is_refused_before_it_trains(tmp_path: Path) -> None:
    """~seed, ~name, ~resume: a traceback before the first step; ~style.size: the whole run at 256 px, then a
    traceback at its report (and again at every resume=auto)."""
    for key in ("seed", "name", "resume", "style.size"):
        with pytest.raises(StylenetError, match=rf"^~{key} removed {key}, which the run needs: set {key}=<value>"):
            train(compose_train(tmp_path, f"~{key}"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_style_named_null_names_its_outputs_after_the_picture_as_its_model_file(tmp_path: Path) -> None:
    """style.name=null wrote astronaut_None.png beside a model file whose style is "ihc"."""
    from tests.test_fault_tolerance import run_in_process

    run_in_process(tmp_path / "run", "experiment=smoke", "trainer.max_steps=2", "style.name=null",
                   "trainer.val_check_interval=2")
    assert read_model(tmp_path / "run" / "smoke.safetensors").metadata["style_name"] == "ihc"
    assert [path.name for path in (tmp_path / "run").glob("astronaut_*.png")] == ["astronaut_ihc.png"]


def test_super_resolution_data_and_model_factors_must_agree(tmp_path: Path) -> None:
    with pytest.raises(StylenetError, match="data.factor=2 but model.factor=4"):
        train(compose_train(tmp_path, "data.factor=2", experiment="sr_smoke"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_empty_data_folder_and_style_presets(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(StylenetError, match="contains no images"):
        train(compose_train(tmp_path, "data=folder", f"data.root={tmp_path / 'empty'}"), tmp_path)
    preset = compose_train(tmp_path, "style.image=???")
    with pytest.raises(StylenetError, match="style.image is required"):
        train(preset, tmp_path)
    with pytest.raises(StylenetError, match=r"^style.image is required: pass style.image=/path/to/painting.jpg"):
        train(compose_train(tmp_path, "style.image=null"), tmp_path)  # not "/path/to/None.jpg"
    # a preset of a painting that is not shipped, named without style.image: not style=demo's bundled image
    preset = compose_train(tmp_path, "trainer.max_steps=2", experiment="johnson2016_candy")
    with pytest.raises(StylenetError, match=r"^style.image is required: pass style.image=/path/to/candy.jpg"):
        train(preset, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_model_file_path_that_cannot_be_written_stops_the_run_before_training(tmp_path: Path) -> None:
    """Checked before the first step, not when training ends, where it failed with a traceback after
    all the steps (and, in a short run, before any checkpoint was written)."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.safetensors").mkdir()
    cases = {str(tmp_path / "afile" / "m.safetensors"): "is a file, not a folder",
             str(tmp_path / "adir.safetensors"): "cannot write it: it is a folder",
             str(tmp_path / "m.onnx"): "its name must end in .safetensors"}
    for path, reason in cases.items():
        run_dir = tmp_path / f"run{len(reason)}"
        with pytest.raises(StylenetError, match=rf"^callbacks.export.path={re.escape(path)}: .*{reason}"):
            train(compose_train(run_dir, f"callbacks.export.path={path}"), run_dir)
        assert not (run_dir / "checkpoints").exists()


def test_an_unreadable_held_out_photo_or_no_export_leaves_the_finished_run_as_it_is(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """After training nothing fails the run: a held-out photo that cannot be read is skipped (and
    listed), the next one is stylized and measured; without a model file there is nothing to show."""
    photos = tmp_path / "photos"
    for k in range(6):
        make_photo(photos / f"p{k}.png", size=(40, 36), seed=k)
    (photos / "aaa.jpg").write_bytes(b"not a jpeg" * 50)  # sorts first: the first held-out photo
    (photos / "p3.png").write_bytes(b"not a png" * 50)  # the third held-out photo (files 0, 2 and 4 of 7)
    run_dir = tmp_path / "run"
    common = ["data=folder", f"data.root={photos}", "data.num_workers=0", "data.image_size=32", "data.val_images=3",
              "trainer.max_steps=2", "trainer.val_check_interval=2"]
    train(compose_run(run_dir, "experiment=smoke", *common), run_dir)
    assert [p.name for p in run_dir.glob("*_ihc.png")] == ["p1_ihc.png"]
    # each named once, though validation, the stylized photo and the report each met them
    listed = (run_dir / "skipped_images.txt").read_text().splitlines()
    assert [line.split("'")[1].rsplit("/", 1)[1] for line in listed] == ["aaa.jpg", "p3.png"]
    assert all(line.startswith("held-out photo: cannot read image") for line in listed)
    assert [entry["photo"] for entry in json.loads((run_dir / "quality.json").read_text())["entries"]] == ["p1"]
    # both named where the report says what it did not measure (the first, read before it, was left out)
    not_measured = (run_dir / "quality.md").read_text().partition("Not measured:")[2]
    assert "aaa.jpg" in not_measured and "p3.png" in not_measured
    bare = tmp_path / "bare"
    train(compose_run(bare, "experiment=smoke", *common, "callbacks.export=null"), bare)
    assert (bare / "checkpoints" / "last.ckpt").is_file() and not list(bare.glob("*.png"))
    unread = tmp_path / "unread"  # its one held-out photo is aaa.jpg: the run says why it leaves no report
    with caplog.at_level(logging.WARNING):
        train(compose_run(unread, "experiment=smoke", *common, "data.val_images=1"), unread)
    assert (unread / "smoke.safetensors").is_file() and not list(unread.glob("*.png"))
    assert "no stylized photo and no quality report: none of the 1 held-out photo(s) can be read" in caplog.text
    caplog.clear()
    none_held_out = tmp_path / "none"  # data.val_images=0: nothing to say
    with caplog.at_level(logging.WARNING):
        train(compose_run(none_held_out, "experiment=smoke", *common, "data.val_images=0"), none_held_out)
    assert "no stylized photo and no quality report" not in caplog.text


def test_data_max_pixels_beyond_pillows_limit_lets_training_read_the_photos(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """data.max_pixels above Pillow's own limit (179 MP by default; lowered here, so that small photos are
    beyond it) is the cap, as --max-pixels is for stylize: the photos were skipped as decompression bombs.
    DataLoader workers take the training process's limit (they start with Pillow's default)."""
    from PIL import Image

    from stylenet.data import start_worker

    photos = tmp_path / "photos"
    for k in range(4):
        make_photo(photos / f"p{k}.png", size=(1100, 1000), seed=k)  # beyond 2 x 500000 pixels: Pillow's refusal
    style = make_photo(tmp_path / "style.png", size=(40, 40), seed=9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500000)  # the offline loss network's photos still open
    run_dir = tmp_path / "run"
    train(compose_run(run_dir, "experiment=smoke", f"style.image={style}", "style.size=40", "data=folder",
                      f"data.root={photos}", "data.num_workers=0",
                      "data.image_size=32", "data.val_images=1", "data.max_pixels=2000000", "trainer.max_steps=2",
                      "callbacks.export=null"), run_dir)
    assert not (run_dir / "skipped_images.txt").exists() and Image.MAX_IMAGE_PIXELS == 2000000
    start_worker(os.getpid(), 0, 4242)  # a worker: the main process's limit (its watcher only waits here)
    assert Image.MAX_IMAGE_PIXELS == 4242


def test_a_held_out_photo_only_the_end_of_run_report_meets_is_listed(tmp_path: Path) -> None:
    """Without validation (or with shards, whose validation reads no file) the report is the first to
    open a held-out photo: what it leaves out is listed all the same."""
    photos = tmp_path / "photos"
    for k in range(6):
        make_photo(photos / f"p{k}.png", size=(40, 36), seed=k)
    (photos / "p4.png").write_bytes(b"not a png" * 50)  # held out: files 0, 2 and 4 of 6
    run_dir = tmp_path / "run"
    train(compose_run(run_dir, "experiment=smoke", "data=folder", f"data.root={photos}", "data.num_workers=0",
                      "data.image_size=32", "data.val_images=3", "trainer.max_steps=2",
                      "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0"), run_dir)
    listed = (run_dir / "skipped_images.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith("held-out photo: cannot read image") and "p4.png" in listed[0]


def test_a_run_whose_held_out_photo_is_its_style_picture_writes_no_verdict_of_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder of photos and the painting among them, the painting held out: the run wrote a report of no
    photo reading "targets NOT met" on every target, and the painting stylized as its held-out photo."""
    photos = tmp_path / "photos"
    for k in range(5):
        make_photo(photos / f"p{k}.png", size=(40, 36), seed=k)
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        train(compose_run(run_dir, "experiment=smoke", "data=folder", f"data.root={photos}", "data.num_workers=0",
                          "data.image_size=32", "data.val_images=1", "trainer.max_steps=2",
                          f"style.image={photos / 'p0.png'}"), run_dir)
    assert (run_dir / "smoke.safetensors").is_file()
    assert not (run_dir / "quality.json").exists() and not (run_dir / "quality.md").exists()
    assert not list(run_dir.glob("*.png"))
    assert "no stylized photo and no quality report: the held-out photo is the style picture" in caplog.text


def test_several_styles_spelt_on_a_single_style_preset_train(tmp_path: Path) -> None:
    """'+style.images=[..] style.image=null' on top of one style's preset: "style.image is required" before
    style.images was looked at."""
    run_dir = tmp_path / "run"
    train(compose_run(run_dir, "experiment=smoke", "+style.images=[demo:ihc,demo:brick]", "style.image=null",
                      "trainer.max_steps=2"), run_dir)
    assert read_model(run_dir / "smoke.safetensors").styles == ["ihc", "brick"]
    # the preset's ??? left: read as null (it was "setting task.style.name is required", a key nobody types)
    train(compose_run(tmp_path / "left", "experiment=smoke", "+style.images=[demo:ihc,demo:brick]",
                      "style.image=???", "trainer.max_steps=1"), tmp_path / "left")
    assert read_model(tmp_path / "left" / "smoke.safetensors").styles == ["ihc", "brick"]
    for images in ("null", "???"):  # said for one style's picture, or as task.style.images
        with pytest.raises(StylenetError, match=r"^style.images is required: pass style.images=\[a.jpg,b.jpg\]"):
            train(compose_run(tmp_path / images, "experiment=smoke_multi", f"style.images={images}"),
                  tmp_path / images)


def test_cli_error_is_one_line_with_nonzero_exit(tmp_path: Path) -> None:
    result = run_cli("experiment=smoke", "style.image=missing.png", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == ["stylenet-train: error: style image 'missing.png' does not exist (style.image)"]


@pytest.mark.parametrize("preset", sorted(p.stem for p in Path(config_dir(), "experiment").glob("johnson2016_*.yaml")))
def test_johnson_presets_are_their_cited_lua_settings_converted(tmp_path: Path, preset: str) -> None:
    """Each preset's loss weights are lua_to_ours of the Lua values its provenance comment cites."""
    text = Path(config_dir(), "experiment", f"{preset}.yaml").read_text()
    assert "pystiche_papers.johnson_alahi_li_2016" in text  # the cited source
    cited = {key: float(value) for key, value in
             re.findall(r"-(content_weights|style_weights|tv_strength) (\d[\d.e-]*)", text)}
    size, steps = re.search(r"style image size (\d+), (\d+)k iterations", text).groups()
    expected = lua_to_ours(cited["content_weights"], cited["style_weights"], cited["tv_strength"])
    cfg = compose_train(tmp_path, "style.image=demo:coffee", experiment=preset)
    assert cfg.name == cfg.style.name == preset.removeprefix("johnson2016_")
    for key, value in expected.items():
        assert cfg.loss[key] == pytest.approx(value, rel=1e-3), key
    # the Lua code's layers (-content_layers 16, -style_layers 4,9,16,23 of its VGG-16 modules), where the weights apply
    assert (list(cfg.loss.content_layers), list(cfg.loss.style_layers)) == (
        ["relu3_3"], ["relu1_2", "relu2_2", "relu3_3", "relu4_3"])
    assert (cfg.style.size, cfg.trainer.max_steps) == (int(size), int(steps) * 1000)
    assert cfg.model.channels == (16 if cfg.model.norm == "instance" else 32)  # released widths


def test_a_run_folder_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hydra makes the run folder before any of our code runs: the clash is caught before Hydra starts."""
    from stylenet.cli import refuse_run_dir_file

    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        refuse_run_dir_file("stylenet-train", ["experiment=smoke", f"hydra.run.dir={afile}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"stylenet-train: error: hydra.run.dir={afile} is a file, not a folder\n"
    with pytest.raises(SystemExit) as exit_info:
        refuse_run_dir_file("stylenet-train", [f"hydra.run.dir={afile / 'run' / 'one'}"])
    assert capsys.readouterr().err == (f"stylenet-train: error: hydra.run.dir={afile / 'run' / 'one'}: "
                                       f"{str(afile)!r} is a file, not a folder\n")
    refuse_run_dir_file("stylenet-train", [f"hydra.run.dir={tmp_path}", f"hydra.run.dir={tmp_path / 'new'}"])
    for empty in ("hydra.run.dir=", "hydra.sweep.dir=''"):  # an unset variable: the run filled the current folder
        with pytest.raises(SystemExit) as exit_info:
            refuse_run_dir_file("stylenet-train", ["experiment=smoke", empty])
        assert exit_info.value.code == 2 and capsys.readouterr().err == (
            f"stylenet-train: error: {empty.partition('=')[0]} is empty: name the run's folder (an unset variable?)\n")


def test_a_refused_run_leaves_the_folder_s_hydra_record_as_it_was(tmp_path: Path) -> None:
    """Hydra rewrites <run dir>/.hydra/ before any check runs: a launch refused there (the folder holds
    an earlier run's checkpoint) puts the record of the run that made the folder back."""
    from tests.test_fault_tolerance import fake_checkpoint

    run_dir = tmp_path / "run"
    fake_checkpoint(run_dir / "checkpoints" / "last.ckpt", 40)
    record = {name: f"- the earlier run's {name}\n" for name in ("config.yaml", "hydra.yaml", "overrides.yaml")}
    for name, text in record.items():
        (run_dir / ".hydra").mkdir(exist_ok=True)
        (run_dir / ".hydra" / name).write_text(text)
    result = run_cli("experiment=smoke", f"hydra.run.dir={run_dir}", "task.lr=5e-4", cwd=tmp_path)
    assert result.returncode == 2 and "already holds an earlier run's checkpoint last.ckpt" in result.stderr
    assert {path.name: path.read_text() for path in (run_dir / ".hydra").iterdir()} == record
    # the reason in the run folder's log too (where a batch job's reader looks), once on the terminal
    (logged,) = [line for line in (run_dir / "train.log").read_text().splitlines() if "ERROR" in line]
    assert "[stylenet-train][ERROR] - " in logged and "already holds an earlier run's checkpoint last.ckpt" in logged
    assert (result.stdout + result.stderr).count("already holds an earlier run's checkpoint") == 1


def test_a_network_of_the_other_task_is_one_line(tmp_path: Path) -> None:
    """experiment=sr_smoke model=tiny failed in Hydra's interpolation of ${model.factor} with a traceback."""
    with pytest.raises(StylenetError, match=r"^a super-resolution run needs a super-resolution network: "
                                            r"model=sr, sr_small, sr_tiny, sr_x8$"):
        train(compose_train(tmp_path, "model=tiny", experiment="sr_smoke"), tmp_path)
    with pytest.raises(StylenetError, match=r"^a style run needs a style network: model=half, tiny, transformer$"):
        train(compose_train(tmp_path, "model=sr_tiny"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_the_earlier_record_is_put_back_or_removed_as_it_was(tmp_path: Path) -> None:
    """EarlierRecord (stylenet-train and stylenet-gatys): what the folder held is written back; what it did
    not hold is removed, with .hydra/ itself once empty; a folder that did not exist keeps what it got."""
    from stylenet.cli import EarlierRecord

    kept, bare, new = tmp_path / "kept", tmp_path / "bare", tmp_path / "new"
    (kept / ".hydra").mkdir(parents=True)
    (kept / ".hydra" / "overrides.yaml").write_text("- a=1\n")
    bare.mkdir()
    records = {folder: EarlierRecord() for folder in (kept, bare, new)}
    for folder, record in records.items():
        record.take(["experiment=smoke", f"hydra.run.dir={folder}"])
        (folder / ".hydra").mkdir(parents=True, exist_ok=True)  # what Hydra then writes
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            (folder / ".hydra" / name).write_text("this launch\n")
        record.note_launch()
        record.restore()
    # a launch beside this one (a job submitted twice) rewrote the record since: it is not this one's to undo
    (kept / ".hydra" / "config.yaml").write_text("this launch\n")
    records[kept].take(["experiment=smoke", f"hydra.run.dir={kept}"])
    records[kept].note_launch()
    (kept / ".hydra" / "config.yaml").write_text("the other launch\n")
    records[kept].restore()
    assert (kept / ".hydra" / "config.yaml").read_text() == "the other launch\n"
    (kept / ".hydra" / "config.yaml").unlink()
    assert [path.name for path in (kept / ".hydra").iterdir()] == ["overrides.yaml"]
    assert (kept / ".hydra" / "overrides.yaml").read_text() == "- a=1\n"
    assert list(bare.iterdir()) == []
    assert len(list((new / ".hydra").iterdir())) == 3


def test_a_sweep_job_puts_back_its_own_folder_s_record_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under hydra.sweep.dir (job folders at any depth, the sweep dir given relative), a refused job restores
    its own folder's record, never a sibling's; a job that trained leaves its record for a later job of
    the same folder; the same overrides again are a relaunch."""
    from stylenet.cli import EarlierRecord

    monkeypatch.chdir(tmp_path)
    jobs = [tmp_path / "sweep" / "0" / "r", tmp_path / "sweep" / "1" / "r"]
    for job in jobs:
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- before {job.parent.name}\n")
    record = EarlierRecord()
    record.take(["-m", "experiment=smoke", "hydra.sweep.dir=sweep"])
    monkeypatch.chdir(jobs[0])  # hydra.job.chdir=true
    for job in jobs:
        (job / ".hydra" / "overrides.yaml").write_text(f"- launch {job.parent.name}\n")
    record.note_launch(jobs[0])
    assert not record.relaunched()
    record.restore()
    assert [(job / ".hydra" / "overrides.yaml").read_text() for job in jobs] == ["- before 0\n", "- launch 1\n"]
    (jobs[0] / ".hydra" / "overrides.yaml").write_text("- trained 0\n")
    record.note_launch(jobs[0])
    record.started()  # this job trains: its record is the folder's from now on
    (jobs[0] / ".hydra" / "overrides.yaml").write_text("- refused later\n")
    record.note_launch(jobs[0])
    record.restore()
    assert (jobs[0] / ".hydra" / "overrides.yaml").read_text() == "- trained 0\n"
    (jobs[0] / ".hydra" / "overrides.yaml").write_text("- trained 0\n")
    record.note_launch(jobs[0])
    assert record.relaunched()
    unknown = EarlierRecord()
    unknown.take(["-m", "experiment=smoke", "hydra.sweep.dir=sweep/${name}"])  # resolved by Hydra only
    unknown.note_launch(jobs[0])
    assert unknown.relaunched()  # nothing to compare: a finished job is passed over, as the message says


def test_a_finished_run_owes_no_report_for_a_style_whose_picture_is_gone(tmp_path: Path) -> None:
    """task=add_style onto a base trained elsewhere: a base style's picture that cannot be found gets no report
    (a warning), and the run is finished all the same; it was taken for one stopped before its report, and
    the same command again failed with exit 2."""
    from types import SimpleNamespace

    from stylenet.cli.train import missing_report

    kept = make_photo(tmp_path / "b.png")
    task = SimpleNamespace(hparams={"styles": [{"name": "a", "image": str(tmp_path / "gone.png")},
                                               {"name": "b", "image": str(kept)}, {"name": "c", "image": "demo:ihc"}]})
    cfg, data = OmegaConf.create({"task": {"style": {}}}), SimpleNamespace(val_files=[kept])
    for name in ("b", "c"):
        assert missing_report(cfg, tmp_path, task, data) == "report"
        (tmp_path / "styles" / name).mkdir(parents=True)
        (tmp_path / "styles" / name / "quality.json").write_text("{}")
    assert missing_report(cfg, tmp_path, task, data) is None


def test_a_sweep_that_runs_no_job_puts_back_its_multirun_record(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra rewrites the sweep folder's multirun.yaml before any job runs: a sweep whose every job is refused
    (or finished already) leaves the record of the sweep the folder holds, where it described a sweep that
    never ran there; a sweep of which a job trains keeps its own."""
    from stylenet.cli import EarlierRecord, launch_hydra_app

    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("- loss.style_weight=50,200\n")
    monkeypatch.setattr("sys.argv", ["stylenet-train", "-m", f"hydra.sweep.dir={sweep}"])

    def launch(overrides: str, trains: bool) -> str:
        record = EarlierRecord()

        def app() -> None:  # Hydra's sweeper, then a job
            (sweep / "multirun.yaml").write_text(overrides)
            record.note_launch(sweep / "0")
            if trains:
                record.started()

        launch_hydra_app("stylenet-train", app, record, [], Path(config_dir()) / "train.yaml")
        return (sweep / "multirun.yaml").read_text()

    assert launch("- loss.style_weight=50,100\n", trains=False) == "- loss.style_weight=50,200\n"
    assert launch("- loss.style_weight=50,100\n", trains=True) == "- loss.style_weight=50,100\n"


@pytest.mark.parametrize("stopped_in", ["train", "tolerate_any_file_name_in_log_files"])
def test_ctrl_c_before_the_first_step_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], stopped_in: str) -> None:
    """Loading the loss network or listing the photos can take a while, and so can importing torch and
    Lightning before the application's own handler (a Ctrl-C there printed a traceback and left this
    launch's settings as the folder's record); Ctrl-C then exits 130 with one line (not a traceback),
    and the folder keeps its earlier record."""
    import stylenet.cli.train as train_cli

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- earlier\n")
    monkeypatch.setattr(train_cli, stopped_in, interrupted)
    monkeypatch.setattr("sys.argv", ["stylenet-train", "experiment=smoke", f"hydra.run.dir={run_dir}"])
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main()
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "stylenet-train: interrupted"
    assert [path.name for path in (run_dir / ".hydra").iterdir()] == ["overrides.yaml"]
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "- earlier\n"
    if stopped_in != "train":
        return
    # a DDP rank after the first (a terminal's second Ctrl-C reaches every rank): exit 130, the line once, rank 0's
    monkeypatch.setattr("pytorch_lightning.utilities.rank_zero.rank_zero_only.rank", 1)
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main()
    assert exit_info.value.code == 130 and "stylenet-train: interrupted" not in capsys.readouterr().err


def test_the_run_folder_is_read_from_the_command_line_as_hydra_reads_it(tmp_path: Path) -> None:
    from stylenet.cli import explicit_run_dir

    assert explicit_run_dir(["experiment=smoke", "hydra.run.dir='/tmp/a b'"]) == Path("/tmp/a b")
    assert explicit_run_dir(["hydra.run.dir=/tmp/x", "+hydra.run.dir=\"/tmp/y\""]) == Path("/tmp/y")  # the last
    assert explicit_run_dir(["hydra.run.dir=outputs/${name}/x"]) is None  # resolved by Hydra only
    assert explicit_run_dir(["hydra.run.dir=42"]) == Path("42")  # a folder, though Hydra parses a number
    assert explicit_run_dir(["experiment=smoke", "name=hydra.run.dir"]) is None


def test_a_log_line_naming_a_file_whose_name_is_not_utf8_is_written_escaped(tmp_path: Path) -> None:
    """Hydra's train.log handler writes strict UTF-8; after the launch's set-up it escapes instead."""
    import logging
    import os

    from stylenet.cli import tolerate_any_file_name_in_log_files

    handler = logging.FileHandler(tmp_path / "train.log", encoding="utf-8")
    root = logging.getLogger()
    # The file handler alone: pytest's own log capture would carry the lone surrogate to pytest-xdist's
    # controller, whose channel cannot encode it.
    others, root.handlers = root.handlers, [handler]
    try:
        tolerate_any_file_name_in_log_files()
        logging.getLogger("stylenet.test").warning("stylized %s", os.fsdecode(b"caf\xe9.jpg"))
    finally:
        root.handlers = others
        handler.close()
    assert (tmp_path / "train.log").read_bytes() == b"stylized caf\\udce9.jpg\n"


def test_a_sweep_job_that_fails_unforeseen_is_one_line_and_the_sweep_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Any error but ours (a batch size out of GPU memory, say) in one job was re-raised by Hydra's sweeper:
    the jobs after it never ran and the sweep's report was never written. It is reported as a refused job
    is, and counted for the exit status; outside a sweep it stays the traceback of a bug."""
    from hydra.types import RunMode

    from stylenet.cli import train as train_cli
    from tests.test_fault_tolerance import compose_run

    def out_of_memory(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")

    monkeypatch.setattr(train_cli, "train", out_of_memory)
    monkeypatch.setattr(train_cli, "FAILED_SWEEP_JOBS", [])
    cfg = compose_run(tmp_path / "0", "experiment=smoke", "hydra.mode=MULTIRUN", "hydra.job.num=3")
    assert HydraConfig.get().mode == RunMode.MULTIRUN
    train_cli.hydra_main(cfg)
    assert [f"#{cfg.hydra.job.num}"] == train_cli.FAILED_SWEEP_JOBS
    assert capsys.readouterr().err == (f"stylenet-train: error: sweep job #{cfg.hydra.job.num} ({tmp_path / '0'}): "
                                       "RuntimeError: CUDA out of memory.\n")
    cfg = compose_run(tmp_path / "1", "experiment=smoke")
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        train_cli.hydra_main(cfg)
