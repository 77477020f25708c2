"""What ``stylenet-bench`` reports: the run's machine, figures derived from several sections, the speed
targets (met or not) and the printed table."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stylenet.bench.measure import key
from stylenet.bench.training import VARIANTS
from stylenet.fastpath import bf16_is_native

#: the conv ceiling that bounds the fast training step, by its precision.
CEILINGS = {"bf16-mixed": "conv_bf16_gflops", "32-true": "conv_fp32_gflops"}


@dataclass(frozen=True)
class Target:
    """A speed target: ``figure`` at least (``kind="min"``) or at most (``"max"``) ``bound``, judged only
    where the run measured it as the target is set (``conditions``: figures the run must hold, such as
    the full profile's training size: a step of 32 px says nothing of one of 256; ``at_least``: figures
    it must reach, such as a loss curve's steps)."""

    figure: str
    kind: str
    bound: float
    what: str
    conditions: tuple[tuple[str, Any], ...] = ()
    at_least: tuple[tuple[str, float], ...] = ()
    size: str = ""  # the size in ``figure``'s name, where a run at other sizes measures it under another name

    def unlike(self, results: dict[str, Any]) -> str | None:
        """How the run differs from the target's conditions, as a phrase; None where it does not. Every
        target is set for a CPU (not a GPU, which has native bf16 too) with native bf16 (the machine's
        ``meta``), at its default precision."""
        meta = results.get("meta", {})
        facts = {"bf16_native": meta.get("bf16_native"), "device": str(meta.get("device", "cpu")).split(":")[0],
                 "photo_weights": "trained" if results.get("photo_model_file") else "random", **results}
        differ = [f"{name} {facts.get(name)} (the target's: {value})"
                  for name, value in (("device", "cpu"), ("bf16_native", True), *self.conditions)
                  if facts.get(name) != value]
        differ += [f"{name} {results.get(name)} (the target's: at least {value})" for name, value in self.at_least
                   if not results.get(name, 0) >= value]
        return ", ".join(differ) or None

    def sizes_measured(self, results: dict[str, Any]) -> list[str]:
        """The sizes a run measured this figure at, where it did not at the target's (``--quick``)."""
        if not self.size or self.figure in results:
            return []
        pattern = re.compile(re.escape(self.figure).replace(re.escape(self.size), r"(\d+(?:x\d+)?)"))
        return [match[1] for match in map(pattern.fullmatch, results) if match]

    def verdict(self, measured: float) -> dict[str, Any]:
        met = measured >= self.bound if self.kind == "min" else measured <= self.bound
        return {"bound": self.bound, "kind": self.kind, "measured": measured, "what": self.what, "met": met}


#: the training step the speed issue sets its targets for: batch 4 x 256 px (the full profile's), in the
#: default precision of a CPU with native bf16
TRAIN_STEP = (("train_size", 256), ("train_batch", 4), ("train_fast_precision", "bf16-mixed"))

TARGETS = (
    # the bounds of the second speed issue (set for a 2-core bf16-native CPU; see the README's "Speed")
    Target("train_speedup", "min", 4.0, "training step vs the reference configuration", TRAIN_STEP),
    Target("train_fraction_of_peak", "min", 0.83, "training step's executed FLOP rate / conv ceiling", TRAIN_STEP),
    Target("infer_fast_paper_1024_seconds", "max", 0.35, "stylize 1024 px, paper net, seconds", size="1024"),
    Target("infer_fast_half_1024_seconds", "max", 0.12, "stylize 1024 px, half-width net, seconds", size="1024"),
    Target("infer_fast_paper_2048_peak_mb", "max", 2048.0, "stylize 2048 px, peak MiB", size="2048"),
    Target("gatys500_over_feedforward", "min", 1000.0, "500 L-BFGS iterations / one feed-forward pass",
           (("gatys_size", 256),)),
    Target("data_shard_feed_ratio", "min", 20.0, "shard images/s / images/s the step consumes", TRAIN_STEP),
    Target("loss_curve_rel_diff_final_eval", "max", 0.01, "fast vs fp32 objective after the loss curve",
           (("loss_curve_fast_precision", "bf16-mixed"),),  # (fp32 against fp32 is no measure)
           at_least=(("loss_curve_steps", 200),)),  # the README's: a few steps are no measure of where training ends
    # video frames and the big photo (stylenet-bench --sections frames,photo), at the full profile's sizes
    *(Target(f"frames_{net}_640x480_fps", "min", bound, f"frames 640x480 streamed, {name} net, frames/s",
             size="640x480")
      for net, name, bound in (("half", "half-width", 30.0), ("paper", "paper", 10.0))),
    Target("video_half_640x480_fps", "min", 25.0, "video 640x480 end to end (decode + encode), half-width net, "
           "frames/s", size="640x480"),
    *(Target(f"photo_default_4000x3000_{figure}", kind, bound, f"12 MP photo, default path: {what}", conditions,
             size="4000x3000")
      for figure, kind, bound, what, conditions in (
          ("time_ratio", "max", 1.2, "time / one pass's", ()),
          ("peak_mb", "max", 2048.0, "peak MiB", ()),
          # random weights put bf16 and fp32 ~47 dB apart by rounding alone (--model-file: a trained model)
          ("psnr_db", "min", 50.0, "PSNR dB against one pass", (("photo_weights", "trained"),)))),
)


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def metadata(device: torch.device, command: list[str]) -> dict[str, Any]:
    """The machine and software a run measured, and the command that ran it."""
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or capabilities.get("cpu_name", platform.machine()))
    return {"command": " ".join(command), "device": str(device), "device_name": name,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_native": bf16_is_native(device),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "load_average": load_average(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def derived(results: dict[str, Any]) -> None:
    """Figures that need several sections: the fraction of the conv ceiling (the FLOPs the fast
    step executes, as the speed issue counts them, over its time), the floor a step
    executing the fast path's FLOPs at the ceiling would take (so ``train_speedup_bound``, the
    most any implementation of those FLOPs could gain here), Gatys over feed-forward, and each
    of :data:`TARGETS` that was measured, met or not."""
    r = results
    ceiling = CEILINGS.get(r.get("train_fast_precision", ""))  # none measured for 16-mixed: no fraction
    if "train_fast_s" in r and ceiling in r:
        r["train_fast_gflops"] = r["train_fast_executed_gflop"] / r["train_fast_s"]
        r["train_fraction_of_peak"] = r["train_fast_gflops"] / r[ceiling]
        r["train_floor_s"] = r["train_fast_executed_gflop"] / r[ceiling]
        r["train_speedup_bound"] = r["train_reference_s"] / r["train_floor_s"]
    if "train_reference_s" in r and "conv_fp32_gflops" in r:
        r["train_reference_fraction_of_peak"] = r["train_reference_gflop"] / r["train_reference_s"] / r[
            "conv_fp32_gflops"]
    feed_forward = key("infer_fast_paper", r.get("gatys_size"), "seconds")
    if "gatys_iteration_s" in r and feed_forward in r:
        r["gatys500_over_feedforward"] = 500 * r["gatys_iteration_s"] / r[feed_forward]
    unlike = {target: target.unlike(r) for target in TARGETS if target.figure in r}  # measured: how it differs
    r["targets"] = {target.figure: target.verdict(r[target.figure]) for target, how in unlike.items() if not how}
    not_judged = {target.figure: f"{target.what}: measured at {how}" for target, how in unlike.items() if how}
    not_judged |= {target.figure: f"{target.what}: measured at {', '.join(sizes)} only"
                   for target in TARGETS for sizes in [target.sizes_measured(r)] if sizes}
    r.pop("targets_not_judged", None)
    if not_judged:
        r["targets_not_judged"] = not_judged


def train_rows(r: dict[str, Any]) -> Iterator[tuple[str, str, str, str]]:
    yield (f"train step, batch {r['train_batch']} x {r['train_size']} px", f"{r['train_reference_s']:.3f} s",
           f"{r['train_fast_s']:.3f} s", f"{r['train_speedup']:.2f}x")
    yield ("  GFLOP per step (executed)", f"{r['train_reference_gflop']:.0f}",
           f"{r['train_fast_gflop']:.0f} ({r['train_fast_executed_gflop']:.0f})", "")
    if "train_fraction_of_peak" in r:
        yield ("  fraction of conv ceiling", f"{r['train_reference_fraction_of_peak']:.0%} (fp32)",
               f"{r['train_fraction_of_peak']:.0%} ({r['train_fast_precision']})", "")
    if "train_floor_s" in r:
        yield ("  floor: executed FLOPs at the conv ceiling", "", f"{r['train_floor_s']:.3f} s",
               f"{r['train_speedup_bound']:.2f}x at most")
    yield ("  peak memory", f"{r['train_reference_peak_mb']:.0f} MB", f"{r['train_fast_peak_mb']:.0f} MB", "")
    for variant in VARIANTS:
        seconds = r.get(key("train", variant.name, "s"))
        if variant.change and seconds is not None:
            yield (f"  ablation: {variant.change}", "", f"{seconds:.3f} s",
                   f"{seconds / r['train_fast_s']:.2f}x the time")
    if "train_fast_compiled_s" in r:
        yield ("  with compile=true", "", f"{r['train_fast_compiled_s']:.3f} s",
               f"compile {r['train_compile_s']:.0f} s")


def infer_rows(r: dict[str, Any], models: list[str], sizes: list[int]) -> Iterator[tuple[str, str, str, str]]:
    for model in models:
        for size in sizes:
            seconds = {mode: r.get(key("infer", mode, model, size, "seconds")) for mode in ("fp32", "fast")}
            if seconds["fast"] is None:
                continue
            cells = {mode: f"{seconds[mode]:.3f} s" for mode in seconds}
            for mode in cells:
                peak = r.get(key("infer", mode, model, size, "peak_mb"))
                cells[mode] += "" if peak is None else f" / {peak:.0f} MB"
            yield (f"stylize {size} px ({model} net)", cells["fp32"], cells["fast"],
                   f"{seconds['fp32'] / seconds['fast']:.2f}x")


def network_label(model: str, model_file: str | None) -> str:
    """``half net``, or ``half net: demo.safetensors`` for a row timed with a trained model file."""
    return f"{model} net" + (f": {Path(model_file).name}" if model_file else "")


def stream_rows(r: dict[str, Any]) -> Iterator[tuple[str, str, str, str]]:
    """The frames and big-photo rows (``stylenet-bench --sections frames,photo``); a row timed with
    ``--model-file`` names the file."""
    for model in ("half", "paper"):
        fps = r.get(key("frames", model, r.get("frames_size"), "fps"))
        if fps is not None:
            trained = r.get("frames_model_file") if r.get("frames_model_file_row") == model else None
            onepass = r.get(key("frames", model, r.get("frames_size"), "onepass_fps"))
            yield (f"frames {r['frames_size']} streamed ({network_label(model, trained)})",
                   "" if onepass is None else f"{onepass:.1f} frames/s (one pass)", f"{fps:.1f} frames/s",
                   "" if onepass is None else f"{fps / onepass:.2f}x")
    fps = r.get(key("video", "half", r.get("frames_size"), "fps"))
    if fps is not None:
        trained = r.get("frames_model_file") if r.get("frames_model_file_row") == "half" else None
        yield (f"video {r['frames_size']} end to end, decode + encode ({network_label('half', trained)})", "",
               f"{fps:.1f} frames/s", "")
    name = r.get("photo_size")
    if name is not None:
        cells = {mode: f"{r[key('photo', mode, name, 'seconds')]:.2f} s / "
                       f"{r[key('photo', mode, name, 'peak_mb')]:.0f} MB" for mode in ("onepass", "default")}
        label = network_label("paper", r.get("photo_model_file"))
        yield (f"photo {name} ({label}): one pass / default", cells["onepass"], cells["default"],
               f"{r[key('photo_default', name, 'time_ratio')]:.2f}x, {r[key('photo_default', name, 'psnr_db')]:.1f} dB")


def other_rows(r: dict[str, Any]) -> Iterator[tuple[str, str, str, str]]:
    if "gatys_iteration_s" in r:
        ratio = (f"500 it. / net: {r['gatys500_over_feedforward']:.0f}x" if "gatys500_over_feedforward" in r
                 else f"(500 it. / net: needs infer's paper net at {r['gatys_size']} px)")
        yield (f"Gatys, 1 L-BFGS iteration, {r['gatys_size']} px ({r['gatys_weights']} VGG)",
               f"{r['gatys_iteration_s']:.3f} s", "", ratio)
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


def print_table(results: dict[str, Any], models: list[str], sizes: list[int]) -> None:
    """The figures as a markdown table (reference or fp32 | stylenet | ratio), then each target's verdict."""
    rows = [("", "reference / fp32", "stylenet", "ratio"), *(train_rows(results) if "train_fast_s" in results else ()),
            *infer_rows(results, models, sizes), *stream_rows(results), *other_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
             for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    print("\n".join(lines))
    meta = results.get("meta", {})
    if meta:
        print(f"ran on: {meta['device_name']} ({meta['device']}), CPU capability {meta['cpu_capability']}, "
              f"bf16 native: {'yes' if meta['bf16_native'] else 'no'}, {meta['threads']} threads")
    for figure, verdict in results.get("targets", {}).items():
        sign = ">=" if verdict["kind"] == "min" else "<="
        print(f"target {'met    ' if verdict['met'] else 'NOT met'}: {verdict['what']}: {verdict['measured']:.3g} "
              f"{sign} {verdict['bound']:g} ({figure})")
    for figure, reason in results.get("targets_not_judged", {}).items():
        print(f"target not judged: {reason} ({figure})")

