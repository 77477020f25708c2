"""``stylenet-bench``: stylenet's speed on this machine, side by side with the reference configuration.

    stylenet-bench --json bench.json                 # everything, default sizes (~8 min on 2 CPU cores)
    stylenet-bench --quick --json /tmp/bench.json    # tiny sizes: checks that the benchmark runs (CI)
    stylenet-bench --sections train --compile        # one section; also time torch.compile

Sections (``--sections``), all on the current device (``--device``), each timed after a warm-up with
the device synchronised around every measurement, reported as the median of ``--reps``:

* ``train``: one training step (forward, backward, Adam) of the reference configuration
  (pytorch/examples' fast_neural_style recipe: fp32, NCHW, eager, VGG-16 to relu4_3 on both the
  output and the content batch, Gram differentiated by autograd) and of stylenet's default fast
  configuration (what :class:`stylenet.tasks.StyleTransferTask` runs: content VGG truncated at
  relu2_2, style Grams precomputed, the device's default precision, memory layouts and layer
  rewrites from :mod:`stylenet.fastpath`), same network, objective, batch and size; plus
  ablations that each take one fast path away. Every variant runs in its own process (the fast
  path's allocator setting is process-wide; peak memory is per process). FLOPs are counted by
  ``torch.utils.flop_counter`` on the warm-up step.
* ``infer``: the transformation network at each ``--sizes`` side, fp32 eager (``net(x)`` under
  ``no_grad``) versus the path ``stylenet-stylize`` takes (:class:`stylenet.inference.InferenceModel`
  with ``precision="auto"``: bf16 where native, exact layer rewrites, tiles within its memory
  budget), each in a fresh subprocess so its peak memory (peak RSS, or CUDA's max allocated) is
  its own.
* ``gatys``: one L-BFGS iteration of :func:`stylenet.gatys.optimize` (Gatys et al., the slow baseline
  of the paper's Table 1) and the extrapolated 500-iteration time over one feed-forward pass.
* ``conv``: the device's convolution ceiling, fp32 and bf16: the best of VGG-16's 3x3 layer shapes.
* ``data``: images/s delivered by the training data path from a folder of JPEGs and from shards
  prepared by ``stylenet-prepare``, against the images/s the fast training step consumes.

VGG weights are random by default (``--weights``): speed does not depend on their values, and the
benchmark then runs offline. ``--loss-curve N`` additionally trains N steps on the bundled photos in
fp32 and in the fast configuration from the same seed and reports how far apart the losses end.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stylenet.fastpath import (
    bf16_is_native,
    inference_precision,
    prepare_for_training,
    training_precision,
    use_channels_last,
)
from stylenet.losses import (
    PerceptualLoss,
    feature_reconstruction_loss,
    style_reconstruction_loss,
    total_variation_loss,
)
from stylenet.nets import TransformerNet

PROG = "stylenet-bench"
SECTIONS = ("train", "infer", "gatys", "conv", "data")
#: network widths benchmarked for inference: the paper's and the half-width released models' (configs/model).
MODELS = {"paper": {"channels": 32}, "half": {"channels": 16}}
#: sizes of everything, full and ``--quick``.
PROFILES = {
    "full": {"train_size": 256, "batch": 4, "sizes": [256, 512, 1024, 2048], "models": ["paper", "half"],
             "gatys_size": 256, "data_images": 48},
    "quick": {"train_size": 32, "batch": 2, "sizes": [32], "models": ["paper"], "gatys_size": 32,
              "data_images": 6},
}
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "32-true": None}

# ---------------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median wall time of ``reps`` calls after ``warmup`` calls, the device synchronised around each."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def counted_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` (convolutions and matrix products, forward and backward), counted
    by PyTorch's own counter rather than by a formula that could drift from the code."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------- training


def reference_gram(features: torch.Tensor) -> torch.Tensor:
    """The Gram matrix as pytorch/examples computes it: one product, differentiated by autograd."""
    batch, channels, height, width = features.shape
    psi = features.reshape(batch, channels, height * width)  # (B, C, HW)
    return torch.bmm(psi, psi.transpose(1, 2)) / (channels * height * width)


def reference_objective(loss: PerceptualLoss, output: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """stylenet's objective computed with the reference's data flow: the content batch goes through
    VGG as deep as the output (relu4_3, as pytorch/examples' ``vgg(x)`` does), nothing is truncated."""
    layers = [*loss.content_layers, *loss.style_layers]
    out_features, content_features = loss.vgg(output, layers), loss.vgg(images, layers)
    weights = loss.term_weights
    content = sum(w * feature_reconstruction_loss(out_features[name], content_features[name])
                  for name, w in loss.content_layers.items())
    style = sum(w * style_reconstruction_loss(reference_gram(out_features[name]), loss.target_gram(name))
                for name, w in loss.style_layers.items())
    return weights["content"] * content + weights["style"] * style + weights["tv"] * total_variation_loss(output)


class TrainingStep:
    """A training step ``images -> total loss`` (forward, backward, Adam) with its own network.

    ``kind="reference"``: fp32, NCHW, eager, :func:`reference_objective`. ``kind="fast"``: what
    :class:`~stylenet.tasks.StyleTransferTask` does, ``loss(net(images), images)`` with the modules
    prepared by :func:`stylenet.fastpath.prepare_for_training` (``prepare=False``: not), under the
    autocast Lightning applies for ``precision`` (default: :func:`stylenet.fastpath.training_precision`)."""

    def __init__(self, kind: str, device: torch.device, style: torch.Tensor, *, weights: str = "random",
                 seed: int = 0, precision: str | None = None, prepare: bool = True,
                 model: dict[str, Any] | None = None, **fast_paths: Any) -> None:
        torch.manual_seed(seed)
        self.kind, self.device = kind, device
        self.net = TransformerNet(**(model or {})).to(device)
        self.loss = PerceptualLoss(weights=weights, seed=seed).to(device)
        self.loss.set_style([style])
        self.dtype = None
        if kind == "fast":
            if prepare:
                prepare_for_training(self.net, self.loss, device, **fast_paths)
            self.dtype = AUTOCAST[precision or training_precision(device.type)]
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext():
            output = self.net(images)
            if self.kind == "reference":
                total = reference_objective(self.loss, output, images)
            else:
                total = self.loss(output, images)["total"]
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return total.detach()

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor) -> float:
        """The objective of the network as trained so far on ``images``, in fp32, no update."""
        return float(self.loss(self.net(images), images)["total"])


