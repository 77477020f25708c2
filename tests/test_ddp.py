"""``trainer=ddp_cpu``: Lightning DDP over 2 CPU processes (gloo), as CI can run it.

Each rank must see its own samples, and only rank 0 writes the model file and TensorBoard logs. The run
trains two styles in one network (``style=multi``), so each rank must also give both styles equal shares."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]


def run_on_two_processes(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """``stylenet-train`` of the smoke experiment on 2 gloo processes, batch 1 of 32 px crops of the test's
    photos in ``tmp_path/photos`` (the first held out), into ``tmp_path/run``, with ``overrides``."""
    from tests.helpers import console_script

    return subprocess.run(
        [*console_script("stylenet-train"), "experiment=smoke", "trainer=ddp_cpu", "trainer.devices=2", "data=folder",
         f"data.root={tmp_path / 'photos'}", "data.image_size=32", "data.batch_size=1", "data.val_images=1",
         "style.size=32", "+trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}", *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})


class RecordSamples(pl.Callback):
    """Test probe, loaded into every rank by ``+callbacks.probe``: appends the files of each
    training batch, and the style each of its samples took, to ``<folder>/rank<r>.jsonl``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: dict[str, Any], batch_idx: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as record:
            styles = pl_module.batch_styles(batch, len(batch["images"])).tolist()
            record.write(json.dumps({"step": trainer.global_step, "paths": batch["paths"], "styles": styles}) + "\n")


class CtrlCOnOneRank(pl.Callback):
    """Test probe, loaded into every rank by ``+callbacks.probe``: at the end of step ``at_step``, rank ``rank``
    sends SIGINT to its own process alone (a kill -INT of one process, or a terminal's Ctrl-C that reaches the
    ranks either side of their agreement to stop), or ``presses`` times to the whole process group (a
    terminal's Ctrl-C, pressed twice)."""

    def __init__(self, rank: int, at_step: int, presses: int = 0) -> None:
        self.rank, self.at_step, self.presses = rank, at_step, presses

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.at_step:
            if not self.presses:
                os.kill(os.getpid(), signal.SIGINT)
            for _ in range(self.presses):
                os.killpg(os.getpgrp(), signal.SIGINT)


