"""The sections of ``stylenet-bench``: training step, inference, Gatys, convolution ceiling, data path.
Each returns its figures under the JSON keys the README and the targets read."""

from __future__ import annotations

import importlib.util
import itertools
import statistics
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stylenet.bench.measure import key, median_seconds, random_images, sync
from stylenet.bench.training import COMPILED, VARIANTS
from stylenet.bench.worker import MODELS, Job, run_worker
from stylenet.errors import StylenetError
from stylenet.fastpath import inference_precision, use_channels_last
from stylenet.losses import PerceptualLoss
from stylenet.metrics import psnr

SECTIONS = ("train", "infer", "frames", "photo", "gatys", "conv", "data")
#: the PSNR reported for identical outputs (a finite number, so the JSON stays standard).
PSNR_IDENTICAL = 100.0
#: (channels, side / train_size) of VGG-16's 3x3 convolutions in blocks 1-4: the shapes of the
#: training step's dominant work, at which the device's ceiling is measured.
VGG_CONV_SHAPES = ((64, 1), (128, 2), (256, 4), (512, 8))


@dataclass
class Profile:
    """The sizes of everything one run measures."""

    train_size: int
    batch: int
    sizes: list[int]            # inference sides, px
    models: list[str]           # inference networks (stylenet.bench.worker.MODELS)
    gatys_size: int
    data_images: int
    precision: str = "32-true"  # the fast training configuration's
    frame: tuple[int, int] = (640, 480)   # video frames, width x height
    frames: int = 30                      # frames streamed per timed repetition
    photo: tuple[int, int] = (4000, 3000)  # the big photo (12 MP), width x height
    photo_max_memory: int = 0             # its default path's budget (0: the device's default)


PROFILES = {
    "full": Profile(train_size=256, batch=4, sizes=[256, 512, 1024, 2048], models=["paper", "half"],
                    gatys_size=256, data_images=48),
    # the photo's budget is tiny so that the quick run takes the layer-by-layer path too
    "quick": Profile(train_size=32, batch=2, sizes=[32], models=["paper"], gatys_size=32, data_images=6,
                     frame=(64, 48), frames=2, photo=(128, 96), photo_max_memory=1),
}


def bench_train(device: torch.device, profile: Profile, reps: int, weights: str, compile: bool) -> dict[str, Any]:
    """Every training variant (and the compiled one with ``compile``) in its own process.
    ``train_fast_gflop`` is the work of stylenet's algorithm (the paper's network, the truncated content
    pass), counted on the unprepared step; ``train_fast_executed_gflop`` what the rewritten layers
    actually execute, which can be less (:func:`stylenet.fastpath.rewrite_layers`)."""
    network, vgg = use_channels_last(device)
    results: dict[str, Any] = {"train_batch": profile.batch, "train_size": profile.train_size,
                               "train_fast_precision": profile.precision,
                               "train_fast_channels_last": {"network": network, "vgg": vgg}}
    for variant in (*VARIANTS, COMPILED) if compile else VARIANTS:
        measured = run_worker(Job("train", str(device), profile.train_size, reps, batch=profile.batch,
                                  weights=weights, variant=variant.name, precision=profile.precision))
        results[key("train", variant.name, "s")] = measured.seconds
        results[key("train", variant.name, "peak_mb")] = measured.peak_mb
        if measured.gflop is not None:
            results[key("train", variant.name, "gflop")] = measured.gflop
        if variant.compile:
            results["train_compile_s"] = measured.first_seconds - measured.seconds
    results["train_fast_executed_gflop"] = results["train_fast_gflop"]
    results["train_fast_gflop"] = results["train_fast_unprepared_gflop"]
    results["train_speedup"] = results["train_reference_s"] / results["train_fast_s"]
    return results


def bench_infer(device: torch.device, profile: Profile, reps: int) -> dict[str, Any]:
    """Every (model, size, mode) in its own interpreter: a process's peak RSS only ever grows, so
    measuring several sizes in one process would report the largest one's peak for all. The peak
    includes the interpreter, torch and the image (``peak_mb``); ``peak_delta_mb`` is the rise
    during the runs."""
    results: dict[str, Any] = {"infer_fast_precision": inference_precision(device)}
    for model, size in itertools.product(profile.models, profile.sizes):
        seconds = {}
        for mode in ("fp32", "fast"):
            measured = run_worker(Job("infer", str(device), size, reps, model=model, mode=mode))
            seconds[mode] = results[key("infer", mode, model, size, "seconds")] = measured.seconds
            results[key("infer", mode, model, size, "peak_mb")] = measured.peak_mb
            if measured.peak_delta_mb is not None:
                results[key("infer", mode, model, size, "peak_delta_mb")] = measured.peak_delta_mb
        speedup = key("infer_speedup", size) if model == "paper" else key("infer_speedup", model, size)
        results[speedup] = seconds["fp32"] / seconds["fast"]
    return results