def random_images(count: int, size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)


#: the training variants timed, each in its own process: TrainingStep arguments.
TRAIN_VARIANTS: dict[str, dict[str, Any]] = {
    "reference": {"kind": "reference"},
    "fast": {"kind": "fast"},
    # ablations: each changes one fast path
    "fast_fp32": {"kind": "fast", "precision": "32-true"},
    "fast_nchw": {"kind": "fast", "channels_last": False},
    "fast_channels_last": {"kind": "fast", "channels_last": True},
    "fast_system_malloc": {"kind": "fast", "system_malloc": True},
    "fast_unprepared": {"kind": "fast", "prepare": False},  # what the objective does alone: bf16, truncation
}
#: what each ablation changes, for the table.
ABLATIONS = {"fast_fp32": "precision 32-true", "fast_nchw": "both networks NCHW",
             "fast_channels_last": "both networks channels_last",
             "fast_system_malloc": "malloc returning memory",
             "fast_unprepared": "no layer rewrites, NCHW, system malloc"}


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one training variant (:data:`TRAIN_VARIANTS`) in a fresh process: the allocator setting
    of the fast path is process-wide, and a process's peak memory is its own."""
    device, size, batch = torch.device(spec["device"]), spec["size"], spec["batch"]
    images, style = random_images(batch, size, device), random_images(1, size, device, seed=1)[0]
    step = TrainingStep(device=device, style=style, weights=spec["weights"], **spec["options"])
    start = time.perf_counter()
    if spec["options"].get("compile"):  # the first call compiles; no FLOPs counted through it
        step(images)
        flops = None
    else:  # the warm-up step, its FLOPs counted
        flops = counted_flops(lambda: step(images)) / 1e9
    sync(device)
    first = time.perf_counter() - start
    seconds = median_seconds(lambda: step(images), device, spec["reps"], warmup=0)
    return {"s": seconds, "gflop": flops, "first_s": first, **peak_memory(device)}


