"""``stylenet-stylize``: stylize photos with one or more per-style model files.

Any file, folder or glob; any size (beyond --max-memory, layer by layer: the one-pass result in
bounded memory; or tiled with consistent InstanceNorm statistics, with --tile); any
image mode (EXIF rotation, alpha, 16-bit, greyscale, ICC profiles); one output per model per image.
Each ``-m`` takes one model file; repeat it for several styles:

    stylenet-stylize -m candy.safetensors photo.jpg -o photo_candy.png
    stylenet-stylize -m candy.safetensors -m mosaic.safetensors photos/ -o out/

Every input and model is isolated: whatever goes wrong with one (a bad file, a decoder bug, an odd
size, a full disk) is reported on one line naming it, and the others are still processed; the exit
status is 1 if anything failed, 130 on Ctrl-C and 143 on SIGTERM (both stop at once and leave no
temporary file). Imports neither Hydra nor Lightning, so it starts fast. On the CPU it switches on
:func:`stylenet.fastpath.reuse_freed_memory` for its own process (the library never does).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import itertools
import math
import os
import re
import shlex
import string
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from stylenet.cli import Terminated, allow_pixels, refuse_models_as_inputs, sigterm_as_terminated, stopped_by
from stylenet.errors import StylenetError, describe, one_line

if TYPE_CHECKING:
    from stylenet.image import LoadedImage
    from stylenet.inference import Controls, InferenceModel

DEFAULT_NAME = "{stem}_{style}.png"
#: JPEG/WebP quality of written images (``--quality``); videos are encoded at a constant quality of their own
#: (:func:`stylenet.video.io._encoder_settings`).
DEFAULT_QUALITY = 95
#: What ``--name`` may hold between braces.
NAME_FIELDS = {"stem", "ext", "style", "model"}
#: ``--model`` help per task (``stylenet-stylize``: style, ``stylenet-upscale``: sr).
MODEL_HELP = {"style": "a style model file (.safetensors, a stylenet-train .ckpt, or a pytorch/examples "
                       ".pth/.model); repeat -m for several styles: -m a.safetensors -m b.safetensors",
              "sr": "a super-resolution model file (.safetensors or a stylenet-train .ckpt); repeat -m "
                    "for several: -m sr_x4.safetensors -m sr_x8.safetensors"}
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(text: str) -> int:
    """``"2GB"``, ``"512MiB"``, ``"1.5e9"`` -> bytes (for ``--max-memory``)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    unit = match and _SIZE_UNITS.get(match[2].lower())
    try:
        value = float(match[1]) * unit if match and unit else -1.0
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or int(value) < 1:  # under one byte (0.5) is no budget either
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (examples: 2GB, 512MiB)")
    return int(value)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


_fraction.__name__ = "float"  # argparse names the type in its messages


def _between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:  # argparse's choices= would list every allowed value
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {text}")
        return value
    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


