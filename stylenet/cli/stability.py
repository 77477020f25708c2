"""``stylenet-stability``: how much does a style network flicker? E_warp on sequences of known motion.

Each model stylises synthetic clips made from held-out photos (default: the demo data's): a pan, a
zoom, a rotation, a smooth local deformation, and a still camera with sensor noise (see
:mod:`stylenet.stability`). The table gives E_warp per sequence (grey levels, 0-255: output t against
output t-1 warped by the true motion, over the pixels that stay visible), their mean, and the still
camera's flicker; the first row is the input frames' own (the measure's floor):

    stylenet-stability -m frame_by_frame.safetensors -m temporal.safetensors --out stability.md

``--video clip.mp4`` adds, for a real clip whose motion is unknown, the output's mean change per
frame against the input's and their ratio (no flow: not an E_warp); ``--strip picture.png`` draws the
input and each model's frames of a rotation and their warping error. A bad photo, model or clip is one
line on stderr and exit status 1; the others are still measured. ``--out`` and ``--strip`` are checked
before anything is measured. Ctrl-C (exit 130) and SIGTERM (143) stop it with one line and no table.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stylenet.cli import ErrorReporter, measuring_parser, refuse_models_as_inputs, run_reporting_errors
from stylenet.errors import StylenetError, cannot_write, check_seed, describe

if TYPE_CHECKING:
    from stylenet.inference import InferenceModel
    from stylenet.stability import Clip

PROG = "stylenet-stability"


def build_parser() -> argparse.ArgumentParser:
    parser = measuring_parser(PROG, __doc__)
    parser.add_argument("-m", "--model", action="append", dest="models", required=True, metavar="MODEL",
                        help="a style model file; repeat for several")
    parser.add_argument("--size", type=int, default=256, help="side of the square frames, px (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=8, help="frames per sequence (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the deformation and noise (default: 0)")
    parser.add_argument("--video", action="append", default=[], metavar="CLIP",
                        help="also measure the output's change on this real clip (repeatable)")
    parser.add_argument("--max-frames", type=int, default=120,
                        help="frames of each --video clip to use (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "fp16"),
                        help="inference precision (default: fp32, the reference)")
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--strip", metavar="IMAGE",
                        help="also write a before/after picture: for the input and each model, three frames of "
                             "the first photo's rotation sequence and 4x its warping error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0, 1 if anything failed, 2 bad usage, 130 Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # photos before, between and after the options
    refuse_models_as_inputs(parser, args.photos, args.models)
    if args.size < 16 or args.frames < 2 or args.max_frames < 2:
        parser.error("--size must be >= 16, --frames and --max-frames >= 2")
    from stylenet.image import DEFAULT_MAX_PIXELS
    from stylenet.stability import sequence_pixels

    if max(args.size, args.frames) > DEFAULT_MAX_PIXELS or sequence_pixels(args.size, args.frames) > DEFAULT_MAX_PIXELS:
        parser.error(f"--frames {args.frames} of --size {args.size} px would hold over "
                     f"{DEFAULT_MAX_PIXELS // 10**6} megapixels per photo: fewer frames or a smaller size")
    from stylenet.devices import resolve_device

    try:
        check_seed(args.seed, "--seed")
        resolve_device(args.device)  # once, not as each model file's fault after the clips are made
    except StylenetError as err:
        parser.error(str(err))
    return run_reporting_errors(PROG, lambda error: write_table(args, error))


def write_table(args: argparse.Namespace, error: ErrorReporter) -> None:
    """Check where the results go, measure, print the table and write it to ``--out``."""
    from stylenet.atomic import write_text

    check_outputs(args)
    table = measure_models(args, error)
    print(table, end="")
    if args.out:
        try:
            write_text(args.out, table)
        except OSError as err:  # the disk, after the checks: full, read-only, ...
            error(cannot_write(err, args.out))


def check_outputs(args: argparse.Namespace) -> None:
    """``--out`` and ``--strip`` refused before minutes of measuring, not after."""
    from stylenet.atomic import unwritable
    from stylenet.cli import check_text_output
    from stylenet.image import check_output_path

    for option, output in (("--out", args.out), ("--strip", args.strip)):
        reason = unwritable(output) if output else None
        if reason is not None:
            raise StylenetError(f"cannot write {option} {output!r}: {reason}")
    if args.strip:
        check_output_path(args.strip)
    if args.out and args.strip and Path(args.out).resolve() == Path(args.strip).resolve():
        raise StylenetError(f"--out and --strip both name {args.out!r}: the table would replace the picture")
    inputs = {Path(path).resolve(): path for path in [*args.models, *args.photos, *args.video]
              if not str(path).startswith("demo:")}
    for option, output in (("--out", args.out), ("--strip", args.strip)):
        source = inputs.get(Path(output).resolve()) if output else None
        if source is not None:
            raise StylenetError(f"{option} {output!r} is an input ({source!r}): refusing to overwrite it")
    if args.out:
        check_text_output("--out", args.out, "the table (text): give a .md file (--strip writes the picture)")


def _sequences(args: argparse.Namespace, error: ErrorReporter) -> list[Clip]:
    """The synthetic clips of every photo that can be read (one that cannot is reported, and the
    others are still measured)."""
    from stylenet.image import load_rgb, resolve_image_path
    from stylenet.stability import KINDS, make_sequence, photo_for_sequences

    if args.photos:
        photos = list(args.photos)
    else:
        from stylenet.cli.train import config_dir
        from stylenet.report import demo_held_out

        photos = demo_held_out(config_dir())
    sequences = []
    for index, spec in enumerate(photos):
        try:
            photo = photo_for_sequences(load_rgb(resolve_image_path(spec)), args.size, args.frames)
        except Exception as err:  # this photo only
            error(describe(err, str(spec)))
            continue
        sequences += [make_sequence(photo, kind, args.size, args.frames, seed=args.seed + index) for kind in KINDS]
    if not sequences:
        raise StylenetError("no photo could be read: nothing to measure")
    return sequences


def measure_models(args: argparse.Namespace, error: ErrorReporter) -> str:
    """The markdown of every measure (a model or clip that fails is reported and left out), and the
    ``--strip`` picture."""
    import torch

    from stylenet.cli.stylize import load_inference_model
    from stylenet.stability import markdown_table, measure

    sequences = _sequences(args, error)
    rows = {"input frames": measure(None, sequences)}
    pictured = next(clip for clip in sequences if clip.kind == "rotation")
    outputs = {"input": pictured.frames[:3]}
    clips: list[str] = []
    reported: set[str] = set()  # a clip's error once, not again for every model that meets it
    names = Counter(Path(path).name for path in set(args.models))  # files of one name: a file given twice is one
    for index, path in enumerate(args.models):
        try:
            loaded = load_inference_model(path, "style", {"device": args.device, "precision": args.precision})
            models = loaded.selected()  # a model of several styles: a row per style
        except Exception as err:  # this model only
            error(describe(err, path))
            continue
        for model in models:
            name = row_name(path, model.name if loaded.multi else None, names[Path(path).name] > 1,
                            args.models[:index].count(path))
            try:
                rows[name] = measure(model.stylize_frames, sequences)
                outputs[name] = torch.stack(list(model.stylize_frames(list(outputs["input"]))))
            except Exception as err:  # this model only
                error(describe(err, path))
                continue
            for clip in args.video:
                try:
                    clips.append(_clip_line(clip, name, model, args.max_frames))
                except Exception as err:  # this clip only
                    message = describe(err, clip)
                    if message not in reported:
                        reported.add(message)
                        error(message)
    if len(rows) == 1:  # the input frames alone: an earlier table or strip is not replaced by nothing
        raise StylenetError("no model could be measured: nothing written")
    if args.strip:
        from stylenet.image import save_image
        from stylenet.stability import strip

        try:
            save_image(args.strip, strip(pictured, outputs))
        except Exception as err:  # the picture only: the table is still printed and written
            error(describe(err, args.strip))
    lines = [f"E_warp and flicker (grey levels, 0-255) on {len(sequences) // 5} photo(s) x 5 sequences of "
             f"{args.frames} frames, {args.size} px:", "", markdown_table(rows)]
    if clips:
        lines += ["Real clips (no flow: mean change per frame, output vs input, and their ratio):", "", *clips, ""]
    return "\n".join(lines)


def row_name(path: str, style: str | None, shared_name: bool, earlier: int) -> str:
    """A model's row: its file name (``(style)`` added for each style of a model of several), the
    whole path as given where several files share a name (``outputs/<name>/<time>/<name>.safetensors``),
    and ``#2``, ``#3`` ... where the very same path was given ``earlier`` times before."""
    name = f"{path if shared_name else Path(path).name}{f' ({style})' if style else ''}"
    return f"{name} #{earlier + 1}" if earlier else name


def _clip_line(clip: str, name: str, model: InferenceModel, max_frames: int) -> str:
    """One real clip's change per frame through ``model`` (:func:`stylenet.stability.clip_change`)."""
    from stylenet.stability import clip_change
    from stylenet.video.io import iter_video_frames

    change = clip_change(iter_video_frames(clip, limit=max_frames), model.stylize_frames)
    if change["frames"] < 2:  # a still image (which FFmpeg reads as a clip of one frame), or a clip of one
        raise StylenetError(f"{clip!r} has {int(change['frames'])} frame(s): a change per frame needs at least 2")
    ratio = f"ratio {change['ratio']:.2f}" if change["input"] else "no ratio: the input does not change"
    return (f"- {clip}, {name}: {int(change['frames'])} frames, output {change['output']:.2f} vs input "
            f"{change['input']:.2f} grey levels per frame ({ratio})")


if __name__ == "__main__":
    sys.exit(main())