def bench_train(device: torch.device, profile: dict[str, Any], reps: int, weights: str, compile: bool
                ) -> dict[str, Any]:
    """Every variant of :data:`TRAIN_VARIANTS` (and ``fast_compiled`` with ``compile``) in its own
    process. ``train_fast_gflop`` is the work of stylenet's algorithm (the paper's network, the
    truncated content pass), counted on the unprepared step; ``train_fast_executed_gflop`` what the
    rewritten layers actually execute, which can be less (:func:`stylenet.fastpath.rewrite_layers`)."""
    variants = dict(TRAIN_VARIANTS)
    if compile:
        variants["fast_compiled"] = {"kind": "fast", "compile": True}
    layouts = use_channels_last(device)
    results: dict[str, Any] = {"train_batch": profile["batch"], "train_size": profile["train_size"],
                               "train_fast_precision": profile["precision"],
                               "train_fast_channels_last": {"network": layouts[0], "vgg": layouts[1]}}
    for name, options in variants.items():
        spec = {"section": "train", "device": str(device), "size": profile["train_size"],
                "batch": profile["batch"], "weights": weights, "reps": reps,
                "options": {"precision": profile["precision"]} | options if options["kind"] == "fast" else options}
        measured = run_worker(spec)
        for key, value in measured.items():
            if value is not None and key != "first_s":
                results[f"train_{name}_{key}"] = value
        if options.get("compile"):
            results["train_compile_s"] = measured["first_s"] - measured["s"]
    results["train_fast_executed_gflop"] = results["train_fast_gflop"]
    results["train_fast_gflop"] = results["train_fast_unprepared_gflop"]
    results["train_speedup"] = results["train_reference_s"] / results["train_fast_s"]
    return results


# ---------------------------------------------------------------------------------------------- inference


