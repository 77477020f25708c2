"""Fault injection: kill -9, SIGTERM, Ctrl-C, crashes while writing, NaN losses, bad data, dead
DataLoader workers and untrusted checkpoints. Every run is the smoke experiment shrunk further
(8 channels, one residual block, random VGG, 32 px, batch 2)."""

from __future__ import annotations

import ast
import errno
import io
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import stylenet.data
from stylenet import StylenetError
from stylenet.callbacks import ResumableRun, TrainingInterrupted
from stylenet.checkpoints import (
    EXPERIMENT_KEY,
    WEIGHTS_SHA256,
    AtomicCheckpointIO,
    FinishedRunError,
    candidate_runs,
    checkpoint_problem,
    resolve_resume,
)
from stylenet.cli.train import build, config_dir, train
from stylenet.data import ImageFolderDataModule
from stylenet.modelfile import read_model, save_model
from stylenet.nets import TransformerNet
from stylenet.nets.vgg import random_state
from stylenet.tasks import NonFiniteLossError, StyleTransferTask
from tests.conftest import make_photo
from tests.helpers import BAD_FILES, RunsCode, console_script, png_with_header_size

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 16
TINY_MODEL = {"channels": 8, "residual_blocks": 1, "norm": "instance"}
RANDOM_LOSS = {"weights": "random", "style_weight": 1000.0, "tv_weight": 1.0}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """One intra-op thread, as the subprocess runs get (OMP_NUM_THREADS=1): the same kernels give the
    same bits, and a busy 2-core machine does not thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Overrides for a seconds-long run on six generated photos."""
    root = tmp_path_factory.mktemp("inputs")
    for i in range(6):
        make_photo(root / "photos" / f"img{i}.png", size=(48 + 4 * i, 40), seed=i)
    style = make_photo(root / "style.png", size=(48, 48), seed=42)
    return ["experiment=smoke", "data=folder", f"data.root={root / 'photos'}", "data.image_size=32",
            "data.batch_size=2", "data.val_images=1", f"style.image={style}", "style.size=32",
            f"trainer.max_steps={MAX_STEPS}", "trainer.val_check_interval=8", "trainer.log_every_n_steps=1",
            "callbacks.checkpoint.every_n_train_steps=4", "+trainer.enable_progress_bar=false",
            "+trainer.enable_model_summary=false"]


def compose_run(run_dir: Path, *overrides: str) -> DictConfig:
    """The config ``stylenet-train <overrides> hydra.run.dir=<run_dir>`` would run, for in-process runs."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_in_process(run_dir: Path, *overrides: str) -> None:
    train(compose_run(run_dir, *overrides), run_dir)


def output(run_dir: Path) -> Path:
    """Where :func:`launch` sends the run's stdout and stderr."""
    return run_dir.with_name(f"{run_dir.name}.out")


def launch(run_dir: Path, *overrides: str) -> subprocess.Popen:
    """``stylenet-train <overrides> hydra.run.dir=<run_dir>`` in its own process."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(output(run_dir), "w") as log:
        return subprocess.Popen([*console_script("stylenet-train"), *overrides, f"hydra.run.dir={run_dir}"], stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                cwd=run_dir.parent)


def wait_for(path: Path, process: subprocess.Popen, run_dir: Path, timeout: float = 240) -> None:
    """Until ``path`` exists; fails with the run's output if the process ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log = output(run_dir).read_text()[-3000:]
            pytest.fail(f"{path.name} never appeared (exit {process.wait()}):\n{log}")
        time.sleep(0.02)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_model(run_dir / "smoke.safetensors").net.state_dict()


def assert_bitwise_equal(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    different = [key for key in got if not torch.equal(got[key], expected[key])]
    assert not different, f"not bitwise equal: {different}"


def tensorboard_steps(run_dir: Path, tag: str = "train/total") -> list[int]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return [event.step for event in events.Scalars(tag)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, inputs: list[str]) -> dict[str, torch.Tensor]:
    """The final weights of an uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("reference") / "smoke" / "run"
    run_in_process(run_dir, *inputs, "resume=never")
    assert tensorboard_steps(run_dir) == list(range(MAX_STEPS))
    return weights(run_dir)


# ----------------------------------------------------------------------------- kill -9, SIGTERM


def test_kill_9_then_resume_from_a_new_run_dir_matches_an_uninterrupted_run_bitwise(
        tmp_path: Path, inputs: list[str], reference: dict[str, torch.Tensor],
        caplog: pytest.LogCaptureFixture) -> None:
    killed, resumed = tmp_path / "smoke" / "killed", tmp_path / "smoke" / "resumed"
    process = launch(killed, *inputs)
    wait_for(killed / "checkpoints" / "step_000004.ckpt", process, killed)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (killed / "smoke.safetensors").exists()  # it died mid-run
    with caplog.at_level(logging.INFO, logger="stylenet.checkpoints"):
        run_in_process(resumed, *inputs, "resume=must")
    assert f"continuing from {killed / 'checkpoints'}" in caplog.text
    steps = tensorboard_steps(resumed)  # the new run folder's TensorBoard starts at the resumed step
    assert steps[0] >= 4 and steps == list(range(steps[0], MAX_STEPS))
    events = EventAccumulator(str(resumed / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [event.step for event in events.Images("style")] == [steps[0]]  # its own event files show the style
    assert_bitwise_equal(weights(resumed), reference)


def test_steps_logged_after_the_last_checkpoint_are_not_shown_twice_once_resumed(tmp_path: Path,
                                                                                 inputs: list[str]) -> None:
    """A run killed after its checkpoint at step 4 had logged steps 5-8: resumed in its folder it logs them
    again, and TensorBoard drew both (a line that goes back). The resumed writer purges them from step 4 on."""
    run_dir = tmp_path / "smoke" / "run"
    run_in_process(run_dir, *inputs, "trainer.max_steps=8", "callbacks.export=null")
    for late in ("step_000008.ckpt", "last.ckpt"):  # as if killed before they were written
        (run_dir / "checkpoints" / late).unlink()
    run_in_process(run_dir, *inputs, "trainer.max_steps=8", "callbacks.export=null", "resume=must")
    assert len(list((run_dir / "tensorboard").glob("events.*"))) == 2
    assert tensorboard_steps(run_dir) == list(range(8))


class SignalAt(pl.Callback):
    """Sends this process ``signum`` as step ``at_step`` starts: the run stops at that step's end."""

    def __init__(self, at_step: int, signum: int) -> None:
        self.at_step, self.signum = at_step, signum

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step - 1:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("stop", ["finished", "SIGTERM", "SIGINT"])
def test_a_run_continued_from_a_validation_step_logs_each_later_step_at_its_own_step(
        tmp_path: Path, inputs: list[str], stop: str) -> None:
    """last.ckpt written after a step that validated (the end of a finished run, or a SIGTERM) was taken by
    Lightning's restart for one written during that validation: a run trained on from it logged every later
    point one step late (train/total 9..16 for 8..15, no point at 8, val/total at 16 for 15)."""
    run_dir = tmp_path / "smoke" / "run"
    first = (["trainer.max_steps=8"] if stop == "finished" else
             [f"+callbacks.stop._target_={SignalAt.__module__}.SignalAt", "+callbacks.stop.at_step=8",
              f"+callbacks.stop.signum={int(getattr(signal, stop, 0))}"])
    try:
        run_in_process(run_dir, *inputs, *first, "callbacks.export=null")
    except TrainingInterrupted as stopped:
        assert stopped.code == 128 + getattr(signal, stop)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    run_in_process(run_dir, *inputs, "callbacks.export=null")  # resume=auto, on to MAX_STEPS
    assert tensorboard_steps(run_dir) == list(range(MAX_STEPS))
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    assert [event.step for event in events.Scalars("val/total")] == [7, 15]
    assert [event.step for event in events.Images("val/content_stylized")] == [7, 15]


def test_a_several_styles_run_resumed_from_its_checkpoint_matches_an_uninterrupted_run_bitwise(
        tmp_path: Path, inputs: list[str]) -> None:
    """Each sample's style follows its stream position (StyleTransferTask.batch_styles), so a run of two
    styles stopped after step 4 and resumed in a new run folder trains what an unstopped run trains."""
    styles = [make_photo(tmp_path / f"{name}.png", size=(40, 40), seed=60 + k) for k, name in enumerate("xy")]
    multi = [o for o in inputs if not o.startswith(("style.image=", "trainer.max_steps="))]
    multi += ["style=multi", f"style.images=[{styles[0]},{styles[1]}]", "style.size=32"]
    run_in_process(tmp_path / "smoke" / "whole", *multi, "resume=never", "trainer.max_steps=8")
    run_in_process(tmp_path / "smoke" / "stopped", *multi, "resume=never", "trainer.max_steps=4")
    run_in_process(tmp_path / "smoke" / "resumed", *multi, "resume=must", "trainer.max_steps=8")
    assert tensorboard_steps(tmp_path / "smoke" / "resumed")[0] >= 4
    assert read_model(tmp_path / "smoke" / "resumed" / "smoke.safetensors").styles == ["x", "y"]
    assert_bitwise_equal(weights(tmp_path / "smoke" / "resumed"), weights(tmp_path / "smoke" / "whole"))


def test_sigterm_saves_the_current_step_flushes_tensorboard_exits_143_and_resumes(
        tmp_path: Path, inputs: list[str], reference: dict[str, torch.Tensor]) -> None:
    run_dir = tmp_path / "smoke" / "run"
    process = launch(run_dir, *inputs)
    wait_for(run_dir / "checkpoints" / "step_000004.ckpt", process, run_dir)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143, output(run_dir).read_text()[-3000:]
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 4 <= step < MAX_STEPS
    assert tensorboard_steps(run_dir) == list(range(step))  # every step up to the signal was flushed
    saved = f"interrupted: saved {run_dir / 'checkpoints' / 'last.ckpt'} at step {step}"
    assert saved in output(run_dir).read_text()

    run_in_process(run_dir, *inputs)  # resume=auto, the default, in the same run folder
    assert tensorboard_steps(run_dir) == list(range(MAX_STEPS))  # steps continue, none repeated
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [event.step for event in events.Images("style")] == [0]  # once: not again by the resumed run
    assert_bitwise_equal(weights(run_dir), reference)


def test_sigterm_only_marks_the_stop_which_every_rank_takes_at_a_batch_end() -> None:
    """torchrun and SLURM signal every rank at once; Lightning's own handler broadcasts from inside the
    handler and hangs them (Lightning-AI/pytorch-lightning#20806). Ours only notes the signal; at a
    batch's end the ranks agree (any rank's signal stops all), and Lightning's own stop follows once
    the step is logged. A rank that got no signal stops all the same."""
    sent: list[list[float]] = []

    def summed_with_another_rank(flags: torch.Tensor, reduce_op: str) -> torch.Tensor:
        assert reduce_op == "sum"
        sent.append(flags.tolist())
        return flags + torch.tensor([0.0, 1.0])  # another rank got SIGTERM (and no Ctrl-C)

    for signalled in (True, False):
        run = ResumableRun("t")
        trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=summed_with_another_rank, root_device="cpu"),
                                  _signal_connector=SimpleNamespace(received_sigterm=False), accumulate_grad_batches=1)
        if signalled:
            run.on_sigterm(signal.SIGTERM, None)
        run.on_train_batch_end(trainer, None, None, None, 0)  # no exception here: Lightning's, after logging
        assert trainer._signal_connector.received_sigterm is True
    assert sent == [[0.0, 1.0], [0.0, 0.0]]  # (Ctrl-C, SIGTERM) noted on this rank


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_the_end_of_an_accumulation_window_only(signum: int) -> None:
    """With trainer.accumulate_grad_batches, a stop inside a window dropped its batches' gradients: the
    checkpoint holds the last optimiser step, and the resumed run never trained on them (no longer bitwise
    the uninterrupted run)."""
    run = ResumableRun("t")
    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=lambda flags, reduce_op: flags, root_device="cpu"),
                              _signal_connector=SimpleNamespace(received_sigterm=False), accumulate_grad_batches=3)
    (run.on_sigint if signum == signal.SIGINT else run.on_sigterm)(signum, None)
    for batch_idx in (3, 4):  # the second window's first two batches: the step is not taken yet
        run.on_train_batch_end(trainer, None, None, None, batch_idx)
    assert trainer._signal_connector.received_sigterm is False
    run.on_train_batch_end(trainer, None, None, None, 5)  # Lightning's stop after the step (Ctrl-C's too)
    assert trainer._signal_connector.received_sigterm is True and run.stopping == signum


