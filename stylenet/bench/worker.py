"""One measurement in a fresh interpreter: a process's peak memory is its own and only ever grows, and
the fast path's allocator setting is process-wide, so every training variant and every inference size
runs alone (``python -m stylenet.bench.worker --threads N JOB``)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from stylenet.bench.measure import (
    counted_flops,
    median_seconds,
    peak_mib,
    peak_rss_bytes,
    proc_status_bytes,
    random_images,
    sync,
)
from stylenet.bench.training import variant
from stylenet.errors import StylenetError
from stylenet.nets import TransformerNet

#: network widths benchmarked for inference: the paper's and the half-width released models' (configs/model).
MODELS = {"paper": {"channels": 32}, "half": {"channels": 16}}


@dataclass(frozen=True)
class Job:
    """What one worker measures: a training variant (``section="train"``) or an inference mode."""

    section: str                # train | infer | frames | video | photo
    device: str
    size: int                   # image side, px
    reps: int
    batch: int = 1
    weights: str = "random"     # train: VGG weights
    variant: str = "fast"       # train: a name in stylenet.bench.training.VARIANTS
    precision: str = "32-true"  # train: the fast variants' precision
    model: str = "paper"        # infer, frames, photo: a name in MODELS
    mode: str = "fp32"          # infer: fp32 (eager net(x)) or fast (InferenceModel, as stylenet-stylize);
                                # photo: default (what stylenet-stylize does) or onepass (no memory budget);
                                # frames: onepass times each frame through stylize's one pass
    height: int = 0             # frames, video, photo: image height, px (0: square)
    frames: int = 0             # frames, video: frames streamed per timed repetition
    max_memory: int = 0         # photo: the default path's budget, bytes (0: the device's default)
    model_file: str = ""        # frames, photo: a trained model file instead of MODELS' random weights
    output: str = ""            # photo: save the first output here (torch.save), to compare paths;
                                # video: the folder for the clip and its outputs


@dataclass(frozen=True)
class Measured:
    """One worker's figures: median seconds, the first (warm-up) call's, its GFLOP (None: not counted)
    and peak memory in MiB (the rise during the runs: CPUs only)."""

    seconds: float
    first_seconds: float
    gflop: float | None
    peak_mb: float
    peak_delta_mb: float | None


def training_work(job: Job, device: torch.device) -> Callable[[], Any]:
    images, style = random_images(job.batch, job.size, device), random_images(1, job.size, device, seed=1)[0]
    step = variant(job.variant).step(device, style, job.weights, job.precision)
    return lambda: step(images)


def inference_work(job: Job, device: torch.device) -> Callable[[], Any]:
    from stylenet.inference import InferenceModel

    torch.manual_seed(0)
    net = TransformerNet(**MODELS[job.model]).eval()
    image = torch.rand(3, job.size, job.size)
    if job.mode == "fast":
        if device.type == "cpu":
            from stylenet.fastpath import reuse_freed_memory

            reuse_freed_memory()  # as stylenet-stylize does
        model = InferenceModel(net, device=device, precision="auto")  # as stylenet-stylize runs it
        return lambda: model.transform(image)
    net, batch = net.to(device), image.to(device).unsqueeze(0)
    return torch.no_grad()(lambda: net(batch))


def inference_model(job: Job, device: torch.device, **options: Any) -> Any:
    """An InferenceModel at the default precision, as ``stylenet-stylize`` runs it (malloc reuse on)."""
    from stylenet.inference import InferenceModel
    from stylenet.modelfile import read_model

    if device.type == "cpu":
        from stylenet.fastpath import reuse_freed_memory

        reuse_freed_memory()
    torch.manual_seed(0)
    # a file of several styles: its first style's network (every style runs the same convolutions)
    net = read_model(job.model_file).style_networks()[0][1] if job.model_file else TransformerNet(**MODELS[job.model])
    return InferenceModel(net.eval(), device=device, **options)


def frames_work(job: Job, device: torch.device) -> Callable[[], Any]:
    """``job.frames`` uint8 frames streamed through ``stylize_frames``, as a video player would;
    ``job.mode == "onepass"``, the ablation: each frame through the one pass of ``stylize`` instead of
    the pre-padded buffers (:mod:`stylenet.inference.prepadded`)."""
    import numpy as np

    from stylenet.inference.controls import Controls
    from stylenet.inference.frames import stream_frames
    from stylenet.inference.geometry import forward

    model = inference_model(job, device)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (job.height, job.size, 3), dtype=np.uint8) for _ in range(job.frames)]
    if job.mode != "onepass":
        return lambda: sum(1 for _ in model.stylize_frames(frames))
    run = functools.partial(forward, model.net, precision=model.precision)
    return lambda: sum(1 for _ in stream_frames(frames, run, model.device, Controls(), lambda _h, _w: True,
                                                model.transform))


class VideoWork:
    """A generated clip of ``job.frames`` frames (:func:`stylenet.video.sample.write_sample_clip`)
    through :func:`stylenet.video.stylize_video`: decoding, the network and encoding overlapping, as
    ``stylenet-stylize clip.mp4`` runs them. Each call writes a new output file, all in the folder
    ``job.output``, which the parent process removes."""

    def __init__(self, job: Job, device: torch.device) -> None:
        from pathlib import Path

        from stylenet.video.sample import write_sample_clip

        self.clip = write_sample_clip(Path(job.output) / "clip.mp4", job.frames, (job.height, job.size), audio=False)
        self.model, self.calls = inference_model(job, device), 0

    def __call__(self) -> None:
        from stylenet.video import stylize_video

        self.calls += 1
        stylize_video(self.clip, self.clip.with_name(f"out{self.calls}.mp4"), self.model)


class PhotoWork:
    """A photo through ``InferenceModel.transform`` on its default path or in one pass; keeps the
    last output for :attr:`Job.output`."""

    def __init__(self, job: Job, device: torch.device) -> None:
        budget = 1 << 50 if job.mode == "onepass" else (job.max_memory or None)
        self.model = inference_model(job, device, max_memory=budget)
        generator = torch.Generator().manual_seed(0)
        # held and written as stylenet-stylize does: uint8 levels in (stylenet.image.compact), uint8 out
        self.image = torch.randint(0, 256, (3, job.height or job.size, job.size), generator=generator,
                                   dtype=torch.uint8)
        self.output: torch.Tensor | None = None

    def __call__(self) -> None:
        self.output = None  # freed before the next run, as the command's next image would be
        self.output = self.model.transform(self.image, quantize=True)


def measure(job: Job) -> Measured:
    """Build the job's work, time its first call (counting the FLOPs of a training step that is not
    compiled) and the median of ``job.reps`` more, and read the process's peak memory."""
    device = torch.device(job.device)
    builders = {"train": training_work, "infer": inference_work, "frames": frames_work, "video": VideoWork,
                "photo": PhotoWork}
    work = builders[job.section](job, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = proc_status_bytes("VmRSS") or peak_rss_bytes()
    count = job.section == "train" and not variant(job.variant).compile  # no FLOPs through a compilation
    start = time.perf_counter()
    gflop = counted_flops(work) / 1e9 if count else None
    if not count:
        work()
    sync(device)
    first = time.perf_counter() - start
    seconds = median_seconds(work, device, job.reps, warmup=0)
    if isinstance(work, PhotoWork) and job.output:
        torch.save(work.output, job.output)
    return Measured(seconds, first, gflop, *peak_mib(device, baseline))


class WorkerFailed(StylenetError):
    """A worker that ended in an error of its own (out of memory at a size too large, a crash) or was killed:
    the figures measured before it are still worth printing."""


def run_worker(job: Job) -> Measured:
    """:func:`measure` ``job`` in a fresh interpreter with this process's thread count."""
    command = [sys.executable, "-m", "stylenet.bench.worker", "--threads", str(torch.get_num_threads()),
               json.dumps(asdict(job))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [""])[-1]
        kind, _, message = last.partition(": ")
        if kind.endswith("StylenetError"):  # a setting the work refuses (a --weights file that is no VGG): one line
            raise StylenetError(message)
        reason = f"killed by signal {-done.returncode}" if done.returncode < 0 else last or f"exit {done.returncode}"
        size = f"{job.size}x{job.height}" if job.height else f"{job.size}"
        raise WorkerFailed(f"the {job.section} worker ({job.model if job.section != 'train' else job.variant}, "
                           f"{size} px) failed: {reason}")
    return Measured(**json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stylenet.bench.worker")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("job", help="a Job as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    job = Job(**json.loads(args.job))
    if job.weights == "random":  # said once by stylenet-bench, not once per worker
        logging.getLogger("stylenet.nets.vgg").setLevel(logging.ERROR)
    print(json.dumps(asdict(measure(job))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