def proc_status_bytes(field: str) -> int | None:
    """A memory figure of this process from Linux's /proc/self/status (kB there), or None elsewhere."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set size. Linux's VmHWM belongs to the address space, which
    ``exec`` replaces; ``ru_maxrss`` survives ``exec``, so in a subprocess it can report the parent's
    peak (it does here: the benchmark's own RSS), and is only the fallback."""
    peak = proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def inference_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One (model, size, mode) inference measurement, run in a fresh process (see :func:`bench_infer`)."""
    from stylenet.inference import InferenceModel

    device, size = torch.device(spec["device"]), spec["size"]
    torch.manual_seed(0)
    net = TransformerNet(**MODELS[spec["model"]]).eval()
    image = torch.rand(3, size, size)
    if spec["mode"] == "fp32":
        net, batch = net.to(device), image.to(device).unsqueeze(0)

        def run() -> Any:
            with torch.no_grad():
                return net(batch)
    else:
        model = InferenceModel(net, device=device, precision="auto")  # as stylenet-stylize runs it

        def run() -> Any:
            return model.transform(image)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = proc_status_bytes("VmRSS") or peak_rss_bytes()
    seconds = median_seconds(run, device, spec["reps"])
    return {"seconds": seconds, **peak_memory(device, baseline)}


def peak_memory(device: torch.device, baseline: int | None = None) -> dict[str, float]:
    """Peak memory of this process so far, MiB: CUDA's max allocated, or the peak RSS (which
    includes the interpreter and torch; ``peak_delta_mb`` is the rise above ``baseline`` bytes)."""
    if device.type == "cuda":
        return {"peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    figures = {"peak_mb": peak_rss_bytes() / 2**20}
    if baseline is not None:
        figures["peak_delta_mb"] = (peak_rss_bytes() - baseline) / 2**20
    return figures


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement (:func:`train_worker`, :func:`inference_worker`) in a fresh interpreter."""
    command = [sys.executable, "-m", "stylenet.cli.bench", "--threads", str(torch.get_num_threads()),
               "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker {spec} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_infer(device: torch.device, profile: dict[str, Any], reps: int) -> dict[str, Any]:
    """Every (model, size, mode) in its own interpreter: a process's peak RSS only ever grows, so
    measuring several sizes in one process would report the largest one's peak for all. The peak
    includes the interpreter, torch and the image (``peak_mb``); ``peak_delta_mb`` is the rise
    during the runs."""
    results: dict[str, Any] = {"infer_fast_precision": inference_precision(device)}
    for model in profile["models"]:
        for size in profile["sizes"]:
            for mode in ("fp32", "fast"):
                spec = {"section": "infer", "model": model, "size": size, "mode": mode, "reps": reps,
                        "device": str(device)}
                for key, value in run_worker(spec).items():
                    results[f"infer_{mode}_{model}_{size}_{key}"] = value
            results[f"infer_speedup_{size}" if model == "paper" else f"infer_speedup_{model}_{size}"] = (
                results[f"infer_fp32_{model}_{size}_seconds"] / results[f"infer_fast_{model}_{size}_seconds"])
    return results


# ---------------------------------------------------------------------------------------------- gatys, conv


def bench_gatys(device: torch.device, profile: dict[str, Any], reps: int, weights: str) -> dict[str, Any]:
    """Seconds per L-BFGS iteration of the Gatys baseline, from the timestamps of its own callback."""
    from stylenet.gatys import optimize

    size = profile["gatys_size"]
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


#: (channels, side / train_size) of VGG-16's 3x3 convolutions in blocks 1-4: the shapes of the
#: training step's dominant work, at which the device's ceiling is measured.
VGG_CONV_SHAPES = ((64, 1), (128, 2), (256, 4), (512, 8))


def bench_conv(device: torch.device, profile: dict[str, Any], reps: int) -> dict[str, Any]:
    """The device's convolution ceiling, GFLOP/s in fp32 and bf16: the best of the VGG-16 3x3
    convolutions the training step runs (channels_last, batch and size of the training step, inputs
    already in that dtype). The best, not one shape, because no shape is the fastest on every
    device; it is the yardstick of ``train_fraction_of_peak`` and of ``train_floor_s``."""
    size, batch = profile["train_size"], profile["batch"]
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
        results[f"conv_{name}_gflops"] = max(measured.values())
        results[f"conv_{name}_gflops_by_shape"] = measured
    return results


# ---------------------------------------------------------------------------------------------- data


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


def bench_data(profile: dict[str, Any], train_step_s: float | None) -> dict[str, Any]:
    from stylenet.cli.prepare import prepare
    from stylenet.data import ImageFileDataset, ShardDataset
    from stylenet.image import list_images
    from stylenet.shards import ShardStore

    size, batch, count = profile["train_size"], profile["batch"], profile["data_images"]
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


# ---------------------------------------------------------------------------------------------- loss curve


def loss_curve(device: torch.device, steps: int, profile: dict[str, Any], weights: str) -> dict[str, Any]:
    """Train ``steps`` steps in fp32 and in the fast configuration from the same seed on the same
    batches (the bundled photos in the training stream's order) and compare where they end: the
    training losses of the last steps, and each final network's fp32 objective on fixed centre
    crops of all the photos (the comparison least affected by batch-to-batch noise)."""
    from stylenet.data import ImageFileDataset, ImageFolderDataModule, resize_long_side, resolve_image_path
    from stylenet.image import load_rgb

    size, batch = profile["train_size"], profile["batch"]
    data = ImageFolderDataModule(source="demo", image_size=size, batch_size=batch, val_images=0)
    data.setup("fit")
    loader = iter(data.train_dataloader())
    batches = [next(loader)["images"].to(device) for _ in range(steps)]
    crops = ImageFileDataset(data.list_files(), size)
    fixed = torch.stack([crops[index]["image"] for index in range(len(crops))]).to(device)
    style = resize_long_side(load_rgb(resolve_image_path("demo:ihc")), size).to(device)
    curves, final = {}, {}
    for name, precision in (("fp32", "32-true"), ("fast", profile["precision"])):
        step = TrainingStep("fast", device, style, weights=weights, precision=precision)
        curves[name] = [float(step(images)) for images in batches]
        final[name] = step.evaluate(fixed)
    tail = min(10, steps)
    fp32_tail, fast_tail = statistics.fmean(curves["fp32"][-tail:]), statistics.fmean(curves["fast"][-tail:])
    return {"loss_curve_steps": steps, "loss_curve_fp32": curves["fp32"], "loss_curve_fast": curves["fast"],
            "loss_curve_rel_diff_last": abs(curves["fast"][-1] / curves["fp32"][-1] - 1),
            "loss_curve_rel_diff_mean_last10": abs(fast_tail / fp32_tail - 1),
            "loss_curve_fp32_final_eval": final["fp32"], "loss_curve_fast_final_eval": final["fast"],
            "loss_curve_rel_diff_final_eval": abs(final["fast"] / final["fp32"] - 1)}


# ---------------------------------------------------------------------------------------------- report


def metadata(device: torch.device, argv: list[str]) -> dict[str, Any]:
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return {"command": " ".join([PROG, *argv]), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or capabilities.get("cpu_name", platform.machine()),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_native": bf16_is_native(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__, "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


#: issue 6's targets: (figure, "min" or "max", bound, what it means).
TARGETS = (
    ("train_speedup", "min", 3.0, "training step vs the reference configuration"),
    ("train_fraction_of_peak", "min", 0.7, "training step's FLOP rate / conv ceiling"),
    ("infer_fast_paper_1024_seconds", "max", 0.5, "stylize 1024 px, paper net, seconds"),
    ("infer_fast_half_1024_seconds", "max", 0.25, "stylize 1024 px, half-width net, seconds"),
    ("infer_fast_paper_2048_peak_mb", "max", 2048.0, "stylize 2048 px, peak MiB"),
    ("gatys500_over_feedforward", "min", 1000.0, "500 L-BFGS iterations / one feed-forward pass"),
    ("data_shard_feed_ratio", "min", 20.0, "shard images/s / images/s the step consumes"),
    ("loss_curve_rel_diff_final_eval", "max", 0.01, "fast vs fp32 objective after the loss curve"),
)


def derived(results: dict[str, Any]) -> None:
    """Figures that need several sections: the fraction of the conv ceiling, the floor a step
    executing the fast path's FLOPs at the ceiling would take (so ``train_speedup_bound``, the
    most any implementation of those FLOPs could gain here), Gatys over feed-forward, and each
    of :data:`TARGETS` that was measured, met or not."""
    ceiling = {"bf16-mixed": "conv_bf16_gflops", "32-true": "conv_fp32_gflops"}
    fast_ceiling = ceiling.get(results.get("train_fast_precision", ""), "conv_bf16_gflops")
    if "train_fast_s" in results and fast_ceiling in results:
        achieved = results["train_fast_gflop"] / results["train_fast_s"]
        results["train_fast_gflops"] = achieved
        results["train_fraction_of_peak"] = achieved / results[fast_ceiling]
        results["train_floor_s"] = results["train_fast_executed_gflop"] / results[fast_ceiling]
        results["train_speedup_bound"] = results["train_reference_s"] / results["train_floor_s"]
    if "train_reference_s" in results and "conv_fp32_gflops" in results:
        results["train_reference_fraction_of_peak"] = (
            results["train_reference_gflop"] / results["train_reference_s"] / results["conv_fp32_gflops"])
    feed_forward = f"infer_fast_paper_{results.get('gatys_size')}_seconds"
    if "gatys_iteration_s" in results and feed_forward in results:
        results["gatys500_over_feedforward"] = 500 * results["gatys_iteration_s"] / results[feed_forward]
    results["targets"] = {
        figure: {"bound": bound, "kind": kind, "measured": results[figure], "what": what,
                 "met": results[figure] >= bound if kind == "min" else results[figure] <= bound}
        for figure, kind, bound, what in TARGETS if figure in results}


def table_rows(results: dict[str, Any], profile: dict[str, Any]) -> Iterator[tuple[str, str, str, str]]:
    """(what, reference / fp32, stylenet, ratio) rows of the printed table."""
    r = results
    if "train_fast_s" in r:
        what = f"train step, batch {r['train_batch']} x {r['train_size']} px"
        yield (what, f"{r['train_reference_s']:.3f} s", f"{r['train_fast_s']:.3f} s", f"{r['train_speedup']:.2f}x")
        yield ("  GFLOP per step (executed)", f"{r['train_reference_gflop']:.0f}",
               f"{r['train_fast_gflop']:.0f} ({r['train_fast_executed_gflop']:.0f})", "")
        if "train_fraction_of_peak" in r:
            yield ("  fraction of conv ceiling", f"{r['train_reference_fraction_of_peak']:.0%} (fp32)",
                   f"{r['train_fraction_of_peak']:.0%} ({r['train_fast_precision']})", "")
        if "train_floor_s" in r:
            yield ("  floor: executed FLOPs at the conv ceiling", "", f"{r['train_floor_s']:.3f} s",
                   f"{r['train_speedup_bound']:.2f}x at most")
        yield ("  peak memory", f"{r['train_reference_peak_mb']:.0f} MB", f"{r['train_fast_peak_mb']:.0f} MB", "")
        for name, change in ABLATIONS.items():
            if f"train_{name}_s" in r:
                yield (f"  ablation: {change}", "", f"{r[f'train_{name}_s']:.3f} s",
                       f"{r[f'train_{name}_s'] / r['train_fast_s']:.2f}x the time")
        if "train_fast_compiled_s" in r:
            yield ("  with compile=true", "", f"{r['train_fast_compiled_s']:.3f} s",
                   f"compile {r['train_compile_s']:.0f} s")
    for model in profile["models"]:
        for size in profile["sizes"]:
            key = f"{model}_{size}"
            if f"infer_fast_{key}_seconds" not in r:
                continue
            memory = "" if f"infer_fast_{key}_peak_mb" not in r else (
                f" / {r[f'infer_fp32_{key}_peak_mb']:.0f} MB", f" / {r[f'infer_fast_{key}_peak_mb']:.0f} MB")
            yield (f"stylize {size} px ({model} net)", f"{r[f'infer_fp32_{key}_seconds']:.3f} s{memory[0]}",
                   f"{r[f'infer_fast_{key}_seconds']:.3f} s{memory[1]}",
                   f"{r[f'infer_fp32_{key}_seconds'] / r[f'infer_fast_{key}_seconds']:.2f}x")
    if "gatys_iteration_s" in r:
        ratio = f"{r['gatys500_over_feedforward']:.0f}x" if "gatys500_over_feedforward" in r else ""
        yield (f"Gatys, 1 L-BFGS iteration, {r['gatys_size']} px ({r['gatys_weights']} VGG)",
               f"{r['gatys_iteration_s']:.3f} s",
               "", f"500 it. / net: {ratio}")
    if "conv_fp32_gflops" in r:
        yield ("conv ceiling, 3x3 channels_last", f"{r['conv_fp32_gflops']:.0f} GFLOP/s fp32",
               f"{r['conv_bf16_gflops']:.0f} GFLOP/s bf16", "")
    if "data_shard_img_s" in r:
        feed = f"{r['data_shard_feed_ratio']:.0f}x step" if "data_shard_feed_ratio" in r else ""
        yield ("data, images/s (JPEG folder / shards)", f"{r['data_jpeg_img_s']:.0f}", f"{r['data_shard_img_s']:.0f}",
               feed)
    if "loss_curve_rel_diff_last" in r:
        yield (f"objective after {r['loss_curve_steps']} steps (fp32 / fast)", f"{r['loss_curve_fp32_final_eval']:.4g}",
               f"{r['loss_curve_fast_final_eval']:.4g}", f"{r['loss_curve_rel_diff_final_eval']:.2%} apart")
        yield ("  training loss, mean of last 10 steps", "", "", f"{r['loss_curve_rel_diff_mean_last10']:.2%} apart")


def print_table(results: dict[str, Any], profile: dict[str, Any]) -> None:
    rows = [("", "reference / fp32", "stylenet", "ratio"), *table_rows(results, profile)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
             for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    print("\n".join(lines))
    for figure, target in results.get("targets", {}).items():
        sign = ">=" if target["kind"] == "min" else "<="
        print(f"target {'met    ' if target['met'] else 'NOT met'}: {target['what']}: {target['measured']:.3g} "
              f"{sign} {target['bound']:g} ({figure})")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--sizes", type=int, nargs="+", help="inference sides, px (default 256 512 1024 2048)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="inference networks (default both)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per figure (median reported)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition: a smoke test for CI")
    parser.add_argument("--compile", action="store_true", help="also time the training step with compile=true")
    parser.add_argument("--loss-curve", type=int, default=0, metavar="STEPS",
                        help="also train STEPS steps in fp32 and fast from one seed and compare the losses")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    parser.add_argument("--precision", choices=sorted(AUTOCAST),
                        help="the fast training configuration's precision (default: the device's, "
                             "bf16-mixed where bf16 is native); e.g. to check bf16's loss curve elsewhere")
    parser.add_argument("--train-size", type=int, help="training step image side, px (default 256)")
    parser.add_argument("--weights", default="random", help="VGG weights: random (default), imagenet, or a .pth")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's, one per core)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    if (not set(sections) <= set(SECTIONS) or args.reps < 1 or args.loss_curve < 0
            or (args.train_size is not None and args.train_size < 16)):
        parser.error(f"--sections must be a subset of {','.join(SECTIONS)}, --reps >= 1, --loss-curve >= 0, "
                     "--train-size >= 16")
    args.sections = sections
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.weights == "random":  # said once here, not once per network built
        logging.getLogger("stylenet.nets.vgg").setLevel(logging.ERROR)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps((train_worker if spec["section"] == "train" else inference_worker)(spec)))
        return 0
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    profile = dict(PROFILES["quick" if args.quick else "full"])
    profile["sizes"] = args.sizes or profile["sizes"]
    profile["models"] = args.models or profile["models"]
    profile["train_size"] = args.train_size or profile["train_size"]
    profile["precision"] = args.precision or training_precision(device.type)
    reps = 1 if args.quick else args.reps
    results: dict[str, Any] = {"meta": metadata(device, argv)}
    stages = {
        "train": lambda: bench_train(device, profile, reps, args.weights, args.compile),
        "infer": lambda: bench_infer(device, profile, reps),
        "gatys": lambda: bench_gatys(device, profile, max(reps, 3), args.weights),
        "conv": lambda: bench_conv(device, profile, reps),
        "data": lambda: bench_data(profile, results.get("train_fast_s")),
    }
    for section in args.sections:
        print(f"{PROG}: {section} ...", file=sys.stderr, flush=True)
        results.update(stages[section]())
    if args.loss_curve:
        print(f"{PROG}: loss curve, {args.loss_curve} steps x 2 ...", file=sys.stderr, flush=True)
        results.update(loss_curve(device, args.loss_curve, profile, args.weights))
    derived(results)
    results["meta"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print_table(results, profile)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