def test_the_stopping_steps_validation_runs_whole_and_a_signal_after_training_stops_at_once() -> None:
    """Lightning stops between validation batches on its flag: a signal at a validation step's end kept only its
    first batch's figures. Once training is over (the model file's export) a signal was noted and ignored."""
    run = ResumableRun("t")
    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=lambda flags, reduce_op: flags, root_device="cpu"),
                              _signal_connector=SimpleNamespace(received_sigterm=False), accumulate_grad_batches=1)
    run.on_validation_start(trainer, None)  # no signal: no flag
    assert trainer._signal_connector.received_sigterm is False
    run.on_sigterm(signal.SIGTERM, None)
    run.on_train_batch_end(trainer, None, None, None, 0)
    run.on_validation_start(trainer, None)
    assert trainer._signal_connector.received_sigterm is False  # the validation runs to its end
    run.on_validation_end(trainer, None)
    assert trainer._signal_connector.received_sigterm is True  # then Lightning stops
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        run.on_train_end(trainer, None)
        for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            with pytest.raises(TrainingInterrupted) as stop:
                os.kill(os.getpid(), signum)
                time.sleep(1)  # (delivered at the next bytecode)
            assert stop.value.code == code
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def test_a_signal_in_the_last_step_says_which_folder_writes_the_runs_end(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """"run again (resume=auto)" in a new folder passed over the finished run: its own folder writes its end."""
    saved: list[Path] = []
    for step, expected in ((19, "at step 19; run again (resume=auto) to continue"),
                           (20, f"at step 20, the last; run again with hydra.run.dir={tmp_path} to write its model")):
        trainer = SimpleNamespace(checkpoint_callback=None, default_root_dir=str(tmp_path), global_step=step,
                                  max_steps=20, is_global_zero=True, save_checkpoint=saved.append)
        with caplog.at_level(logging.WARNING, logger="stylenet.callbacks"):
            ResumableRun("t").on_exception(trainer, None, TrainingInterrupted(signal.SIGTERM))
        assert expected in caplog.text
    assert saved == [tmp_path / "checkpoints" / "last.ckpt"] * 2


def test_default_checkpoints_every_1000_steps_and_every_10_minutes_share_one_last_ckpt(tmp_path: Path) -> None:
    cfg = compose_run(tmp_path / "run")
    steps, timed = build(cfg.callbacks.checkpoint), build(cfg.callbacks.checkpoint_time)
    assert (steps._every_n_train_steps, steps._train_time_interval) == (1000, None)
    assert (timed._every_n_train_steps, timed._train_time_interval) == (0, timedelta(minutes=10))
    assert steps.dirpath == timed.dirpath == str((tmp_path / "run" / "checkpoints").resolve())
    assert steps.save_last is timed.save_last is True and timed.save_top_k == 0  # it writes last.ckpt only
    assert steps.state_key != timed.state_key  # Lightning refuses two stateful callbacks with one key


def checkpoint_names(run_dir: Path) -> list[str]:
    """The checkpoints resume=auto sees (not the hidden temporary file of a write cut by a kill)."""
    return sorted(path.name for run in candidate_runs(run_dir) for path in run if path.parent.parent == run_dir)


def test_kill_9_resumes_from_the_time_based_checkpoint_when_no_step_checkpoint_exists(
        tmp_path: Path, inputs: list[str], caplog: pytest.LogCaptureFixture) -> None:
    killed, resumed = tmp_path / "smoke" / "killed", tmp_path / "smoke" / "resumed"
    timed = ["callbacks.checkpoint.every_n_train_steps=100000",  # the step interval never comes
             "callbacks.checkpoint_time.train_time_interval.minutes=0.02",  # 1.2 s
             "trainer.limit_val_batches=0"]  # nor a validation
    process = launch(killed, *inputs, *timed, "trainer.max_steps=100000")
    last = killed / "checkpoints" / "last.ckpt"
    wait_for(last, process, killed)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert checkpoint_names(killed) == ["last.ckpt"]  # no step_*.ckpt: only time wrote it
    checkpoint = torch.load(last, weights_only=True)
    step = checkpoint["global_step"]
    assert step > 0 and sum(key.startswith("ModelCheckpoint") for key in checkpoint["callbacks"]) == 2

    with caplog.at_level(logging.INFO, logger="stylenet.checkpoints"):
        run_in_process(resumed, *inputs, *timed, f"trainer.max_steps={step + 2}")  # resume=auto
    assert f"continuing from {last} " in caplog.text
    assert tensorboard_steps(resumed) == [step, step + 1]
    assert checkpoint_names(resumed) == ["last.ckpt"]  # both callbacks rewrote it: no last-v1.ckpt
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step + 2


class PressCtrlC(pl.Callback):
    """Sends this process SIGINT ``presses`` times at the end of step ``at_step``."""

    def __init__(self, at_step: int, presses: int) -> None:
        self.at_step, self.presses = at_step, presses

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            for _ in range(self.presses):
                os.kill(os.getpid(), signal.SIGINT)


def tiny_task(style: Path, **kwargs: Any) -> StyleTransferTask:
    return StyleTransferTask(model=TINY_MODEL, loss=RANDOM_LOSS, image_size=32,
                             style={"name": "t", "image": str(style), "size": 32}, **kwargs)


def tiny_data(photos: Path) -> ImageFolderDataModule:
    return ImageFolderDataModule(source="folder", root=str(photos), image_size=32, batch_size=2, val_images=1)


def tiny_trainer(run_dir: Path, max_steps: int, *callbacks: pl.Callback, **kwargs: Any) -> pl.Trainer:
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step_{step:06d}",
                                  every_n_train_steps=5, save_last=True, save_top_k=-1,
                                  auto_insert_metric_name=False)
    return pl.Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=-1, limit_val_batches=0,
                      log_every_n_steps=1, use_distributed_sampler=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=run_dir, logger=False,
                      callbacks=[*callbacks, ResumableRun("t"), checkpoints], plugins=[AtomicCheckpointIO()],
                      **kwargs)


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_saves_the_current_step_exits_130_and_resumes_exactly_a_second_one_aborts(
        tmp_path: Path, photo_folder: Path, style_image: Path, presses: int) -> None:
    handler = signal.getsignal(signal.SIGINT)
    pl.seed_everything(0)
    trainer = tiny_trainer(tmp_path, 8, PressCtrlC(at_step=5, presses=presses))
    with pytest.raises(SystemExit) as stop:
        trainer.fit(tiny_task(style_image), datamodule=tiny_data(photo_folder))
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    last = tmp_path / "checkpoints" / "last.ckpt"
    if presses == 2:  # Lightning's own KeyboardInterrupt path: exit 1 (train() hands it on as Ctrl-C), nothing saved
        assert stop.value.code == 1 and not last.exists()
        return
    # Lightning's stop after the step, which train() ends with 130: the step's periodic checkpoint is kept (a stop
    # raised before the checkpoint callback's hook lost it)
    stopping = next(callback.stopping for callback in trainer.callbacks if isinstance(callback, ResumableRun))
    assert isinstance(stop.value, SIGTERMException) and stopping == signal.SIGINT
    assert torch.load(last, weights_only=True)["global_step"] == 5
    assert torch.load(tmp_path / "checkpoints" / "step_000005.ckpt", weights_only=True)["global_step"] == 5
    resumed = tiny_trainer(tmp_path, 8)
    resumed.fit(tiny_task(style_image), datamodule=tiny_data(photo_folder), ckpt_path=last, weights_only=True)
    pl.seed_everything(0)
    uninterrupted = tiny_task(style_image)
    tiny_trainer(tmp_path / "reference", 8).fit(uninterrupted, datamodule=tiny_data(photo_folder))
    assert_bitwise_equal(resumed.lightning_module.net.state_dict(), uninterrupted.net.state_dict())