def test_two_cpu_processes_split_the_stream_and_rank_0_alone_writes(tmp_path: Path) -> None:
    from stylenet.modelfile import read_model
    from tests.conftest import make_photo
    from tests.helpers import console_script

    photos = [make_photo(tmp_path / "photos" / f"img{i}.png", size=(40 + 4 * i, 40), seed=i)
              for i in range(9)]
    styles = [make_photo(tmp_path / f"{name}.png", size=(48, 48), seed=42 + k) for k, name in enumerate("xy")]
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    start = time.monotonic()
    result = subprocess.run(
        [*console_script("stylenet-train"), "experiment=smoke", "trainer=ddp_cpu", "trainer.devices=2", "data=folder",
         f"data.root={tmp_path / 'photos'}", "data.image_size=32", "data.batch_size=2", "data.val_images=1",
         "style=multi", f"style.images=[{styles[0]},{styles[1]}]", "style.size=32", "trainer.max_steps=2",
         "trainer.val_check_interval=2",
         "callbacks.checkpoint.every_n_train_steps=2", "+trainer.enable_progress_bar=false",
         "+callbacks.probe._target_=tests.test_ddp.RecordSamples", f"+callbacks.probe.folder={probe}",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]

    seen = {rank: [json.loads(line) for line in (probe / f"rank{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)}
    assert [[batch["step"] for batch in seen[rank]] for rank in (0, 1)] == [[1, 2], [1, 2]]
    files = {rank: [path for batch in seen[rank] for path in batch["paths"]] for rank in (0, 1)}
    assert not set(files[0]) & set(files[1])  # distinct samples on each rank
    # together: 2 steps x 2 ranks x batch 2 = the 8 training photos, each exactly once
    assert sorted(files[0] + files[1]) == sorted(str(p) for p in photos[1:])
    # the samples' stream positions alternate the two styles: every batch of 2 on every rank has both
    assert all(sorted(batch["styles"]) == [0, 1] for rank in (0, 1) for batch in seen[rank])

    model = read_model(run_dir / "smoke.safetensors")
    assert model.metadata["steps"] == 2 and model.styles == ["x", "y"]
    assert "exported the model" in (run_dir / "train.log").read_text()
    assert "exported the model" not in (run_dir / "train_ddp_process_1.log").read_text()
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt", "step_000002.ckpt"]
    print(f"2-process DDP run: {elapsed:.1f} s")


def test_a_batch_that_one_rank_cannot_read_leaves_the_other_ranks_photo_to_train(tmp_path: Path) -> None:
    """Batch size 1, and rank 1's first photo is no image: its batch is empty. Lightning's own skip
    (training_step returning None) is refused under DDP: rank 1 gives a zero loss, and rank 0's photo still
    trains that step (every rank skipped it, and its good photo was thrown away)."""
    from stylenet.data import StreamSampler
    from stylenet.modelfile import read_model
    from tests.conftest import make_photo
    from tests.test_fault_tolerance import tensorboard_steps

    photos = [tmp_path / "photos" / f"img{i}.png" for i in range(9)]
    training = photos[1:]  # data.val_images=1 holds out the first
    junk = training[StreamSampler(len(training), 1, seed=0, rank=1, world_size=2).index_at(1)]  # rank 1, batch 0
    for i, photo in enumerate(photos):
        make_photo(photo, size=(40, 40), seed=i)
    junk.write_bytes(b"not an image")
    run_dir = tmp_path / "run"
    result = run_on_two_processes(tmp_path, "trainer.max_steps=3", "trainer.log_every_n_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert junk.name in (run_dir / "skipped_images.txt").read_text()
    assert tensorboard_steps(run_dir) == [0, 1, 2]  # step 0 trained on rank 0's photo (Adam counts empty steps too)
    assert read_model(run_dir / "smoke.safetensors").metadata["steps"] == 3
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert [state["step"] for state in last["optimizer_states"][0]["state"].values()][:1] == [3]  # Adam: 3 updates


def run_with_ctrl_c(tmp_path: Path, rank: int, presses: int) -> tuple[int, str]:
    """A 2-process run whose probe presses Ctrl-C at step 2 (:class:`CtrlCOnOneRank`), in a session of its own:
    (exit status, stderr). A run that hangs fails the test, and leaves no process behind."""
    from tests.conftest import make_photo
    from tests.helpers import console_script

    for i in range(9):
        make_photo(tmp_path / "photos" / f"img{i}.png", size=(40, 40), seed=i)
    process = subprocess.Popen(
        [*console_script("stylenet-train"), "experiment=smoke", "trainer=ddp_cpu", "trainer.devices=2", "data=folder",
         f"data.root={tmp_path / 'photos'}", "data.image_size=32", "data.batch_size=1", "data.val_images=1",
         "style.size=32", "trainer.max_steps=50", "trainer.val_check_interval=1000",
         "callbacks.checkpoint.every_n_train_steps=1000", "+trainer.enable_progress_bar=false",
         "+callbacks.probe._target_=tests.test_ddp.CtrlCOnOneRank", f"+callbacks.probe.rank={rank}",
         "+callbacks.probe.at_step=2", f"+callbacks.probe.presses={presses}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    try:
        _, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # both ranks: a hung run leaves no process behind
        process.communicate()
        raise AssertionError("the run hung after Ctrl-C") from None
    return process.returncode, stderr


def test_ctrl_c_on_one_rank_stops_every_rank_with_a_checkpoint(tmp_path: Path) -> None:
    """Every rank agreed to stop, but each chose how from its own flags: the signalled rank saved (a collective)
    while the others waited in Lightning's SIGTERM broadcast, and the run hung for good. Now every rank takes
    the signalled rank's way: last.ckpt at that step, exit 130."""
    import torch

    status, stderr = run_with_ctrl_c(tmp_path, rank=1, presses=0)
    assert status == 130, stderr[-3000:]
    step = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step in (2, 3)  # the step after the signal is the latest either rank can stop at


def test_a_sweep_of_ddp_jobs_is_refused_before_any_job_trains(tmp_path: Path) -> None:
    """Lightning starts a job's other ranks by running the command line again: with -m, rank 1 launched the
    whole sweep again, and every job after the first trained in one process, at half the batch, without a
    word. The sweep stops at its first job, with one line, before any process is started."""
    from tests.helpers import console_script

    result = subprocess.run(
        [*console_script("stylenet-train"), "-m", "experiment=smoke", "trainer=ddp_cpu", "loss.style_weight=1,5",
         "trainer.max_steps=2", "data.image_size=32", "style.size=32", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "stylenet-train: error: a sweep (-m) cannot give its jobs the 2 processes Lightning starts itself "
        "(trainer.devices): it starts them by running the command line again, which would launch the sweep again; "
        "run each job as a command of its own, or start the processes with torchrun or srun")
    assert result.stdout.count("Launching 2 jobs") == 1 and "#1 :" not in result.stdout
    assert not list((tmp_path / "sweep").glob("*/checkpoints")) and not (tmp_path / "sweep" / "sweep.md").exists()


def test_too_many_bad_photos_on_one_rank_end_the_run_in_that_rank_s_one_line(tmp_path: Path) -> None:
    """Rank 1 reads the unreadable photos; every rank stops together, and the user reads one line, rank 1's
    own words (rank 0 printed "another process found too many ...", then rank 1 its line)."""
    from stylenet.data import StreamSampler
    from tests.conftest import make_photo

    photos = [make_photo(tmp_path / "photos" / f"img{i}.png", size=(40, 40), seed=i) for i in range(9)]
    sampler = StreamSampler(8, 1, seed=0, rank=1, world_size=2)
    for position in (1, 3):  # rank 1's first two photos (data.val_images=1 holds out the first)
        photos[1:][sampler.index_at(position)].write_bytes(b"not an image")
    run_dir = tmp_path / "run"
    result = run_on_two_processes(tmp_path, "trainer.max_steps=6")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("stylenet-train: error:")]
    assert errors == [f"stylenet-train: error: 2 of 2 training samples drawn were unreadable or unusable (100.0% > "
                      f"data.max_bad_fraction=0.05), from 2 file(s), each counted every time it is drawn: see "
                      f"{run_dir / 'skipped_images.txt'} (remove them, or raise data.max_bad_fraction)"], \
        result.stderr[-3000:]
    assert errors[0].removeprefix("stylenet-train: error: ") in (run_dir / "train_ddp_process_1.log").read_text()