def model_file_row(model_file: str, *, paper_only: bool = False) -> str:
    """The network (a name in :data:`stylenet.bench.worker.MODELS`) whose rows a trained model file is
    timed in: the one of its width (``paper_only``: the 12 MP photo row's, the paper's). A file of
    another width would be timed under a wrong label, so it is refused, naming the file."""
    from stylenet.modelfile import read_model

    channels = read_model(model_file, task="style").style_networks()[0][1].config.get("channels")
    rows = [name for name, config in MODELS.items() if config["channels"] == channels]
    if paper_only and rows != ["paper"]:
        raise StylenetError(f"--model-file {model_file}: a network of width {channels}, where the 12 MP photo row "
                            f"times the paper's ({MODELS['paper']['channels']}): train one with model=transformer")
    if not rows:
        widths = ", ".join(f"{config['channels']} ({name})" for name, config in MODELS.items())
        raise StylenetError(f"--model-file {model_file}: a network of width {channels}; the benchmark's rows "
                            f"are for widths {widths}")
    return rows[0]


def bench_frames(device: torch.device, profile: Profile, reps: int, model_file: str = "",
                 models: Collection[str] = ("half", "paper")) -> dict[str, Any]:
    """Frames/s streamed through ``InferenceModel.stylize_frames`` (uint8 frames in and out, the default
    precision), each network in its own process, over ``profile.frames`` frames per repetition
    (``model_file``: in the row of its width, :func:`model_file_row`), and the half-width network's
    frames once more through the one pass (the ablation of :mod:`stylenet.inference.prepadded`); with
    PyAV (the ``video`` extra), also a generated clip of as many frames end to end through
    ``stylize_video``, decoding and encoding included (half-width network); of ``models`` (``--models``) only."""
    width, height = profile.frame
    file_row = model_file_row(model_file) if model_file else None
    results: dict[str, Any] = {"frames_size": f"{width}x{height}", "frames_model_file": model_file or None,
                               "frames_model_file_row": file_row}
    for model in [name for name in ("half", "paper") if name in models]:
        measured = run_worker(Job("frames", str(device), width, reps, model=model, height=height,
                                  frames=profile.frames, model_file=model_file if model == file_row else ""))
        results[key("frames", model, f"{width}x{height}", "fps")] = profile.frames / measured.seconds
    if "half" not in models:
        return results
    # the ablation: the half-width network's frames through the one pass, without the pre-padded buffers
    measured = run_worker(Job("frames", str(device), width, reps, model="half", height=height, frames=profile.frames,
                              model_file=model_file if file_row == "half" else "", mode="onepass"))
    results[key("frames", "half", f"{width}x{height}", "onepass_fps")] = profile.frames / measured.seconds
    if importlib.util.find_spec("av") is not None:  # the video extra: a clip end to end, half-width net
        # its clip and outputs in a folder of this process's: a worker stopped by SIGTERM is killed, no clean-up
        with tempfile.TemporaryDirectory(prefix="stylenet-bench-video-") as folder:
            measured = run_worker(Job("video", str(device), width, reps, model="half", height=height,
                                      frames=profile.frames, model_file=model_file if file_row == "half" else "",
                                      output=folder))
        results[key("video", "half", f"{width}x{height}", "fps")] = profile.frames / measured.seconds
    return results


def bench_photo(device: torch.device, profile: Profile, reps: int, model_file: str = "") -> dict[str, Any]:
    """The big photo through the paper network on the default path (what ``stylenet-stylize`` does:
    layer by layer beyond the memory budget) and in one pass, each in its own process: seconds,
    peak memory (peak RSS, or CUDA's max allocated) and the PSNR between the two 8-bit outputs;
    ``model_file`` must be of the paper's width."""
    if model_file:
        model_file_row(model_file, paper_only=True)
    width, height = profile.photo
    name = f"{width}x{height}"
    results: dict[str, Any] = {"photo_size": name, "photo_model_file": model_file or None}
    with tempfile.TemporaryDirectory(prefix="stylenet-bench-") as tmp:
        outputs = {}
        for mode in ("onepass", "default"):
            outputs[mode] = str(Path(tmp) / f"{mode}.pt")
            measured = run_worker(Job("photo", str(device), width, reps, model="paper", mode=mode, height=height,
                                      max_memory=profile.photo_max_memory, model_file=model_file,
                                      output=outputs[mode]))
            results[key("photo", mode, name, "seconds")] = measured.seconds
            results[key("photo", mode, name, "peak_mb")] = measured.peak_mb
        one_pass, default = (torch.load(outputs[mode], weights_only=True).float() / 255
                             for mode in ("onepass", "default"))
    results[key("photo_default", name, "psnr_db")] = min(PSNR_IDENTICAL, float(psnr(default[None], one_pass[None])))
    results[key("photo_default", name, "time_ratio")] = (results[key("photo", "default", name, "seconds")]
                                                          / results[key("photo", "onepass", name, "seconds")])
    return results