def test_a_second_ctrl_c_reaches_the_command_as_a_ctrl_c(tmp_path: Path, inputs: list[str]) -> None:
    """Lightning ends a KeyboardInterrupt with exit 1, the status of a command line Hydra cannot parse:
    train() hands it on as the Ctrl-C it was, which stylenet-train reports in one line with exit 130
    (test_cli_train's test_ctrl_c_before_the_first_step_is_one_line), and no checkpoint of that step."""
    press = [f"+callbacks.press._target_={PressCtrlC.__module__}.PressCtrlC", "+callbacks.press.at_step=3",
             "+callbacks.press.presses=2"]
    with pytest.raises(KeyboardInterrupt):
        run_in_process(tmp_path / "run", *inputs, *press)
    assert checkpoint_names(tmp_path / "run") == []


# ----------------------------------------------------------------------------- resume=auto|must|never


def fake_checkpoint(path: Path, step: int, name: str = "exp", model: dict | None = None,
                    weight: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"net.w": torch.full((2,), weight)}, "optimizer_states": [],
                "global_step": step, "loops": {}, EXPERIMENT_KEY: name,
                "hyper_parameters": {"model": model or TINY_MODEL, "style_sha256": "abc"}}, path)
    time.sleep(0.01)  # distinct modification times
    return path


HPARAMS = {"model": TINY_MODEL, "style_sha256": "abc", "lr": 1e-3}


def test_resume_auto_takes_the_newest_valid_checkpoint_of_the_experiment_and_names_what_it_skips(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outputs = tmp_path / "outputs" / "exp"
    fake_checkpoint(outputs / "t0" / "checkpoints" / "step_000005.ckpt", 5)
    good = fake_checkpoint(outputs / "t1" / "checkpoints" / "step_000010.ckpt", 10)
    nan = fake_checkpoint(outputs / "t1" / "checkpoints" / "step_000020.ckpt", 20, weight=float("nan"))
    other_model = fake_checkpoint(outputs / "t2" / "checkpoints" / "last.ckpt", 30,
                                  model={**TINY_MODEL, "channels": 4})
    other_name = fake_checkpoint(outputs / "t2" / "checkpoints" / "step_000030.ckpt", 30, name="another")
    truncated = outputs / "t2" / "checkpoints" / "step_000040.ckpt"
    truncated.write_bytes(good.read_bytes()[:300])
    (outputs / "t2" / "checkpoints" / ".last.ckpt.123.tmp").write_bytes(good.read_bytes())  # a crashed write
    new_run = outputs / "t3"
    with caplog.at_level(logging.INFO, logger="stylenet.checkpoints"):
        assert resolve_resume("auto", None, new_run, "exp", HPARAMS) == str(good)
        assert resolve_resume("must", None, new_run, "exp", HPARAMS) == str(good)
    skipped = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [line.split(":")[0] for line in skipped[:4]] == [f"skipping checkpoint {p}" for p in
                                                           (truncated, other_name, other_model, nan)]
    assert "unreadable" in skipped[0] and "experiment 'another'" in skipped[1]
    assert "another model" in skipped[2] and "non-finite weights in net.w" in skipped[3]
    assert resolve_resume("never", None, new_run, "exp", HPARAMS) is None
    # the run folder's own checkpoints come first, even when a sibling's are newer
    own = fake_checkpoint(new_run / "checkpoints" / "step_000001.ckpt", 1)
    fake_checkpoint(outputs / "t4" / "checkpoints" / "step_000050.ckpt", 50)
    assert resolve_resume("auto", None, new_run, "exp", HPARAMS) == str(own)
    # a folder copied without -p: its files' times are the copy's, in any order; last.ckpt, of the later
    # step, is still the newest state
    last = fake_checkpoint(new_run / "checkpoints" / "last.ckpt", 2)
    os.utime(own, ns=(last.stat().st_atime_ns, last.stat().st_mtime_ns + 10**9))
    assert resolve_resume("auto", None, new_run, "exp", HPARAMS) == str(last)
    # killed between a step file and its rewrite of last.ckpt: the step file is newer, by time and by step
    later = fake_checkpoint(new_run / "checkpoints" / "step_000003.ckpt", 3)
    os.utime(later, ns=(last.stat().st_atime_ns, last.stat().st_mtime_ns + 2 * 10**9))
    assert resolve_resume("auto", None, new_run, "exp", HPARAMS) == str(later)
    # gone back with ckpt_path= to step 1 and saved there: its last.ckpt, newer by time, has fewer steps than
    # the abandoned later file, and still leads
    fake_checkpoint(last, 1)
    os.utime(last, ns=(later.stat().st_atime_ns, later.stat().st_mtime_ns + 10**9))
    assert resolve_resume("auto", None, new_run, "exp", HPARAMS) == str(last)


def test_a_checkpoint_of_another_objective_is_not_continued(tmp_path: Path) -> None:
    """``experiment=sr_x4 loss=pixel`` (the paper's per-pixel baseline) after ``experiment=sr_x4``: one
    experiment name, so only the recorded objective tells the feature-loss run from the baseline."""
    loss = {"content_weight": 1.0, "pixel_weight": 0.0, "content_layers": ["relu2_2"]}
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"net.w": torch.ones(2)}, "optimizer_states": [], "global_step": 4, "loops": {},
                "hyper_parameters": {**HPARAMS, "loss": loss, "temporal_weight": 0.0}}, checkpoint)
    same = {**HPARAMS, "loss": dict(loss), "temporal_weight": 0.0}
    assert checkpoint_problem(checkpoint, None, same) is None
    pixel = {**same, "loss": {**loss, "content_weight": 0.0, "pixel_weight": 1.0}}
    assert checkpoint_problem(checkpoint, None, pixel) == (
        "trained with another loss (loss.content_weight: 1.0, this run has 0.0; "
        "loss.pixel_weight: 0.0, this run has 1.0)")
    older = tmp_path / "older.ckpt"  # a style checkpoint from before the temporal term: none, so 0
    torch.save({"state_dict": {"net.w": torch.ones(2)}, "optimizer_states": [], "global_step": 4, "loops": {},
                "hyper_parameters": {**HPARAMS, "loss": loss}}, older)
    assert checkpoint_problem(older, None, same) is None
    steadier = {**same, "temporal_weight": 600.0}
    assert checkpoint_problem(checkpoint, None, steadier) == (
        "trained with another temporal_weight (0.0, this run has 600.0)")
    # the other terms and the style targets' scale that the model file records (absent before: their defaults)
    for key, value, before in (("saturation_weight", 0.5, "0.0"), ("identity_steps", 80, "0")):
        assert checkpoint_problem(checkpoint, None, {**same, key: value}) == (
            f"trained with another {key} ({before}, this run has {value!r})")
    sized = tmp_path / "sized.ckpt"
    torch.save({"state_dict": {"net.w": torch.ones(2)}, "optimizer_states": [], "global_step": 4, "loops": {},
                "hyper_parameters": {**same, "style": {"image": "a.jpg", "size": 96}}}, sized)
    assert checkpoint_problem(sized, None, {**same, "style": {"image": "b/a.jpg", "size": 96}}) is None
    assert checkpoint_problem(sized, None, {**same, "style": {"image": "a.jpg", "size": 64}}) == (
        "trained with another style.size (96, this run has 64)")