def _positive(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        value = kind(text)
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):  # nan > 0 is False
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _blend(text: str) -> dict[str, float]:
    from stylenet.styles import parse_blend

    try:
        return parse_blend(text)
    except StylenetError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser(prog: str = "stylenet-stylize", description: str = __doc__,
                 task: str = "style") -> argparse.ArgumentParser:
    """The options of ``stylenet-stylize`` (``task="style"``) and ``stylenet-upscale`` (``"sr"``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or globs")
    # One path per -m, repeatable: a -m that took several values would swallow the images after it
    # (`-m a.safetensors photo.jpg` must work as written).
    parser.add_argument("-m", "--model", required=True, action="append", dest="models", metavar="MODEL",
                        help=MODEL_HELP[task])
    parser.add_argument("-o", "--output", required=True,
                        help="output file (one image, one model; format from the extension) or folder (a trailing / "
                             "makes it one: res.v2/)")
    parser.add_argument("--name", default=DEFAULT_NAME,
                        help="output file name pattern inside the output folder; {stem} and {ext} (the input's "
                             "name and extension), {style} and {model} (the model file's name) are replaced, "
                             "the extension picks the format (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="auto (default): bf16 where the CPU or GPU runs it natively (within 40 dB "
                             "PSNR of fp32), else fp32")
    parser.add_argument("--strength", type=_fraction, default=1.0,
                        help="0 keeps the photo, 1 is the full style (default: 1)")
    parser.add_argument("--preserve-color", action="store_true",
                        help="keep the photo's colours, transfer only luminance")
    parser.add_argument("--keep-gray", action="store_true",
                        help="write greyscale inputs as grey" + (" (always, for upscaling)" if task == "sr" else ""))
    parser.add_argument("--max-size", type=_positive(int),
                        help="shrink so that the long side is at most this")
    parser.add_argument("--scale", type=_positive(float), default=1.0,
                        help="resize inputs by this factor first")
    parser.add_argument("--tile", type=_positive(int),
                        help="process in tiles of this many pixels per side (default: none; images beyond "
                             "--max-memory run layer by layer, exactly, when the network allows, else in tiles)")
    parser.add_argument("--tile-overlap", type=int, default=None,
                        help="overlap between neighbouring tiles in pixels (default: 64; less can show the "
                             "tiles' borders)")
    parser.add_argument("--exact-stats", action="store_true",
                        help="for tiled images that exceed --max-memory: compute the InstanceNorm statistics "
                             "exactly, layer by layer over all tiles (about 6x the time), instead of from a "
                             "thumbnail")
    parser.add_argument("--max-memory", type=parse_bytes,
                        help="memory one forward pass may use, e.g. 2GB; larger images run layer by layer "
                             "(style networks; about two layers' activations, whatever this says) or in tiles "
                             "(default: 80%% of free GPU memory, 0.8 GB on the CPU)")
    parser.add_argument("--max-pixels", type=_positive(int), metavar="PIXELS",
                        help="largest input image, in pixels: a larger one is refused before it is decoded, as a "
                             "possible decompression bomb (default: 120000000)")
    parser.add_argument("--quality", type=_between(1, 100), metavar="1..100",
                        help=f"JPEG/WebP quality of images (default: {DEFAULT_QUALITY})")
    if task == "style":
        parser.add_argument("--style", action="append", dest="styles", metavar="NAME",
                            help="for a model of several styles: this style only (repeat for several; default: "
                                 "one output per style, named {stem}_{style})")
        parser.add_argument("--blend", action="append", dest="blends", type=_blend, metavar="A=W,B=W",
                            help="for a model of several styles: one output of these styles' norm parameters "
                                 "mixed by the weights, e.g. a=0.7,b=0.3 (repeatable)")
        parser.add_argument("--upscale", metavar="SR_MODEL",
                            help="then upscale with this super-resolution model (see stylenet-upscale): the "
                                 "style network runs at the --max-size/--scale working size, so the stroke "
                                 "scale does not depend on the output size")
    parser.add_argument("--match-histogram", action="store_true",
                        help="match each channel's histogram of the upscaled output to the super-resolution "
                             "network's input (the paper's post-processing"
                             + ("; needs --upscale)" if task == "style" else ")"))
    return parser


@dataclass
class Pipeline:
    """What one job runs: a model, then optionally a super-resolution model (``--upscale``: the
    style network at the working size, the SR network after it), then optionally the
    post-processing of Johnson et al. 2016, Sec. 4.2: the histogram of the upscaled output matched,
    channel by channel, to the image the SR network was given."""

    model: InferenceModel
    upscaler: InferenceModel | None = None
    match_histogram: bool = False

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def scale(self) -> int:
        """Output side / input side, through both networks."""
        return self.model.scale * (self.upscaler.scale if self.upscaler is not None else 1)

    @property
    def file_stem(self) -> str:
        """The model file's name without its suffix (``--name``'s ``{model}``)."""
        return Path(self.model.source or "model").stem

    def process(self, image: LoadedImage, controls: Controls, *, size: tuple[int, int] | None,
                quantize: bool, **options: Any) -> LoadedImage:
        """``image`` through the networks in turn (``options``: :meth:`InferenceModel.process`'s)."""
        from stylenet.image import match_histogram
        from stylenet.inference.memory import check_image_memory

        if size is not None and self.upscaler is not None:  # the upscaler's output, before the style pass
            check_image_memory(*size, self.scale)
        low_resolution = image
        result = self.model.process(image, controls, size=size, quantize=quantize and self.upscaler is None,
                                    **options)
        if self.upscaler is not None:
            low_resolution = result
            result = self.upscaler.process(result, quantize=quantize, **options)
        if self.match_histogram:
            result = dataclasses.replace(result, rgb=match_histogram(result.rgb, low_resolution.rgb))
        return result


@dataclass
class Job:
    """One output: an input image through one model."""

    source: Path
    target: Path
    model: Pipeline


class Report:
    """Counts outputs and errors, prints each error as one line, and a progress line on a TTY."""

    def __init__(self, stream: TextIO, prog: str = "stylenet-stylize") -> None:
        self.stream, self.prog = stream, prog
        self.done = 0
        self.failed = 0
        self.seconds = 0.0
        self.megapixels = 0.0
        self.tty = stream.isatty()
        self._line = ""

    def error(self, message: str) -> None:
        """Count a failure and print it as ONE line (newlines inside ``message`` become spaces)."""
        self.failed += 1
        self.progress("")
        print(f"{self.prog}: error: {one_line(message)}", file=self.stream)

    def note(self, message: str) -> None:
        """Print ONE line that is not a failure."""
        self.progress("")
        print(f"{self.prog}: note: {one_line(message)}", file=self.stream)

    def progress(self, text: str) -> None:
        if self.tty and (text or self._line):
            padded = f"{text[:120]:<{len(self._line)}}"
            print(f"\r{padded}", end="" if text else "\r", file=self.stream, flush=True)
            self._line = text

    def summary(self) -> str:
        rate = (f"{self.seconds / self.megapixels:.2f} s/megapixel" if self.megapixels
                else "no pixels processed")
        return f"{self.done} done, {self.failed} failed, {rate}"


def collect_inputs(specs: list[str], report: Report, output: Path) -> list[tuple[Path, Path]]:
    """``(file, folder of its output relative to -o)`` per input image, in order, without repeats.

    Folders are searched recursively and keep their sub-folder layout in the output (two
    ``img.png`` in different sub-folders must not collide); files and glob matches go flat. Files
    named explicitly are tried whatever their extension: the decoder, not the name, decides.
    ``output`` (``-o``) is never searched: a second run would take the first one's outputs for
    photos (``photo_candy_candy.png``), so a folder that is ``-o`` itself is refused, and ``-o``
    inside a folder is left out of it.
    """
    found: list[tuple[Path, Path]] = []
    for spec in specs:
        try:
            found += _expand(spec, report, output)
        except Exception as err:  # an unreadable folder, a permission error: this spec only
            report.error(describe(err, spec))
    seen: set[Path] = set()
    unique = []
    for image, folder in found:
        if image.resolve() not in seen:
            seen.add(image.resolve())
            unique.append((image, folder))
    return unique


def _expand(spec: str, report: Report, output: Path) -> list[tuple[Path, Path]]:
    """The images one input argument stands for (see :func:`collect_inputs`); a folder's videos are
    named in a note, not stylized (minutes each: a video is named as a file or a glob)."""
    from stylenet.image import IMAGE_EXTENSIONS, UNREAD_PHOTO_SUFFIXES, list_by_kind, unread_photos_note
    from stylenet.video.formats import VIDEO_SUFFIXES

    path = Path(spec)
    if path.is_dir():
        written = output.resolve()
        if written == path.resolve():
            raise StylenetError(f"folder {spec!r} is also -o: a second run would take this run's outputs for "
                                f"inputs; give -o a folder of its own, such as {str(path / 'out') + os.sep!r}")
        images, unread, videos = list_by_kind(path, IMAGE_EXTENSIONS, UNREAD_PHOTO_SUFFIXES, VIDEO_SUFFIXES)
        if written.is_relative_to(path.resolve()):  # -o inside the folder
            kept = [image for image in images if not image.resolve().is_relative_to(written)]
            if len(kept) < len(images):
                report.note(f"left out {len(images) - len(kept)} file(s) of folder {spec!r} under -o "
                            f"{str(output)!r}: outputs, not inputs")
            images = kept
        if unread:  # a phone's HEIC photos: named, not passed over in silence
            report.note(f"folder {spec!r} holds {unread_photos_note(unread)}")
        if videos:
            globs = " ".join(shlex.quote(os.path.join(glob.escape(str(path)), "**", f"*{suffix}"))  # as typed
                             for suffix in sorted({v.suffix for v in videos}))
            report.note(f"folder {spec!r} holds {len(videos)} video(s), which a folder does not stylize: name them "
                        f"as files or by a glob ({globs})")
        if not images:
            report.error(f"no images found in folder {spec!r}")
        return [(image, image.parent.relative_to(path)) for image in images]
    if path.exists():
        return [(path, Path())]
    if glob.has_magic(spec):
        matched = sorted(Path(match) for match in glob.glob(spec, recursive=True))
        matches = [match for match in matched if match.is_file()]
        # -o inside the folder the pattern searches ("photos/**/*.png -o photos/out/" run twice), as for a folder;
        # not -o that folder itself or one above it ('*.png' -o .): every match would be left out
        searched = Path(*itertools.takewhile(lambda part: not glob.has_magic(part), Path(spec).parts)).resolve()
        written = output.resolve()
        inside = written != searched and written.is_relative_to(searched)
        kept = [match for match in matches if not (inside and match.resolve().is_relative_to(written))]
        if len(kept) < len(matches):
            report.note(f"left out {len(matches) - len(kept)} file(s) matching {spec!r} under -o {str(output)!r}: "
                        "outputs, not inputs")
        folders = [match for match in matched if match.is_dir()]
        if not matches and folders:
            report.error(f"{spec!r} matches folders only ({len(folders)}, such as {str(folders[0])!r}): name them "
                         f"as inputs, or match their files ({shlex.quote(os.path.join(spec, '*'))})")
        elif not kept:
            report.error(f"no files match {spec!r}" + (f" outside -o {str(output)!r}" if matches else ""))
        return [(match, Path()) for match in kept]
    report.error(f"no such file or folder {spec!r}")
    return []


def model_name_part(stem: str) -> str:
    """A model file's name as part of an output's name; one line if it cannot be one (``..safetensors``)."""
    if stem in {"", ".", ".."}:
        raise StylenetError(f"model file name {stem!r} cannot be part of a file name ({{model}} in --name): "
                            "rename the file")
    return stem


def usable_style_names(models: list[Pipeline], report: Report) -> list[Pipeline]:
    """The models whose style name can be part of a file name (:func:`stylenet.styles.file_name_part`); each
    other one is reported once, naming its model file, which is what the user renames (a model file may
    come from anywhere: ``../x`` would write outside the output folder)."""
    from stylenet.styles import file_name_part

    usable = []
    for model in models:
        try:
            file_name_part(model.name)
        except StylenetError as err:
            report.error(f"model file {model.model.source!r}: {err}")
        else:
            usable.append(model)
    return usable


def collision_hint(first: Job, image: Path, model: Pipeline, name: str) -> str:
    """What tells apart two outputs that ``--name`` (``name``) gives one path: ``first``'s and that of
    ``image`` through ``model``."""
    if first.source != image:
        same_stem = first.source.stem == image.stem and first.source.suffix != image.suffix
        return "add {ext} to --name" if same_stem and "{ext" not in name else "use separate folders"
    if first.model.name != model.name and "{style" not in name:
        return "add {style} to --name"
    if first.model.file_stem != model.file_stem and "{model" not in name:
        return "add {model} to --name"
    if first.model.model.source == model.model.source:
        return "two choices of one model share this name (a style and a blend?): run one with its own -o folder"
    return "give each model its own -o folder"


def plan_jobs(inputs: list[tuple[Path, Path]], models: list[Pipeline], args: argparse.Namespace,
              report: Report) -> list[Job]:
    """Every (image, model) -> output path, validated BEFORE any computation: writable extension,
    never an input file, never the same output twice."""
    from stylenet.image import check_output_path
    from stylenet.video import is_video, video_target

    output = Path(args.output)
    try:
        is_dir, is_file = output.is_dir(), output.is_file()
    except OSError as err:  # a name too long for the filesystem, ...: pathlib re-raises what it does not expect
        raise StylenetError(f"cannot write -o {args.output!r}: {err.strerror or type(err).__name__}") from None
    as_file = not is_dir and bool(output.suffix) and not args.output.endswith(("/", os.sep))  # res.v2/
    if not as_file and is_file:
        raise StylenetError(f"-o {args.output!r} is a file, not a folder")
    if as_file and len(inputs) * len(models) > 1:
        files = len({model.model.source for model in models})
        runs = f"{files} model(s)" if files == len(models) else f"{files} model file(s), {len(models)} styles to run"
        raise StylenetError(f"-o {args.output!r} names one file but there are {len(inputs)} image(s) and {runs}; "
                            "give a folder" + (", or pick one style with --style"
                                               if len(inputs) == files == 1 < len(models) else ""))
    if not as_file:  # each style's name is part of its outputs' names: a bad one is the model file's to fix
        models = usable_style_names(models, report)
    sources = {image.resolve(): image for image, _ in inputs}
    targets: dict[Path, Job] = {}
    jobs = []
    for image, folder in inputs:
        for model in models:
            target = output
            try:
                if not as_file:
                    target = output / folder / args.name.format(
                        stem=image.stem, ext=image.suffix.lstrip("."), style=model.name,
                        model=model_name_part(model.file_stem) if "{model" in args.name else "")
                    if ".." in target.relative_to(output).parts:  # a {stem} of "..": an input named "...png"
                        raise StylenetError(f"--name {args.name!r} gives {image.name!r} an output outside -o")
                if is_video(image):  # a video's output: a video, by default with the input's suffix
                    target = video_target(image, target, in_folder=not as_file, named_suffix=bool(Path(
                        args.name.format(stem="", ext="", style="", model="")).suffix))
                else:
                    check_output_path(target)
                resolved = target.resolve()
            except Exception as err:  # this output only
                report.error(describe(err, target))
                continue
            if resolved in sources:
                report.error(f"refusing to overwrite input {str(sources[resolved])!r} with an output")
            elif resolved in targets:
                first = targets[resolved]
                by = (f"by {first.model.model.source!r} style {first.model.name!r} and {model.model.source!r} "
                      f"style {model.name!r}" if first.source == image
                      else f"from {str(first.source)!r} and {str(image)!r}")
                report.error(f"output {str(target)!r} would be written twice ({by}); "
                             f"{collision_hint(first, image, model, args.name)}")
            else:
                targets[resolved] = Job(image, target, model)
                jobs.append(targets[resolved])
    return jobs


def run_jobs(jobs: list[Job], args: argparse.Namespace, report: Report) -> None:
    """Decode each image once, run every model on it, write each output atomically."""
    by_source: dict[Path, list[Job]] = {}
    for job in jobs:
        by_source.setdefault(job.source, []).append(job)
    for index, (source, source_jobs) in enumerate(by_source.items(), start=1):
        # one function call per image, so that its pixels are freed before the next one is decoded
        run_source(source, source_jobs, f"[{index}/{len(by_source)}]", args, report)
    report.progress("")


def run_source(source: Path, jobs: list[Job], counter: str, args: argparse.Namespace, report: Report) -> None:
    """All outputs of one input image, each isolated from the others and from the other inputs.

    Any ``Exception`` (not only :class:`StylenetError`: a decoder bug, a RuntimeError from an odd
    size, an OSError from a full disk) fails this input or this output alone, as one line. Out of
    memory never reaches here before :meth:`InferenceModel.transform` has retried with smaller
    tiles. ``KeyboardInterrupt`` is no ``Exception``: Ctrl-C still stops the whole run at once.
    """
    from stylenet.image import (
        DEFAULT_MAX_PIXELS,
        check_output_size,
        compact,
        drops_transparency,
        load_image,
        save_image,
        target_size,
    )
    from stylenet.inference import DEFAULT_TILE_OVERLAP, Controls
    from stylenet.video import is_video

    if is_video(source):  # frames streamed through each model, by suffix (stylenet.video)
        from stylenet.video.jobs import run_video_jobs

        run_video_jobs(source, jobs, counter, args, report, describe)
        return
    try:
        image = load_image(source, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
        if image.frames > 1:  # an animation or a multi-page scan: said, not passed over
            report.note(f"{source.name} holds {image.frames} frames: only the first is stylized (a video file, "
                        ".mp4 or .mkv, has each of its frames stylized)")
        # held compactly while the models run: an 8-bit source as its uint8 levels (stylenet.image.compact)
        image = compact(image)
        size = target_size(*image.rgb.shape[-2:], scale=args.scale, max_size=args.max_size)
    except Exception as err:
        report.error(describe(err, source))
        return
    controls = Controls(args.strength, args.preserve_color)
    overlap = DEFAULT_TILE_OVERLAP if args.tile_overlap is None else args.tile_overlap
    for job in jobs:
        label = f"{counter} {source.name} -> {job.target.name}"

        def progress(done: int, total: int, label: str = label) -> None:
            report.progress(f"{label} (tile {done}/{total})" if total > 1 else label)

        report.progress(label)
        start = time.perf_counter()
        try:
            check_output_size(job.target, size[0] * job.model.scale, size[1] * job.model.scale)
            result = job.model.process(image, controls, size=size, keep_gray=args.keep_gray or None,  # None: SR's own
                                       quantize=True, tile=args.tile, tile_overlap=overlap,
                                       exact_statistics=args.exact_stats, progress=progress)
            save_image(job.target, result.rgb, alpha=result.alpha, icc_profile=result.icc_profile,
                       quality=args.quality or DEFAULT_QUALITY, gray=result.was_gray)
        except Exception as err:  # this output only; the next model and the next input go on
            report.error(describe(err, source))
            continue
        report.seconds += time.perf_counter() - start
        report.megapixels += result.rgb.shape[-1] * result.rgb.shape[-2] / 1e6
        report.done += 1
        if opaque_format := drops_transparency(job.target, result.alpha):
            report.note(f"{source.name}: its transparency is not in {job.target.name} ({opaque_format} holds none: "
                        "write .png or .webp to keep it)")


def load_inference_model(path: str, task: str, options: dict[str, Any]) -> InferenceModel:
    """:meth:`InferenceModel.from_file`, with any unexpected exception turned into a one-line
    :class:`StylenetError` naming the file, so that one broken model file fails alone."""
    from stylenet.inference import InferenceModel

    try:
        return InferenceModel.from_file(path, task=task, **options)
    except StylenetError:
        raise
    except Exception as err:
        raise StylenetError(describe(err, f"model file {path!r}")) from err


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 all done, 1 something failed, 2 bad usage, 130 Ctrl-C, 143 SIGTERM)."""
    return run_cli(argv, prog="stylenet-stylize", task="style", description=__doc__)


def run_cli(argv: list[str] | None, *, prog: str, task: str, description: str) -> int:
    """``stylenet-stylize`` (``task="style"``) or ``stylenet-upscale`` (``task="sr"``): the same
    inputs, outputs, tiling and error handling; each refuses the other task's model files."""
    parser = build_parser(prog, description, task)
    # intermixed: images may stand before, between and after the options (`a.jpg -m x.safetensors b.jpg`).
    # What follows `--` is inputs only (`-- -x.png`), taken apart here: the intermixed parsing of Python
    # 3.11 and 3.12 loses an input after `--`, so the parser sees a stand-in, replaced after.
    argv = sys.argv[1:] if argv is None else list(argv)
    after = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_intermixed_args([*argv[:after], "stand-in"] if after < len(argv) - 1 else argv)
    if after < len(argv) - 1:
        args.inputs[-1:] = argv[after + 1:]
    refuse_models_as_inputs(parser, args.inputs, args.models)
    real = [os.path.realpath(model) for model in args.models]  # (a link loop is for the model's own error)
    twice = next((model for index, model in enumerate(args.models) if real[index] in real[:index]), None)
    if twice is not None:  # the same outputs twice; --style and --blend choose among one file's styles
        parser.error(f"model file {twice!r} is given twice with -m")
    report = Report(sys.stderr, prog)
    if args.match_histogram and task == "style" and not args.upscale:
        parser.error("--match-histogram needs --upscale")
    try:
        parts = [(field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(args.name)
                 if field is not None]
        fields = {field for field, _, _ in parts}
        if not fields <= NAME_FIELDS:  # plain names: no attribute or item access ({stem.upper}, {style[0]})
            raise ValueError(f"got {{{sorted(fields - NAME_FIELDS)[0]}}}")
        dressed = next((field for field, spec, conversion in parts if spec or conversion), None)
        if dressed:  # {stem!r} quotes the name, {stem:>300} pads it with spaces
            raise ValueError(f"{{{dressed}}} takes no conversion or format")
        args.name.format(stem="x", ext="e", style="y", model="z")
    except (KeyError, IndexError, ValueError) as err:
        parser.error(f"--name {args.name!r}: only {{stem}}, {{ext}}, {{style}} and {{model}} can be used ({err})")
    if Path(args.name).is_absolute() or ".." in Path(args.name).parts:  # written where -o says, nowhere else
        parser.error(f"--name {args.name!r}: a name inside the output folder, not a path out of it")
    allow_pixels(args.max_pixels)
    try:  # from torch's import on: a stop ends as one line, whenever it comes
        with sigterm_as_terminated():  # a scheduler's stop: no half-written temporary file left behind
            from stylenet.devices import resolve_device
            from stylenet.fastpath import reuse_freed_memory
            from stylenet.inference import DEFAULT_TILE_OVERLAP, MIN_TILE

            if args.tile is not None and args.tile < MIN_TILE:
                parser.error(f"--tile must be at least {MIN_TILE}")
            if args.tile_overlap is not None and args.tile_overlap < 0:
                parser.error("--tile-overlap must be >= 0")
            if None not in (args.tile, args.tile_overlap) and args.tile_overlap > args.tile // 2:  # the tiler's most
                report.note(f"--tile-overlap {args.tile_overlap} is more than half of --tile {args.tile}: tiles "
                            f"overlap by {args.tile // 2} px at most")
            elif args.tile_overlap is not None and args.tile_overlap < DEFAULT_TILE_OVERLAP:  # allowed: a quick look
                report.note(f"--tile-overlap {args.tile_overlap} is below the default {DEFAULT_TILE_OVERLAP} px: "
                            "the tiles' borders can show as seams in tiled images")

            options = {"device": resolve_device(args.device), "precision": args.precision,
                       "max_memory": args.max_memory}
            if options["device"].type == "cpu":  # this process is ours: keep freed activations for reuse
                reuse_freed_memory()
            upscale = getattr(args, "upscale", None)
            upscaler = load_inference_model(upscale, "sr", options) if upscale else None
            inputs = collect_inputs(args.inputs, report, Path(args.output))
            models = []
            for path in args.models:
                try:
                    model = load_inference_model(path, task, options)
                    models += [Pipeline(style, upscaler, args.match_histogram)  # one per style of several
                               for style in model.selected(getattr(args, "styles", None),
                                                           getattr(args, "blends", None))]
                except Exception as err:  # this model only: the others still run
                    report.error(describe(err, path))
            run_jobs(plan_jobs(inputs, models, args, report), args, report)
    except StylenetError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        report.progress("")
        how, status = stopped_by(stop)
        print(f"{prog}: {how}; {report.summary()}", file=sys.stderr)
        return status
    print(report.summary())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