def bench_gatys(device: torch.device, profile: Profile, reps: int, weights: str) -> dict[str, Any]:
    """Seconds per L-BFGS iteration of the Gatys baseline, from the timestamps of its own callback."""
    from stylenet.gatys import optimize

    size = profile.gatys_size
    loss = PerceptualLoss(weights=weights).to(device)
    loss.set_style([random_images(1, size, device, seed=1)[0]])
    stamps: list[float] = []

    def stamp(_progress: Any) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    result = optimize(random_images(1, size, device)[0], loss, iterations=reps + 1, callback=stamp)
    per_iteration = statistics.median([b - a for a, b in itertools.pairwise(stamps)])
    return {"gatys_size": size, "gatys_weights": weights, "gatys_iteration_s": per_iteration,
            "gatys_evaluations_per_iteration": result.evaluations / max(result.iterations, 1)}


def bench_conv(device: torch.device, profile: Profile, reps: int) -> dict[str, Any]:
    """The device's convolution ceiling, GFLOP/s in fp32 and bf16: the best of the VGG-16 3x3
    convolutions the training step runs (channels_last, batch and size of the training step, inputs
    already in that dtype). The best, not one shape, because no shape is the fastest on every
    device; it is the yardstick of ``train_fraction_of_peak`` and of ``train_floor_s``."""
    size, batch = profile.train_size, profile.batch
    results: dict[str, Any] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        measured = {}
        for channels, divisor in VGG_CONV_SHAPES:
            side = max(4, size // divisor)
            x = torch.randn(batch, channels, side, side, device=device, dtype=dtype)
            w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype)
            x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
            with torch.inference_mode():
                seconds = median_seconds(lambda x=x, w=w: F.conv2d(x, w, padding=1), device, reps)
            measured[f"{channels}x{side}"] = 2 * 9 * channels * channels * side * side * batch / seconds / 1e9
        results[key("conv", name, "gflops")] = max(measured.values())
        results[key("conv", name, "gflops_by_shape")] = measured
    return results


def write_jpegs(folder: Path, count: int) -> None:
    """COCO-like photos: 640x480 JPEGs (quality 90) of smooth colour fields with fine noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((640, 480), Image.Resampling.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def images_per_second(dataset: Any, batch: int, count: int) -> float:
    """Images/s of the training loader (StreamSampler order, main process) over ``count`` images."""
    from torch.utils.data import DataLoader

    from stylenet.data import StreamSampler, collate_skipping_bad

    loader = iter(DataLoader(dataset, batch_sampler=StreamSampler(len(dataset), batch, seed=0),
                             collate_fn=collate_skipping_bad))
    next(loader)  # warm-up: first file opens, memory maps
    batches = max(1, count // batch)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * batch / (time.perf_counter() - start)


def bench_data(profile: Profile, train_step_s: float | None) -> dict[str, Any]:
    """Images/s from a folder of JPEGs and from shards prepared by ``stylenet-prepare``, against the
    images/s the fast training step consumes (``train_step_s``, when the train section ran)."""
    from stylenet.cli.prepare import prepare
    from stylenet.data import ImageFileDataset, ShardDataset
    from stylenet.image import list_images
    from stylenet.shards import ShardStore

    size, batch, count = profile.train_size, profile.batch, profile.data_images
    with tempfile.TemporaryDirectory(prefix="stylenet-bench-") as tmp:
        photos = Path(tmp) / "photos"
        write_jpegs(photos, count)
        results = {"data_jpeg_img_s": images_per_second(ImageFileDataset(list_images(photos), size), batch, count)}
        prepare(photos, Path(tmp) / "shards", size=size, workers=0, progress=False)
        store = ShardStore(Path(tmp) / "shards")
        results["data_shard_img_s"] = images_per_second(ShardDataset(store.sources, size, store=store), batch, count)
    if train_step_s:
        consumed = batch / train_step_s
        results["data_train_consumes_img_s"] = consumed
        results["data_jpeg_feed_ratio"] = results["data_jpeg_img_s"] / consumed
        results["data_shard_feed_ratio"] = results["data_shard_img_s"] / consumed
    return results