def test_a_loss_weights_file_is_known_by_its_content_not_by_its_path_as_typed(
        tmp_path: Path, style_image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``loss.weights=./vgg16.pth``, then the same file spelled otherwise: one loss network, so the run
    continues; another file put at that path is another one, so it does not (both were the other way
    round). A keyword, and a checkpoint saved before the hash, keep the path as given."""
    monkeypatch.chdir(tmp_path)
    vgg = tmp_path / "vgg16.pth"

    def write_weights(seed: int) -> None:
        torch.save({f"features.{key}": value for key, value in random_state("vgg16", 4, seed).items()}, vgg)

    def hparams(weights: str) -> dict[str, Any]:
        loss = {"weights": weights, "content_layers": ["relu1_2"], "style_layers": ["relu1_2"]}
        return dict(StyleTransferTask(model=TINY_MODEL, loss=loss, image_size=32,
                                      style={"name": "t", "image": str(style_image), "size": 32}).hparams)

    def saved(settings: dict[str, Any]) -> Path:
        path = tmp_path / "last.ckpt"
        torch.save({"state_dict": {"net.w": torch.ones(2)}, "optimizer_states": [], "global_step": 4, "loops": {},
                    "hyper_parameters": settings}, path)
        return path

    write_weights(0)
    first = hparams("./vgg16.pth")
    checkpoint = saved(first)
    assert checkpoint_problem(checkpoint, None, hparams(str(vgg))) is None
    assert checkpoint_problem(checkpoint, None, hparams("vgg16.pth")) is None
    assert checkpoint_problem(checkpoint, None, hparams("random")) == (
        "trained with another loss (loss.weights: './vgg16.pth', this run has 'random')")
    write_weights(1)
    replaced = hparams("./vgg16.pth")
    assert checkpoint_problem(checkpoint, None, replaced) == (
        f"trained with another loss.weights file (sha256 {first[WEIGHTS_SHA256][:12]}, this run's "
        f"{replaced[WEIGHTS_SHA256][:12]})")
    older = saved({key: value for key, value in first.items() if key != WEIGHTS_SHA256})  # before the hash
    assert checkpoint_problem(older, None, replaced) is None
    assert "loss.weights: './vgg16.pth', this run has " in checkpoint_problem(older, None, hparams(str(vgg)))


def test_resume_auto_skips_a_finished_run_instead_of_training_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A second ``stylenet-train experiment=demo`` must train afresh: continuing the first, finished
    run would take no step and export no model; nor does it fall back to an older interrupted run,
    which the finished one may itself have continued."""
    outputs = tmp_path / "outputs" / "exp"
    interrupted = fake_checkpoint(outputs / "t0" / "checkpoints" / "step_000100.ckpt", 100)
    fake_checkpoint(outputs / "t1" / "checkpoints" / "step_000150.ckpt", 150)  # the finished run's mid-run one
    finished = fake_checkpoint(outputs / "t1" / "checkpoints" / "last.ckpt", 200)
    (outputs / "t1" / "exp.safetensors").write_bytes(b"")  # its end written
    with caplog.at_level(logging.INFO, logger="stylenet.checkpoints"):
        assert resolve_resume("auto", None, outputs / "t2", "exp", HPARAMS, max_steps=200) is None
        assert "a finished run (step 200, trainer.max_steps=200)" in caplog.text
        assert "step_000150" not in caplog.text and str(interrupted) not in caplog.text  # the search ended
        assert "starting afresh" in caplog.text
        # Lightning's ckpt_path=last looks only in this run's new folder; ours means resume=must
        with pytest.raises(StylenetError, match="resume=must: no valid checkpoint"):
            resolve_resume("never", "last", outputs / "t2", "exp", HPARAMS, max_steps=200)
    # a newer finished run of another experiment or network is no run of this one: the search goes on
    others = tmp_path / "others" / "exp"
    mine = fake_checkpoint(others / "t0" / "checkpoints" / "last.ckpt", 100)
    fake_checkpoint(others / "t1" / "checkpoints" / "last.ckpt", 200, name="another")
    fake_checkpoint(others / "t2" / "checkpoints" / "last.ckpt", 200, model={**TINY_MODEL, "channels": 4})
    assert resolve_resume("auto", None, others / "t3", "exp", HPARAMS, max_steps=200) == str(mine)
    # an interrupted run newer than the finished one is continued
    newer = fake_checkpoint(outputs / "t3" / "checkpoints" / "last.ckpt", 120)
    assert resolve_resume("auto", None, outputs / "t4", "exp", HPARAMS, max_steps=200) == str(newer)
    with pytest.raises(StylenetError, match=r"cannot resume this run: a finished run \(step 200"):
        resolve_resume("auto", str(finished), outputs / "t2", "exp", HPARAMS, max_steps=200)
    # no step limit (max_steps -1 or unset): any step can continue
    assert resolve_resume("auto", None, outputs / "t2", "exp", HPARAMS, max_steps=-1) == str(newer)
    # training again in the finished run's own folder would overwrite its checkpoints and model file
    for mode in ("auto", "must", "never"):
        with pytest.raises(StylenetError, match=r"'.*t1' already holds a finished run \(step 200.*another hydra.run"):
            resolve_resume(mode, None, outputs / "t1", "exp", HPARAMS, max_steps=200)


def test_a_finished_run_stopped_before_its_end_elsewhere_is_named_not_trained_again(tmp_path: Path) -> None:
    """A SIGTERM in the last step (or a kill during the export) left a finished checkpoint without its model
    file: the same command again passed over it and trained the whole run afresh in a new folder."""
    outputs = tmp_path / "outputs" / "exp"
    fake_checkpoint(outputs / "t1" / "checkpoints" / "last.ckpt", 200)
    record = outputs / "t1" / ".hydra" / "config.yaml"
    record.parent.mkdir()
    record.write_text("name: exp\ncallbacks:\n  export:\n    _target_: stylenet.callbacks.ExportStyleModel\n"
                      "    path: ${hydra:runtime.output_dir}/${name}.safetensors\n")
    for mode in ("auto", "must"):
        with pytest.raises(StylenetError, match=f"^{re.escape(repr(str(outputs / 't1')))} holds a finished run of "
                           r"experiment 'exp' stopped before its model file was written: run again with "
                           f"hydra.run.dir={re.escape(str(outputs / 't1'))} to write it, or pass resume=never"):
            resolve_resume(mode, None, outputs / "t2", "exp", HPARAMS, max_steps=200)
    assert resolve_resume("never", None, outputs / "t2", "exp", HPARAMS, max_steps=200) is None
    (outputs / "t1" / "quality.json").write_text("{}")  # its model file moved away after its report: finished
    assert resolve_resume("auto", None, outputs / "t2", "exp", HPARAMS, max_steps=200) is None
    (outputs / "t1" / "quality.json").unlink()
    several = outputs / "t1" / "styles" / "a" / "quality.json"  # several styles' reports: one per style
    several.parent.mkdir(parents=True)
    several.write_text("{}")
    assert resolve_resume("auto", None, outputs / "t2", "exp", HPARAMS, max_steps=200) is None
    several.unlink()
    (outputs / "t1" / "astronaut_xmas.png").write_bytes(b"png")  # a style named x...: no super-resolution photo
    with pytest.raises(StylenetError, match=r"stopped before its model file was written"):
        resolve_resume("auto", None, outputs / "t2", "exp", HPARAMS, max_steps=200)
    (outputs / "t1" / "astronaut_x4.png").write_bytes(b"png")  # super-resolution's report: its model file moved
    assert resolve_resume("auto", None, outputs / "t2", "exp", HPARAMS, max_steps=200) is None
    (outputs / "t1" / "astronaut_x4.png").unlink()
    record.write_text("name: exp\ncallbacks:\n  export: null\n")  # a run that was to write no model file
    assert resolve_resume("auto", None, outputs / "t2", "exp", HPARAMS, max_steps=200) is None
    record.write_text("name: exp\ncallbacks:\n  export:\n    _target_: stylenet.callbacks.ExportStyleModel\n"
                      f"    path: {tmp_path}/elsewhere/exp.safetensors\n")  # its model file elsewhere: not known here
    assert resolve_resume("auto", None, outputs / "t2", "exp", HPARAMS, max_steps=200) is None


def test_style_layer_weights_gatys_and_its_numbers_are_one_objective(tmp_path: Path) -> None:
    """A run of gatys_vgg19's earlier [1, 4, 16, 64, 64] is continued under its 'gatys' (refused as another loss);
    another list is another objective."""
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    recorded = {**HPARAMS, "loss": {"style_layers": layers, "style_layer_weights": [1, 4, 16, 64, 64]}}
    checkpoint = fake_checkpoint(tmp_path / "last.ckpt", 10)
    torch.save({**torch.load(checkpoint, weights_only=True), "hyper_parameters": recorded}, checkpoint)
    gatys = {**HPARAMS, "loss": {"style_layers": layers, "style_layer_weights": "gatys"}}
    assert checkpoint_problem(checkpoint, "exp", gatys) is None
    other = {**HPARAMS, "loss": {"style_layers": layers, "style_layer_weights": [1, 1, 1, 1, 1]}}
    assert "trained with another loss" in checkpoint_problem(checkpoint, "exp", other)


def test_a_sweeps_jobs_never_continue_one_another(tmp_path: Path) -> None:
    """resume=must and ckpt_path=last searched the sweep's other job folders (only auto was kept to its own):
    a job trained on from another job's checkpoint, and its settings."""
    sweep = tmp_path / "sweep"
    fake_checkpoint(sweep / "0" / "checkpoints" / "last.ckpt", 5)
    assert resolve_resume("must", None, sweep / "1", "exp", HPARAMS, max_steps=20) == \
        str(sweep / "0" / "checkpoints" / "last.ckpt")  # a plain run's sibling folders are its earlier runs
    for mode, ckpt_path in (("must", None), ("auto", "last")):
        with pytest.raises(StylenetError, match=r"resume=must: no valid checkpoint .* \(a sweep's job continues "
                                                r"its own\)$"):
            resolve_resume(mode, ckpt_path, sweep / "1", "exp", HPARAMS, max_steps=20, siblings=False)
    assert resolve_resume("auto", None, sweep / "1", "exp", HPARAMS, max_steps=20, siblings=False) is None


def test_a_run_folder_holding_checkpoints_this_run_does_not_continue_is_refused(tmp_path: Path) -> None:
    """An interrupted run of another style in the folder: training there would overwrite its
    last.ckpt, and it could never be resumed again."""
    run_dir = tmp_path / "outputs" / "exp" / "run"
    other_style = fake_checkpoint(run_dir / "checkpoints" / "last.ckpt", 3)
    before = other_style.read_bytes()
    this_run = {**HPARAMS, "style_sha256": "another painting"}
    for mode in ("auto", "must", "never"):
        with pytest.raises(StylenetError, match=r"'.*run' already holds an earlier run's checkpoint last.ckpt, "
                                                r"trained with another style image \(sha256 abc, this run's "
                                                r"another pain\), which this run would overwrite"):
            resolve_resume(mode, None, run_dir, "exp", this_run, max_steps=20)
    elsewhere = fake_checkpoint(tmp_path / "elsewhere" / "checkpoints" / "step_000002.ckpt", 2,
                                model=TINY_MODEL)
    with pytest.raises(StylenetError, match="already holds"):  # an explicit checkpoint of the same style too
        resolve_resume("auto", str(elsewhere), run_dir, "exp", HPARAMS, max_steps=20)
    assert other_style.read_bytes() == before
    # the folder's own checkpoint, continued: that is what the folder is for
    assert resolve_resume("auto", None, run_dir, "exp", HPARAMS, max_steps=20) == str(other_style)


def test_resume_must_fails_clearly_and_explicit_paths_are_checked(tmp_path: Path) -> None:
    run_dir = tmp_path / "outputs" / "exp" / "t0"
    assert resolve_resume("auto", None, run_dir, "exp", HPARAMS) is None
    with pytest.raises(StylenetError, match=r"resume=must: no valid checkpoint of experiment 'exp' in .*t0/"):
        resolve_resume("must", None, run_dir, "exp", HPARAMS)
    with pytest.raises(StylenetError, match="resume must be one of auto, must, never"):
        resolve_resume("sometimes", None, run_dir, "exp", HPARAMS)
    with pytest.raises(StylenetError, match="does not exist"):
        resolve_resume("never", str(tmp_path / "nope.ckpt"), run_dir, "exp", HPARAMS)
    with pytest.raises(StylenetError, match=r"ckpt_path '.*' is a folder: give a .ckpt file in it, or ckpt_path=last"):
        resolve_resume("never", str(tmp_path), run_dir, "exp", HPARAMS)  # it said "does not exist"
    (tmp_path / "junk.ckpt").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(StylenetError, match="junk.ckpt' cannot resume this run: unreadable"):
        resolve_resume("auto", str(tmp_path / "junk.ckpt"), run_dir, "exp", HPARAMS)
    explicit = fake_checkpoint(tmp_path / "elsewhere.ckpt", 3, name="another")
    torch.save({"state_dict": {"net.w": torch.zeros(100_000)}}, buffer := io.BytesIO())
    whole = buffer.getvalue()
    for length in (5000, len(whole) // 2):  # cut short: torch said "[Errno 22] Invalid argument", or miniz's words
        (cut := tmp_path / "cut.ckpt").write_bytes(whole[:length])
        with pytest.raises(StylenetError, match=r"cut.ckpt' cannot resume this run: unreadable \(truncated or "
                                                r"damaged: torch.save's zip archive in it cannot be read\)$"):
            resolve_resume("never", str(cut), run_dir, "exp", HPARAMS)
    assert resolve_resume("never", str(explicit), run_dir, "exp", HPARAMS) == str(explicit)
    for name in ("best", "hpc", "registry"):  # Lightning's own names: nothing here keeps what they name
        with pytest.raises(StylenetError, match=f"ckpt_path={name} is Lightning's name for a checkpoint"):
            resolve_resume("auto", name, run_dir, "exp", HPARAMS)
    with pytest.raises(StylenetError, match="resume=must: no valid checkpoint"):  # ours: the newest of the experiment
        resolve_resume("never", "last", run_dir, "exp", HPARAMS)


def test_going_back_to_an_earlier_checkpoint_of_the_folder_says_what_will_be_replaced(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ckpt_path= an older checkpoint of this very run (after a divergence, say) is allowed, with a warning
    naming the later ones that training will write over; the newest one, or another folder's, says nothing."""
    run_dir = tmp_path / "outputs" / "exp" / "t0"
    older = fake_checkpoint(run_dir / "checkpoints" / "step_000020.ckpt", 20)
    fake_checkpoint(run_dir / "checkpoints" / "step_000040.ckpt", 40)
    newest = fake_checkpoint(run_dir / "checkpoints" / "last.ckpt", 40)
    with caplog.at_level(logging.WARNING, logger="stylenet.checkpoints"):
        assert resolve_resume("auto", str(older), run_dir, "exp", HPARAMS, max_steps=60) == str(older)
        assert resolve_resume("auto", str(newest), run_dir, "exp", HPARAMS, max_steps=60) == str(newest)
        assert resolve_resume("auto", str(run_dir / "checkpoints" / "step_000040.ckpt"), run_dir, "exp", HPARAMS,
                              max_steps=60)  # last.ckpt is the same step: nothing to replace
    assert [record.getMessage() for record in caplog.records] == [
        "ckpt_path: continuing from step_000020.ckpt (step 20), older than last.ckpt, step_000040.ckpt of this run "
        "folder, which training will replace"]
    caplog.clear()  # a lower trainer.max_steps: step 40 is never reached again, and stays as it was
    with caplog.at_level(logging.WARNING, logger="stylenet.checkpoints"):
        resolve_resume("auto", str(older), run_dir, "exp", HPARAMS, max_steps=30)
    assert [record.getMessage() for record in caplog.records] == [
        "ckpt_path: continuing from step_000020.ckpt (step 20), older than last.ckpt of this run folder, which "
        "training will replace; kept from the earlier run (beyond trainer.max_steps=30): step_000040.ckpt"]


def test_the_run_folders_lock_holder_removes_what_writes_cut_short_left(tmp_path: Path) -> None:
    """A kill -9 during a checkpoint's write left its full-size hidden temporary file for good."""
    from stylenet.atomic import temporary_path
    from stylenet.checkpoints import run_folder_lock

    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    cut = [temporary_path(checkpoints / "step_000010.ckpt"), temporary_path(tmp_path / "run" / "exp.safetensors")]
    kept = [checkpoints / "step_000005.ckpt", checkpoints / ".notes.tmp.txt", tmp_path / "run" / ".hydra"]
    for path in [*cut, *kept[:2]]:
        path.write_bytes(b"x")
    kept[2].mkdir()
    with run_folder_lock(tmp_path / "run"):
        assert not any(path.exists() for path in cut) and all(path.exists() for path in kept)


def test_resume_auto_passes_over_another_seed_a_live_run_and_a_link_to_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``seed=1`` after an interrupted ``seed=0`` run went on from seed 0's steps with seed 1's stream; a job
    launched twice took the first launch's checkpoints while it still trained; a checkpoint that is a link
    to nothing was a FileNotFoundError traceback for every launch beside it."""
    from stylenet.checkpoints import SEED_KEY, note_continued, run_folder_lock

    experiment = tmp_path / "outputs" / "exp"
    seeded = fake_checkpoint(experiment / "t0" / "checkpoints" / "last.ckpt", 10)
    stamped = torch.load(seeded, weights_only=True)
    torch.save({**stamped, SEED_KEY: 0}, seeded)
    assert checkpoint_problem(seeded, "exp", {**HPARAMS, SEED_KEY: 1}) == (
        "trained with another seed (0, this run has seed=1)")
    assert checkpoint_problem(seeded, "exp", {**HPARAMS, SEED_KEY: 0}) is None
    assert resolve_resume("auto", None, experiment / "t9", "exp", {**HPARAMS, SEED_KEY: 1}) is None
    live = fake_checkpoint(experiment / "t1" / "checkpoints" / "last.ckpt", 20)
    (experiment / "t2" / "checkpoints").mkdir(parents=True)
    (experiment / "t2" / "checkpoints" / "last.ckpt").symlink_to(tmp_path / "gone" / "last.ckpt")
    with caplog.at_level(logging.WARNING, logger="stylenet.checkpoints"):
        with run_folder_lock(experiment / "t1"):  # its stylenet-train still at work
            assert resolve_resume("auto", None, experiment / "t9", "exp", {**HPARAMS, SEED_KEY: 0}) == str(seeded)
        assert resolve_resume("auto", None, experiment / "t9", "exp", {**HPARAMS, SEED_KEY: 0}) == str(live)
    with run_folder_lock(experiment / "t1"):  # a job launched twice: the first launch continues t0's run in t1
        note_continued(experiment / "t1", str(seeded))
        with pytest.raises(StylenetError, match=f"^the run of {re.escape(repr(str(seeded)))} is being continued by "
                           f"another stylenet-train in {re.escape(repr(str(experiment / 't1')))} now"):
            resolve_resume("auto", None, experiment / "t9", "exp", {**HPARAMS, SEED_KEY: 0})
    messages = [record.getMessage() for record in caplog.records]
    assert f"skipping run folder {experiment / 't1'}: another stylenet-train is at work there" in messages
    assert f"skipping checkpoint {experiment / 't2' / 'checkpoints' / 'last.ckpt'}: No such file or directory" \
        in messages


def test_resume_must_through_stylenet_train_fails_before_training(tmp_path: Path, inputs: list[str]) -> None:
    run_dir = tmp_path / "smoke" / "run"
    with pytest.raises(StylenetError, match=f"no valid checkpoint of experiment 'smoke' in {run_dir}/"):
        run_in_process(run_dir, *inputs, "resume=must")
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- crashes while writing


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "outputs" / "run"
    io, target = AtomicCheckpointIO(), run_dir / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, target)

    def dies_half_way(self: Path, data: bytes) -> int:  # the checkpoint's bytes, cut by a full disk
        with open(self, "wb") as handle:
            handle.write(bytes(data)[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2}, target)
    monkeypatch.undo()
    assert io.load_checkpoint(target)["global_step"] == 1
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no partial file left
    (target.parent / ".last.4242.tmp.ckpt").write_bytes(b"PK")  # what kill -9 during a write leaves
    (run_dir.parent / "older" / "checkpoints").mkdir(parents=True)
    (run_dir.parent / "older" / "checkpoints" / ".last.4243.tmp.ckpt").write_bytes(b"PK")
    assert candidate_runs(run_dir) == [[target]]


def test_a_checkpoint_the_disk_has_no_room_for_is_one_line_naming_it(tmp_path: Path) -> None:
    """torch's own file writer made a full disk "RuntimeError: [enforce fail at inline_container.cc]
    unexpected pos", two chained tracebacks from stylenet-train: written by Python, it is the OSError that
    names the file, which the command's one line reports (here a file size limit, as a full disk)."""
    from stylenet.atomic import no_room_as_error

    target = tmp_path / "checkpoints" / "last.ckpt"
    script = ("import resource, signal, sys, torch\n"
              "from stylenet.checkpoints import AtomicCheckpointIO\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))\n"
              "try:\n"
              f"    AtomicCheckpointIO().save_checkpoint({{'w': torch.zeros(1 << 16)}}, {str(target)!r})\n"
              "except OSError as err:\n"
              "    print(err.errno, err.filename)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == [str(errno.EFBIG), str(target)], result.stderr[-2000:]
    assert not target.exists() and not list(target.parent.iterdir())  # nothing half written left
    with pytest.raises(StylenetError, match=rf"^cannot write {re.escape(str(target))}: No space left on device; "
                                            "the files written before it are whole"), no_room_as_error():
        raise OSError(errno.ENOSPC, "No space left on device", str(target))
    with pytest.raises(PermissionError), no_room_as_error():  # not a lack of room: as it is
        raise PermissionError(errno.EACCES, "Permission denied", str(target))


def test_crash_while_writing_an_export_keeps_the_previous_model(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_model(tmp_path / "style.safetensors", TransformerNet(**TINY_MODEL), {"steps": 1})

    def dies_half_way(self: Path, data: bytes) -> int:  # the model file's bytes, cut by a kill
        with open(self, "wb") as handle:
            handle.write(data[:64])
        raise OSError("killed")

    monkeypatch.setattr(Path, "write_bytes", dies_half_way)
    with pytest.raises(OSError, match="killed"):
        save_model(path, TransformerNet(**TINY_MODEL), {"steps": 2})
    assert read_model(path).metadata["steps"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["style.safetensors"]


# ----------------------------------------------------------------------------- non-finite losses


def poison(task: StyleTransferTask, when: Any) -> None:
    """Make the style term (and so the total) NaN whenever ``when(task, batch_number)`` holds."""
    clean = task.loss.forward

    def forward(output: torch.Tensor, target: torch.Tensor, **options: Any) -> dict[str, torch.Tensor]:
        terms = clean(output, target, **options)
        if when(task):
            nan = torch.tensor(float("nan"))
            terms = {**terms, "style": terms["style"] * nan, "total": terms["total"] * nan}
        return terms

    task.loss.forward = forward


def test_nan_policy_stop_names_step_term_and_files_and_checkpoints_stay_finite(
        tmp_path: Path, photo_folder: Path, style_image: Path) -> None:
    task = tiny_task(style_image)
    poison(task, lambda t: t.global_step == 7)
    with pytest.raises(NonFiniteLossError, match=r"loss at step 7: train/style = nan on .*img\d\.png"):
        tiny_trainer(tmp_path, 20).fit(task, datamodule=tiny_data(photo_folder))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 5
    assert all(torch.isfinite(value).all() for value in last["state_dict"].values())
    assert checkpoint_problem(tmp_path / "checkpoints" / "last.ckpt", "t", dict(task.hparams)) is None


def test_nan_policy_skip_drops_batches_and_stops_after_max_nan_skips_in_a_row(
        tmp_path: Path, photo_folder: Path, style_image: Path, caplog: pytest.LogCaptureFixture) -> None:
    task, data = tiny_task(style_image, nan_policy="skip", max_nan_skips=2), tiny_data(photo_folder)
    poison(task, lambda t: t.trainer.fit_loop.epoch_loop.batch_idx in (2, 3))
    trainer = tiny_trainer(tmp_path / "a", 6)
    with caplog.at_level(logging.WARNING, logger="stylenet.tasks"):
        trainer.fit(task, datamodule=data)
    # Lightning counts a skipped batch as a step (global_step, TensorBoard), but Adam made 4 updates
    assert trainer.global_step == data.next_batch == 6
    assert trainer.optimizers[0].state_dict()["state"][0]["step"] == 4
    assert caplog.text.count("skipping a batch: non-finite loss") == 2
    # accumulating gradients over 2 batches, a skipped batch leaves its window's other batch its update
    task = tiny_task(style_image, nan_policy="skip", max_nan_skips=2)
    poison(task, lambda t: t.trainer.fit_loop.epoch_loop.batch_idx == 3)
    trainer = tiny_trainer(tmp_path / "accumulated", 3, accumulate_grad_batches=2)
    trainer.fit(task, datamodule=tiny_data(photo_folder))
    assert trainer.optimizers[0].state_dict()["state"][0]["step"] == 3

    task = tiny_task(style_image, nan_policy="skip", max_nan_skips=2)
    poison(task, lambda t: t.global_step >= 3)
    with pytest.raises(NonFiniteLossError, match=r"in 3 batches in a row .*=2\), last at step 5"):
        tiny_trainer(tmp_path / "b", 20).fit(task, datamodule=tiny_data(photo_folder))
    with pytest.raises(StylenetError, match="task.nan_policy must be stop or skip"):
        tiny_task(style_image, nan_policy="ignore")


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path: Path, photo_folder: Path,
                                                               style_image: Path) -> None:
    class Corrupt(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
            if trainer.global_step == 10:  # after the step, before ModelCheckpoint (always last) saves
                with torch.no_grad():
                    module.net.parameters().__next__().fill_(float("inf"))

    with pytest.raises(StylenetError, match=r"not saving a checkpoint at step 10: net\..* NaN or infinite"):
        tiny_trainer(tmp_path, 20, Corrupt()).fit(tiny_task(style_image), datamodule=tiny_data(photo_folder))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5


# ----------------------------------------------------------------------------- determinism


class RecordLosses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any,
                           *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))


def test_same_seed_same_losses_on_cpu(tmp_path: Path, photo_folder: Path, style_image: Path) -> None:
    def losses(seed: int) -> list[float]:
        pl.seed_everything(seed)
        record = RecordLosses()
        task = tiny_task(style_image)
        tiny_trainer(tmp_path / str(seed), 4, record).fit(task, datamodule=tiny_data(photo_folder))
        return record.losses

    first = losses(0)
    assert len(first) == 4 and first == losses(0)  # exactly, not approximately
    assert losses(1) != first


# ----------------------------------------------------------------------------- bad data


def fault_folder(root: Path) -> set[str]:
    """Photos in every common PIL mode, 16-bit and EXIF-rotated ones, and five bad files; returns
    the bad files' names."""
    for i, mode in enumerate(["RGB", "L", "P", "RGBA", "1", "LA"]):
        make_photo(root / f"a_{mode}.png", size=(48, 40), seed=i, mode=mode)
    make_photo(root / "cmyk.jpg", size=(48, 40), seed=7, mode="CMYK")
    Image.fromarray(np.full((40, 48), 40000, np.uint16)).save(root / "grey16.png")
    rotated = Image.new("RGB", (48, 36), (200, 10, 10))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(root / "rotated.jpg", exif=exif)
    bad = {"truncated.jpg", "truncated.png", "random_bytes.jpg", "zero_bytes.png"}
    for name in bad:
        (root / name).write_bytes(BAD_FILES[name]())
    (root / "bomb.png").write_bytes(png_with_header_size(3000, 3000))  # above data.max_pixels=1e6
    return bad | {"bomb.png"}


def skipped_files(run_dir: Path) -> list[str]:
    lines = (run_dir / "skipped_images.txt").read_text().splitlines()
    return [Path(line.split("'")[1]).name for line in lines]


def test_bad_files_are_skipped_counted_and_listed_and_training_finishes(
        tmp_path: Path, inputs: list[str]) -> None:
    bad = fault_folder(tmp_path / "photos")
    run_dir = tmp_path / "run"
    run_in_process(run_dir, *inputs, f"data.root={tmp_path / 'photos'}", "data.max_pixels=1000000",
                   "data.max_bad_fraction=0.5", "trainer.max_steps=10")
    assert set(skipped_files(run_dir)) == bad  # the 13 training files were all seen at least once
    skipped = (run_dir / "skipped_images.txt").read_text()  # the setting named as training names it
    assert "9000000 pixels exceeds the limit of 1000000" in skipped and "data.max_pixels in training" in skipped
    assert read_model(run_dir / "smoke.safetensors").metadata["steps"] == 10


def bad_file_folder(root: Path) -> Path:
    """Four photos (the first is held out for validation) and four unreadable files."""
    for i in range(4):
        make_photo(root / f"img{i}.png", size=(40, 40), seed=i)
    for name in ("truncated.jpg", "truncated.png", "random_bytes.jpg", "zero_bytes.png"):
        (root / name).write_bytes(BAD_FILES[name]())
    return root


def data_state(checkpoint: Path) -> dict[str, int]:
    return torch.load(checkpoint, weights_only=True)["ImageFolderDataModule"]


def test_the_bad_file_count_survives_kill_9_and_resume(tmp_path: Path, inputs: list[str]) -> None:
    photos = bad_file_folder(tmp_path / "photos")
    overrides = [*inputs, f"data.root={photos}", "data.max_bad_fraction=1.0", "trainer.limit_val_batches=0"]
    killed, resumed = tmp_path / "smoke" / "killed", tmp_path / "smoke" / "resumed"
    process = launch(killed, *overrides, "trainer.max_steps=1000")
    wait_for(killed / "checkpoints" / "step_000008.ckpt", process, killed)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    newest = max((killed / "checkpoints").glob("step_*.ckpt"))
    step, before = int(newest.stem.split("_")[1]), data_state(newest)
    assert before["bad_files"] > 0

    end = step + 4  # another step checkpoint, in both runs below
    run_in_process(resumed, *overrides, f"trainer.max_steps={end}", "resume=must")
    uninterrupted = tmp_path / "reference" / "run"  # not a sibling: resume=must must not see it
    run_in_process(uninterrupted, *overrides, f"trainer.max_steps={end}", "resume=never")
    after = data_state(resumed / "checkpoints" / f"step_{end:06d}.ckpt")
    assert after["samples_seen"] > before["samples_seen"]
    assert after == data_state(uninterrupted / "checkpoints" / f"step_{end:06d}.ckpt")


def test_too_many_bad_files_stop_the_run_with_the_list_named(tmp_path: Path, inputs: list[str]) -> None:
    fault_folder(tmp_path / "photos")
    with pytest.raises(StylenetError, match=r"\d+ of \d+ training samples drawn were unreadable or unusable "
                                            r".*skipped_images"):
        run_in_process(tmp_path / "run", *inputs, f"data.root={tmp_path / 'photos'}", "data.batch_size=1",
                       "data.max_bad_fraction=0.1", "trainer.max_steps=100")


@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_a_dead_or_stuck_dataloader_worker_is_an_error_naming_the_file(
        tmp_path: Path, inputs: list[str], monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    photos = tmp_path / "photos"
    for i in range(5):
        make_photo(photos / f"img{i}.png", size=(40, 40), seed=i)
    make_photo(photos / f"zz_{fault}.png", size=(40, 40), seed=9)  # sorted last: not the held-out file
    load_rgb = stylenet.data.load_rgb

    def fragile(path: Path, **kwargs: Any) -> torch.Tensor:  # runs in the forked worker
        if path.name == "zz_crash.png":
            os._exit(3)  # what a segfaulting decoder or the OOM killer look like from outside
        if path.name == "zz_hang.png":
            time.sleep(20)
        return load_rgb(path, **kwargs)

    monkeypatch.setattr(stylenet.data, "load_rgb", fragile)
    # the fault is a patch of this process, which only a forked worker inherits (the default start does not)
    monkeypatch.setattr(stylenet.data, "WORKER_START", "fork")
    message = "exited unexpectedly" if fault == "crash" else "timed out after 2 seconds"
    start = time.monotonic()
    with pytest.raises(StylenetError, match=rf"DataLoader .*{message}.* while loading .*zz_{fault}\.png"):
        run_in_process(tmp_path / "run", *inputs, f"data.root={photos}", "data.num_workers=1",
                       "data.timeout_s=2")
    assert time.monotonic() - start < 60


def test_a_worker_that_died_between_photos_is_one_line_too(tmp_path: Path) -> None:
    """No file in flight to blame (the OOM killer or a kill between two photos): still one line, not torch's
    traceback; an error that is not the DataLoader's is left alone."""
    make_photo(tmp_path / "img0.png", size=(40, 40))
    data = ImageFolderDataModule(source="folder", root=str(tmp_path), image_size=32, batch_size=1, num_workers=1,
                                 val_images=0)
    data.setup()
    died = RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly\nand a paragraph of advice")
    explained = data.explain_failure(died)
    assert isinstance(explained, StylenetError) and "\n" not in str(explained)
    assert str(explained).startswith("DataLoader worker (pid(s) 4242) exited unexpectedly while it was loading no "
                                     "photo") and "resume=auto" in str(explained)
    assert data.explain_failure(RuntimeError("CUDA out of memory")) is None
    # raised inside a worker (a collate or worker_init_fn error) with no photo in flight: torch's own report stays
    assert data.explain_failure(RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nstack")) is None


def test_workers_start_from_a_clean_process_and_still_report_the_file_they_load(tmp_path: Path) -> None:
    """Forking the trainer copies the locks its threads hold (gloo, TensorBoard) into a worker; the
    workers start from a server process instead, and the in-flight table still reaches them."""
    for i in range(2):
        make_photo(tmp_path / f"img{i}.png", size=(40, 40), seed=i)
    data = ImageFolderDataModule(source="folder", root=str(tmp_path), image_size=32, batch_size=1,
                                 num_workers=1, val_images=1)
    data.setup()
    loader = data.val_dataloader()
    assert loader.multiprocessing_context.get_start_method() == stylenet.data.WORKER_START != "fork"
    batch = next(iter(loader))
    assert batch["images"].shape == (1, 3, 32, 32)
    in_flight = data.worker_datasets[0].in_flight
    assert in_flight.pid[0] not in (0, os.getpid())  # written by the worker, read here: shared memory
    assert in_flight.index[0] == -1  # the load finished


# ----------------------------------------------------------------------------- untrusted checkpoints


@pytest.fixture
def malicious_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # what a user might have set
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": {}, "optimizer_states": [], "global_step": 1, "loops": {},
                "payload": RunsCode(tmp_path / "pwned")}, path)
    return path


def test_checkpoints_never_run_code_even_with_torch_force_no_weights_only_load(
        malicious_checkpoint: Path, photo_folder: Path, style_image: Path) -> None:
    marker = malicious_checkpoint.parents[1] / "pwned"
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(malicious_checkpoint, weights_only=False)
    reason = checkpoint_problem(malicious_checkpoint, None, HPARAMS)
    assert reason == ("unreadable (it is a pickle of more than tensors (Trying to load unsupported GLOBAL posix.mkdir "
                      "whose module posix is blocked), and unpickling it could run code)")
    with pytest.raises(StylenetError, match="cannot resume this run: unreadable"):
        resolve_resume("auto", str(malicious_checkpoint), malicious_checkpoint.parents[1], "t", HPARAMS)
    # Lightning's own restore, as stylenet-train calls it (weights_only=True) and through our plugin
    for kwargs, fit_kwargs in (({}, {"weights_only": True}), ({"plugins": [AtomicCheckpointIO()]}, {})):
        trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
                             default_root_dir=malicious_checkpoint.parents[1], **kwargs)
        with pytest.raises(pickle.UnpicklingError):
            trainer.fit(tiny_task(style_image), datamodule=tiny_data(photo_folder),
                        ckpt_path=malicious_checkpoint, **fit_kwargs)
    assert not marker.exists()


def test_the_package_never_loads_pickles_without_weights_only() -> None:
    """Every ``torch.load`` in stylenet passes ``weights_only=True`` explicitly (an explicit value is
    the only one ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot override), and nothing says False."""
    for path in sorted((REPO / "stylenet").rglob("*.py")):
        source = path.read_text()
        assert "weights_only=False" not in source, path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "pl_load", "_load"):
                flags = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert flags.get("weights_only") == "True", f"{path}:{node.lineno}"
    for path in (REPO / "configs").rglob("*.yaml"):
        assert "weights_only: false" not in path.read_text().lower(), path


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks")
def test_a_second_run_in_a_folder_in_use_is_refused(tmp_path: Path, inputs: list[str]) -> None:
    """A job submitted twice to one run folder: the second would continue the first one's checkpoint
    while it trains, and both would write the same files. Held by a live run, the folder is refused."""
    import fcntl

    from stylenet.checkpoints import LOCK_FILE

    run_dir = tmp_path / "smoke" / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- the live run's\n")
    with open(run_dir / LOCK_FILE, "a") as held:  # what a run training there holds, and its name in it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("stylenet-train")
        held.flush()
        process = launch(run_dir, *inputs)
        assert process.wait(timeout=240) == 2
    log = output(run_dir).read_text()
    assert f"stylenet-train: error: run folder '{run_dir}' is in use by another stylenet-train" in log
    assert not (run_dir / "checkpoints").exists()
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "- the live run's\n"  # its record, not this launch's


def test_a_model_file_or_report_in_a_folder_without_checkpoints_is_never_overwritten(
        tmp_path: Path, inputs: list[str]) -> None:
    """``hydra.run.dir=`` a folder holding an earlier model file or report, but no checkpoints: refused
    before any step (the run's end wrote over them). With its checkpoints the folder holds this run,
    which continues and rewrites its own files."""
    for name, hint in (("smoke.safetensors", "give another hydra.run.dir or name=, or remove it"),
                       ("quality.md", "give another hydra.run.dir, or remove it")):
        run_dir = tmp_path / name.replace(".", "_")
        run_dir.mkdir()
        (run_dir / name).write_text("an earlier run's")
        with pytest.raises(StylenetError, match=f"^{re.escape(repr(str(run_dir / name)))} exists already and this "
                                                f"run would overwrite it: {re.escape(hint)}$"):
            run_in_process(run_dir, *inputs, "trainer.max_steps=2")
        assert (run_dir / name).read_text() == "an earlier run's" and not (run_dir / "checkpoints").exists()
    # a model file callbacks.export.path names outside the run folder: another hydra.run.dir or name= moves nothing
    elsewhere = tmp_path / "models" / "m.safetensors"
    elsewhere.parent.mkdir()
    elsewhere.write_text("an earlier run's")
    with pytest.raises(StylenetError, match=f"^{re.escape(repr(str(elsewhere)))} exists already and this run would "
                                            "overwrite it: give callbacks.export.path another file, or remove it$"):
        run_in_process(tmp_path / "fresh", *inputs, "trainer.max_steps=2", f"callbacks.export.path={elsewhere}")
    inside = tmp_path / "fresh" / "model.safetensors"  # in the run folder, not named by name=: name= moves nothing
    inside.parent.mkdir(exist_ok=True)
    inside.write_text("an earlier run's")
    with pytest.raises(StylenetError, match=r"would overwrite it: give another hydra.run.dir or "
                                            r"callbacks.export.path, or remove it$"):
        run_in_process(tmp_path / "fresh", *inputs, "trainer.max_steps=2", f"callbacks.export.path={inside}")
    run_dir = tmp_path / "smoke" / "run"
    run_in_process(run_dir, *inputs, "trainer.max_steps=2")
    run_in_process(run_dir, *inputs, "trainer.max_steps=4")  # continued: its model file is its own
    assert read_model(run_dir / "smoke.safetensors").metadata["steps"] == 4


def test_a_run_stopped_while_writing_its_report_writes_it_when_run_again(
        tmp_path: Path, inputs: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (or a kill) after the export, while the held-out photos are measured: the run is finished,
    so its folder was refused from then on and the report never made. ``resume=auto`` there writes the
    report now, training nothing; with the report written, the finished folder is refused as before."""
    import stylenet.report

    def terminated(*args: Any, **kwargs: Any) -> None:
        raise SystemExit(143)  # where SIGTERM's default action ends the process

    run_dir = tmp_path / "smoke" / "run"
    monkeypatch.setattr(stylenet.report, "training_report", terminated)
    with pytest.raises(SystemExit):
        run_in_process(run_dir, *inputs, "trainer.max_steps=2")
    monkeypatch.undo()
    model, last = (run_dir / "smoke.safetensors").read_bytes(), run_dir / "checkpoints" / "last.ckpt"
    saved = last.stat().st_mtime_ns
    assert not (run_dir / "quality.json").exists()
    run_in_process(run_dir, *inputs, "trainer.max_steps=2")
    assert {"figure.png", "quality.md", "quality.json"} <= {path.name for path in run_dir.iterdir()}
    assert (run_dir / "smoke.safetensors").read_bytes() == model and last.stat().st_mtime_ns == saved
    with pytest.raises(FinishedRunError, match="already holds a finished run"):
        run_in_process(run_dir, *inputs, "trainer.max_steps=2")


def test_a_super_resolution_run_stopped_before_its_upscaled_photo_writes_it_when_run_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for super-resolution, whose run ends with the first held-out photo upscaled
    (``<photo>_x4.png``) instead of a report."""
    from stylenet.inference import InferenceModel

    def terminated(*args: Any, **kwargs: Any) -> None:
        raise SystemExit(143)  # where SIGTERM's default action ends the process

    run_dir = tmp_path / "sr" / "run"
    sr = ["experiment=sr_smoke", "data.image_size=32", "trainer.max_steps=2", "+trainer.enable_progress_bar=false"]
    monkeypatch.setattr(InferenceModel, "transform", terminated)
    with pytest.raises(SystemExit):
        run_in_process(run_dir, *sr)
    monkeypatch.undo()
    model = (run_dir / "sr_smoke.safetensors").read_bytes()
    assert not list(run_dir.glob("*_x4.png"))
    run_in_process(run_dir, *sr)
    assert len(list(run_dir.glob("*_x4.png"))) == 1
    assert (run_dir / "sr_smoke.safetensors").read_bytes() == model
    with pytest.raises(FinishedRunError, match="already holds a finished run"):
        run_in_process(run_dir, *sr)


def test_a_report_that_cannot_be_written_when_run_again_is_an_error_not_a_silent_success(
        tmp_path: Path, inputs: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The report of a stopped run is written by ``resume=auto``; when it cannot be (every held-out photo
    has become unreadable since), that run says so and fails, rather than exit 0 with nothing written."""
    import stylenet.report

    def terminated(*args: Any, **kwargs: Any) -> None:
        raise SystemExit(143)

    root = tmp_path / "data"
    for i in range(4):
        make_photo(root / f"img{i}.png", size=(40, 36), seed=i)
    run_dir, overrides = tmp_path / "smoke" / "run", [*inputs, f"data.root={root}", "trainer.max_steps=2"]
    monkeypatch.setattr(stylenet.report, "training_report", terminated)
    with pytest.raises(SystemExit):
        run_in_process(run_dir, *overrides)
    monkeypatch.undo()
    for photo in root.iterdir():
        photo.write_bytes(b"no longer a photo")
    # finished all the same: a sweep launched again to finish its cut jobs passes over it
    with pytest.raises(FinishedRunError, match=r"holds this run, finished, but its report cannot be written: see the "):
        run_in_process(run_dir, *overrides)
    skipped = (run_dir / "skipped_images.txt").read_text()  # each named, as the log's warnings name them
    assert skipped.count("held-out photo: cannot read image") >= 1 and not (run_dir / "quality.json").exists()


def test_a_run_stopped_before_its_export_exports_from_its_finished_checkpoint_when_run_again(
        tmp_path: Path, inputs: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (or a kill) after the last checkpoint, before the model file: the finished run was refused
    from then on, its training in its checkpoints alone. ``resume=auto`` there writes the very file the
    export would have written, then the report, training nothing."""
    from stylenet.callbacks import ExportStyleModel

    run_dir, aside = tmp_path / "smoke" / "run", tmp_path / "would_have_been.safetensors"
    export = ExportStyleModel.on_train_end

    def terminated(self: ExportStyleModel, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        export(self, trainer, module)
        self.path.rename(aside)  # what the export writes, kept aside: the stop came before it
        raise SystemExit(143)

    finished = ["trainer.max_steps=2", "callbacks.checkpoint.every_n_train_steps=2"]  # saved before the export
    monkeypatch.setattr(ExportStyleModel, "on_train_end", terminated)
    with pytest.raises(SystemExit):
        run_in_process(run_dir, *inputs, *finished)
    monkeypatch.undo()
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = last.stat().st_mtime_ns
    assert not (run_dir / "smoke.safetensors").exists() and not (run_dir / "quality.json").exists()
    run_in_process(run_dir, *inputs, *finished)
    assert (run_dir / "smoke.safetensors").read_bytes() == aside.read_bytes()
    assert {"figure.png", "quality.md", "quality.json"} <= {path.name for path in run_dir.iterdir()}
    assert last.stat().st_mtime_ns == saved
    with pytest.raises(FinishedRunError, match="already holds a finished run"):
        run_in_process(run_dir, *inputs, *finished)
    (run_dir / "smoke.safetensors").rename(tmp_path / "shared.safetensors")  # moved away, beside its report
    with pytest.raises(FinishedRunError, match="already holds a finished run"):
        run_in_process(run_dir, *inputs, *finished)
    assert not (run_dir / "smoke.safetensors").exists()


def test_a_changed_setting_is_named_by_its_entry_or_its_style() -> None:
    """A run of several styles records one image hash per style: the message names the style that changed,
    not two lists of hashes; of two loss configs only the entries that differ."""
    from stylenet.checkpoints import setting_difference

    assert setting_difference("style_sha256", ["a", "b", "c"], ["a", "x", "c"]) == "style 2 of 3: 'b', this run has 'x'"
    assert setting_difference("style_sha256", ["a"], ["a", "b"]) == "['a'], this run has ['a', 'b']"
    before, now = {"tv_weight": 1, "style_weight": 5.0}, {"tv_weight": 1, "style_weight": 10.0}
    assert setting_difference("loss", before, now) == "loss.style_weight: 5.0, this run has 10.0"


def test_a_gpu_runs_checkpoint_loads_onto_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint whose tensors were saved from a GPU (tagged ``cuda:0``) loads onto the CPU through
    the plugin, so a GPU run resumes on a machine without one."""
    path = tmp_path / "last.ckpt"
    with monkeypatch.context() as patched:  # torch.save tags every storage with this
        patched.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"state_dict": {"net.weight": torch.arange(4.0)}, "global_step": 7}, path)
    if not torch.cuda.is_available():  # the file really asks for a GPU
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert loaded["state_dict"]["net.weight"].device.type == "cpu"
    assert loaded["state_dict"]["net.weight"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is(tmp_path: Path) -> None:
    """torch.load meets a text file with a bare KeyError of its first byte ('101'), and a model file is
    refused for a reason the user can act on."""
    text, model = tmp_path / "notes.ckpt", tmp_path / "style.safetensors"
    text.write_text("hello")
    model.write_bytes(b"never read")
    assert checkpoint_problem(text, None, HPARAMS) == "unreadable (not a PyTorch file)"
    assert checkpoint_problem(model, None, HPARAMS) == (
        "a model file, not a training checkpoint (a run resumes from its checkpoints/*.ckpt)")


def test_a_style_run_without_a_style_term_is_warned_of(style_image: Path, caplog: pytest.LogCaptureFixture) -> None:
    """loss=pixel (super-resolution's) on a style: it trains, copying the photo; the log says why."""
    with caplog.at_level(logging.WARNING, logger="stylenet.tasks"):
        tiny_task(style_image)
        assert "no style term" not in caplog.text
        StyleTransferTask(model=TINY_MODEL, loss={**RANDOM_LOSS, "style_weight": 0.0}, image_size=32,
                          style={"name": "t", "image": str(style_image), "size": 32})
    assert caplog.text.count("loss.style_weight is 0: this style run has no style term") == 1


def test_validation_runs_every_n_steps_when_batches_are_accumulated(tmp_path: Path, inputs: list[str]) -> None:
    """Lightning counts val_check_interval in batches: with two accumulated a step, validation ran every
    step instead of every second one (README and the trainer config say steps)."""
    run_dir = tmp_path / "accumulated"
    run_in_process(run_dir, *inputs, "trainer.max_steps=4", "trainer.val_check_interval=2",
                   "+trainer.accumulate_grad_batches=2", "callbacks.export=null")
    assert tensorboard_steps(run_dir, "val/total") == [1, 3]  # after steps 2 and 4 (TensorBoard's step: 0-based)
    assert tensorboard_steps(run_dir) == [0, 1, 2, 3]
