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
  ablations that each take one fast path away (:data:`stylenet.bench.training.VARIANTS`). Every
  variant runs in its own process (the fast path's allocator setting is process-wide; peak memory
  is per process). FLOPs are counted by ``torch.utils.flop_counter`` on the warm-up step.
* ``infer``: the transformation network at each ``--sizes`` side, fp32 eager (``net(x)`` under
  ``no_grad``) versus the path ``stylenet-stylize`` takes (:class:`stylenet.inference.InferenceModel`
  with ``precision="auto"``: bf16 where native, exact layer rewrites, layer by layer beyond
  its memory budget), each in a fresh subprocess so its peak memory (peak RSS, or CUDA's max allocated) is
  its own.
* ``frames``: frames/s of 640x480 uint8 frames streamed through
  :meth:`stylenet.inference.InferenceModel.stylize_frames` (half-width and paper networks, the
  default precision), what a video or webcam loop runs; with PyAV (the ``video`` extra) also a
  generated 640x480 clip end to end through :func:`stylenet.video.stylize_video` (decoding and
  encoding included, half-width network).
* ``photo``: a 12 MP photo (4000x3000) through the paper network on the default path (layer by
  layer beyond the memory budget, :mod:`stylenet.inference.layerwise`) against one pass: seconds,
  peak memory and the PSNR between the two 8-bit outputs. ``--model-file`` measures a trained
  model here (paper width only) and in ``frames`` (in the row of its width); random weights
  otherwise (bf16 rounding differences grow through an untrained network, so the PSNR is only
  meaningful with trained weights).
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
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from stylenet import StylenetError
from stylenet.atomic import unwritable, write_text
from stylenet.bench.report import derived, load_average, metadata, print_table
from stylenet.bench.sections import (
    PROFILES,
    SECTIONS,
    bench_conv,
    bench_data,
    bench_frames,
    bench_gatys,
    bench_infer,
    bench_photo,
    bench_train,
    model_file_row,
)
from stylenet.bench.training import AUTOCAST, loss_curve
from stylenet.bench.worker import MODELS, WorkerFailed
from stylenet.cli import Terminated, check_text_output, sigterm_as_terminated, stopped_by
from stylenet.devices import resolve_device
from stylenet.errors import cannot_write
from stylenet.fastpath import training_precision

PROG = "stylenet-bench"


def parse_args(argv: list[str]) -> argparse.Namespace:
    summary, details = __doc__.replace("``", "").split("\n\n", 1)
    parser = argparse.ArgumentParser(prog=PROG, description=summary,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=details)
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
    parser.add_argument("--model-file", default="",
                        help="a trained style model for the frames section (in the row of its width) and "
                             "the photo section (paper width only); default: random weights")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's, one per core)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = [section for section in sections if section not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown section {unknown[0]!r}; choose from {','.join(SECTIONS)}")
    if not sections and not args.loss_curve:
        parser.error("--sections is empty and there is no --loss-curve: nothing to measure")
    sizes = args.sizes or []
    for option, value, wrong, rule in (
            ("--reps", args.reps, args.reps < 1, ">= 1"),
            ("--loss-curve", args.loss_curve, args.loss_curve < 0, ">= 0"),
            ("--train-size", args.train_size,
             args.train_size is not None and (args.train_size < 16 or args.train_size % 4), "a multiple of 4, >= 16"),
            ("--sizes", " ".join(map(str, sizes)), any(size < 16 for size in sizes), "each >= 16"),
            ("--threads", args.threads, args.threads is not None and args.threads < 1, ">= 1")):
        if wrong:
            parser.error(f"{option} must be {rule}, got {value}")
    for option, given, used_by in (("--model-file", args.model_file, ("frames", "photo")),
                                   ("--compile", args.compile, ("train",))):
        if given and not set(used_by) & set(sections):  # said, not refused: the other figures are still wanted
            print(f"{PROG}: note: {option} is used by the {' and '.join(used_by)} section"
                  f"{'s' * (len(used_by) > 1)} only, and --sections has none of them: it changes nothing here",
                  file=sys.stderr)
    if args.weights not in ("random", "calibrated", "imagenet") and not Path(args.weights).is_file():
        parser.error(f"--weights must be random, calibrated, imagenet or a .pth file, got {args.weights!r}")
    reason = unwritable(args.json) if args.json else None
    if reason:  # before minutes of measuring, not after
        parser.error(f"cannot write --json {str(args.json)!r}: {reason}")
    if args.json:
        try:
            check_text_output("--json", args.json, "the figures: give a .json file",
                              [path for path in (args.model_file, args.weights) if path and Path(path).is_file()])
        except StylenetError as err:
            parser.error(str(err))
    args.sections = sections
    for option in ("sizes", "models"):  # each measured once: a 2048 px worker takes minutes
        if getattr(args, option):
            setattr(args, option, list(dict.fromkeys(getattr(args, option))))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.weights == "random":  # said once here, not once per network built
        logging.getLogger("stylenet.nets.vgg").setLevel(logging.ERROR)
    try:
        device = resolve_device(args.device, accelerators=("cuda",))
        if args.weights not in ("random", "calibrated") and ({"train", "gatys"} & set(args.sections) or
                                                            args.loss_curve):  # before minutes of other sections
            from stylenet.nets.vgg import VGGFeatures  # (a file that is no VGG-16, ImageNet's weights offline)

            VGGFeatures(["relu4_3"], weights=args.weights)
        if args.model_file and {"frames", "photo"} & set(args.sections):  # before minutes of other sections
            row = model_file_row(args.model_file, paper_only="photo" in args.sections)
            if args.models and row not in args.models and "photo" not in args.sections:
                print(f"{PROG}: note: --model-file is timed in the {row} net's rows, which --models leaves out: it "
                      "changes nothing here", file=sys.stderr)
    except StylenetError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    base = PROFILES["quick" if args.quick else "full"]
    profile = dataclasses.replace(base, sizes=args.sizes or base.sizes, models=args.models or base.models,
                                  train_size=args.train_size or base.train_size,
                                  precision=args.precision or training_precision(device.type))
    reps = 1 if args.quick else args.reps
    results: dict[str, Any] = {"meta": metadata(device, [PROG, *argv])}
    sections = {
        "train": lambda: bench_train(device, profile, reps, args.weights, args.compile),
        "infer": lambda: bench_infer(device, profile, reps),
        "frames": lambda: bench_frames(device, profile, reps, args.model_file, args.models or MODELS),
        "photo": lambda: bench_photo(device, profile, reps, args.model_file),
        "gatys": lambda: bench_gatys(device, profile, max(reps, 3), args.weights),
        "conv": lambda: bench_conv(device, profile, reps),
        "data": lambda: bench_data(profile, results.get("train_fast_s")),
    }
    status = 0
    try:
        with sigterm_as_terminated():
            for section in [name for name in sections if name in args.sections]:  # data reads train's step time
                print(f"{PROG}: {section} ...", file=sys.stderr, flush=True)
                results.update(sections[section]())
            if args.loss_curve:
                print(f"{PROG}: loss curve, {args.loss_curve} steps x 2 ...", file=sys.stderr, flush=True)
                results.update(loss_curve(device, args.loss_curve, profile.train_size, profile.batch,
                                          profile.precision, args.weights))
    except WorkerFailed as err:  # minutes of other sections are not lost with it
        print(f"{PROG}: error: {err}; the sections finished before it follow", file=sys.stderr)
        status = 1
    except StylenetError as err:  # a setting a section refuses (a --weights file that is not there, ...)
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:  # one line, as the other commands; --json is not written
        how, status = stopped_by(stop)
        print(f"{PROG}: {how}", file=sys.stderr)
        return status
    derived(results)
    results["meta"]["load_average_end"] = load_average()
    print_table(results, profile.models, profile.sizes)
    if args.json:
        try:
            write_text(args.json, json.dumps(results, indent=1))
        except OSError as err:  # a disk that refuses only at the end (full, /proc, a folder removed meanwhile)
            print(f"{PROG}: error: {cannot_write(err, args.json)} (the table above holds the figures)",
                  file=sys.stderr)
            return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
