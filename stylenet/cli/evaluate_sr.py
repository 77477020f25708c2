"""``stylenet-evaluate-sr``: score super-resolution models against bicubic upsampling on HR images.

Follows the SR literature's protocol (Johnson et al. 2016, Sec. 4.2; :mod:`stylenet.metrics`): each
HR image (single files, or folders searched recursively: Set5, Set14 or BSD100 as distributed, their
LR copies such as ``LRbicx4/`` or ``*_LR.png``, other methods' outputs beside ``*_HR.png`` and other
factors' ``image_SRF_<n>/`` left out) is cropped to a multiple
of the factor, degraded to LR (Gaussian blur sigma 1.0, bicubic downsampling), upscaled by bicubic
interpolation and by every ``--model``, and scored with PSNR and SSIM on the BT.601 Y channel with
``factor`` pixels shaved off each border. Prints a markdown table (per image and mean) and writes
it as ``--out table.md`` and/or ``--out table.csv``.

    stylenet-evaluate-sr Set5/ --model sr_x4.safetensors --model sr_x4_pixel.safetensors --out set5.md
    stylenet-evaluate-sr Set14/ --factor 4            # bicubic only

Imports neither Lightning nor Hydra: it starts fast and runs where only inference is installed. On the
CPU it switches on :func:`stylenet.fastpath.reuse_freed_memory` for its own process.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from stylenet.cli import Terminated, allow_pixels, sigterm_as_terminated, stopped_by
from stylenet.errors import StylenetError
from stylenet.markdown import table_row

PROG = "stylenet-evaluate-sr"
OUT_SUFFIXES = (".md", ".csv")


@dataclass
class Scored:
    """One image's scores: method -> (PSNR in dB, SSIM); ``size`` (H, W) is None for the mean."""

    name: str
    size: tuple[int, int] | None
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)


def method_names(models: list[str]) -> list[str]:
    """Column names: ``bicubic`` then each model file's stem (its path where stems repeat or where
    the stem is ``bicubic``: every column keeps its own scores)."""
    stems = [Path(m).stem for m in models]
    names = [s if stems.count(s) == 1 and s != "bicubic" else m for s, m in zip(stems, models, strict=True)]
    real = [os.path.realpath(m) for m in models]  # one file under two spellings (a link, ./) is one column
    repeated = next((m for m, r in zip(models, real, strict=True) if real.count(r) > 1), None)
    if repeated:
        raise StylenetError(f"--model {repeated!r} is given twice")
    return ["bicubic", *names]


def with_mean(rows: list[Scored], methods: list[str]) -> list[Scored]:
    """The rows and a last ``mean`` row: mean PSNR and mean SSIM over images (per-image PSNR
    averaged, as SR tables report them)."""
    mean = {m: (sum(r.scores[m][0] for r in rows) / len(rows), sum(r.scores[m][1] for r in rows) / len(rows))
            for m in methods}
    return [*rows, Scored("mean", None, mean)]


def markdown_table(rows: list[Scored], methods: list[str], factor: int) -> str:
    """Per-image rows and the mean, ``PSNR / SSIM`` per method."""
    lines = [f"x{factor}, PSNR (dB) / SSIM on Y (BT.601), {factor} px border shaved, {len(rows)} image(s)",
             "", table_row(["image", "HR size", *methods]), "|---|---|" + "---|" * len(methods)]
    for row in with_mean(rows, methods):
        name, size = (row.name, f"{row.size[1]}x{row.size[0]}") if row.size else (f"**{row.name}**", "")
        cells = [f"{row.scores[m][0]:.2f} / {row.scores[m][1]:.4f}" for m in methods]
        lines.append(table_row([name, size, *cells]))
    return "\n".join(lines) + "\n"


def csv_table(rows: list[Scored], methods: list[str]) -> str:
    """One row per image and a final ``mean`` row; full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "height", "width", *(f"{m}_{k}" for m in methods for k in ("psnr", "ssim"))])
    for row in with_mean(rows, methods):
        size = row.size or ("", "")
        writer.writerow([row.name, *size, *(f"{value:.6f}" for m in methods for value in row.scores[m])])
    return buffer.getvalue()


#: Low-resolution copies that benchmark folders ship beside their HR images (BasicSR's ``LRbicx4/``,
#: SelfExSR's ``*_LR.png``): this protocol makes its own LR images, so these are never scored as HR.
#: ``LR`` as a word of a folder's name (``LRbicx4``, ``LR_bicubic``, ``DIV2K_valid_LR_bicubic``), upper case
#: so that ``LRGB/`` or ``lroom/`` stay HR, and of a file's stem at its end (``img_001_SRF_4_LR``).
LR_FOLDER = re.compile(r"(?:^|.*[_-])LR(?:bic.*|[_-].*)?")
LR_STEM = re.compile(r".*[_-]LR")
#: SelfExSR's layout (``image_SRF_4/img_001_SRF_4_HR.png`` beside ``..._LR``, ``..._bicubic``, ``..._SRCNN``,
#: ...: other methods' outputs) holds one folder per factor, each with its own copy of the HR image.
HR_STEM = re.compile(r".*[_-]HR")
FACTOR_FOLDER = re.compile(r"(?:.*[_-])?SRF[_-]?(\d+)")
#: BasicSR's layout (``Set5/GTmod12/`` beside ``Set5/original/``, ``LRbicx4/``, ...): the HR images twice,
#: cropped to a multiple of 12 and as published.
GT_FOLDER = re.compile(r"GTmod(\d+)|original")


def copy_family(folder: str) -> str | None:
    """``SRF`` for SelfExSR's per-factor folders, ``GT`` for BasicSR's copies, None for any other folder."""
    return "SRF" if FACTOR_FOLDER.fullmatch(folder) else "GT" if GT_FOLDER.fullmatch(folder) else None


def scored_copies(relatives: list[Path], factor: int) -> dict[tuple[tuple[str, ...], str], str]:
    """For each folder holding copies of the same HR images, keyed by its path and the layout's family, the
    copy scored: of SelfExSR's per-factor folders (``image_SRF_<n>/``) the one of ``factor``, else the
    smallest (SelfExSR ships no x8; each copy is cropped to a multiple of ``factor`` anyway); of BasicSR's
    ``GTmod<n>/`` and ``original/``, a ``GTmod<n>`` whose n is a multiple of ``factor`` (cropped as this
    protocol crops), else ``original``."""
    found: dict[tuple[tuple[str, ...], str], set[str]] = {}
    for relative in relatives:
        for depth, part in enumerate(relative.parts[:-1]):
            if family := copy_family(part):
                found.setdefault((relative.parts[:depth], family), set()).add(part)
    return {place: chosen_copy(names, factor) for place, names in found.items()}


def chosen_copy(names: set[str], factor: int) -> str:
    """The folder :func:`scored_copies` scores among ``names``, copies of one set in one layout."""
    by_factor = {int(match.group(1)): name for name in names if (match := FACTOR_FOLDER.fullmatch(name))}
    if by_factor:
        return by_factor.get(factor, by_factor[min(by_factor)])
    cropped = sorted(name for name in names if (match := GT_FOLDER.fullmatch(name)) and match.group(1)
                     and int(match.group(1)) % factor == 0)
    return cropped[0] if cropped else "original" if "original" in names else min(names)


def is_other_file(relative: Path, copies: dict[tuple[tuple[str, ...], str], str], folder_has_hr: bool) -> bool:
    """Whether a file found in a folder is not one of its HR images: one of the folder's LR copies
    (see ``LR_FOLDER``), a file beside ``*_HR`` ones that is not one of them (another method's
    output), or in a copy of the set other than the scored one (``image_SRF_2/`` at x4, ``original/``
    beside ``GTmod12/``: see :func:`scored_copies`)."""
    folders = relative.parts[:-1]
    other_copy = any((family := copy_family(part)) and part != copies[(folders[:depth], family)]
                     for depth, part in enumerate(folders))
    return (bool(LR_STEM.fullmatch(relative.stem)) or any(LR_FOLDER.fullmatch(part) for part in folders)
            or other_copy or (folder_has_hr and not HR_STEM.fullmatch(relative.stem)))


def list_inputs(inputs: list[str], factor: int) -> tuple[list[tuple[str, Path]], list[str]]:
    """(name for the table, path) of every HR image at ``factor``: relative to its folder, or the file's
    name; and one error per input that is neither an image nor a folder. What else benchmark folders
    hold is left out (:func:`is_other_file`); a file named on the command line is always scored."""
    from stylenet.image import ImageError, list_images

    found, left_out, errors = [], [], []
    for spec in map(Path, inputs):
        try:
            paths = list_images(spec)
        except ImageError as err:
            errors.append(str(err))
            continue
        with_hr = {p.parent for p in paths if HR_STEM.fullmatch(p.stem)}
        copies = scored_copies([p.relative_to(spec) for p in paths], factor) if spec.is_dir() else {}
        for path in paths:
            if not spec.is_dir():
                found.append((path.name, path))
            elif is_other_file(path.relative_to(spec), copies, path.parent in with_hr):
                left_out.append(path)
            else:
                found.append((str(path.relative_to(spec)), path))
    if left_out:
        print(f"{PROG}: left out {len(left_out)} files that are no HR image at x{factor} (LR copies, other "
              f"methods' outputs, other copies of the set), such as {str(left_out[0])!r}", file=sys.stderr)
    if not found:
        raise StylenetError("; ".join(errors) if errors else f"no HR images in {', '.join(inputs)}")
    seen: set[Path] = set()
    unique = [(name, path) for name, path in found if not (path.resolve() in seen or seen.add(path.resolve()))]
    names = Counter(name for name, _ in unique)  # one row per file, and no two rows of one name
    return [(str(path) if names[name] > 1 else name, path) for name, path in unique], errors


def evaluate(inputs: list[str], models: list[str], factor: int | None, device: str,
             max_pixels: int | None) -> tuple[list[Scored], list[str], int, list[str]]:
    """Score every image; returns the rows, the method names, the factor and per-image errors."""
    import torch

    from stylenet.image import DEFAULT_MAX_PIXELS, ImageError, load_rgb
    from stylenet.inference import InferenceModel
    from stylenet.metrics import SSIM_RADIUS, degrade, modcrop, sr_scores, upscale_bicubic

    # scores are the model's own: fp32, not the bf16 rounding inference defaults to where native
    nets = [InferenceModel.from_file(path, task="sr", device=device, precision="fp32") for path in models]
    if factor is not None and factor < 2:
        raise StylenetError(f"--factor must be 2 or more, got {factor}")
    factors = {int(net.scale) for net in nets} | ({factor} if factor else set())
    if len(factors) != 1:
        raise StylenetError("--factor is required without --model" if not factors else
                            f"the models and --factor disagree on the factor: {sorted(factors)}")
    factor = factors.pop()
    methods = method_names(models)
    found, errors = list_inputs(inputs, factor)
    rows = []
    for name, path in found:
        try:
            image = load_rgb(path, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
        except ImageError as err:
            errors.append(str(err))
            continue
        hr = modcrop(image, factor)
        if min(hr.shape[-2:]) - 2 * factor < 2 * SSIM_RADIUS + 1:
            smallest = -(-(2 * factor + 2 * SSIM_RADIUS + 1) // factor) * factor  # whole LR pixels
            errors.append(f"{path}: {image.shape[2]}x{image.shape[1]} is too small to score at x{factor} "
                          f"(needs {smallest} px a side)")
            continue
        lr = degrade(hr.unsqueeze(0), factor)
        outputs = [upscale_bicubic(lr, factor)[0], *(net.transform(lr[0]) for net in nets)]
        row = Scored(name, tuple(hr.shape[-2:]))
        for method, output in zip(methods, outputs, strict=True):
            scores = sr_scores(output.unsqueeze(0).to(torch.float32), hr.unsqueeze(0), border=factor)
            row.scores[method] = (scores["psnr"].item(), scores["ssim"].item())
        rows.append(row)
    return rows, methods, factor, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="HR images or folders of them (searched recursively)")
    parser.add_argument("--model", action="append", default=[], help="an SR model file (stylenet-export); "
                        "repeat to compare several")
    parser.add_argument("--factor", type=int, help="upscaling factor (default: the models'; required "
                        "without --model)")
    parser.add_argument("--out", action="append", default=[], help="write the table to FILE.md (markdown) or "
                        "FILE.csv; repeatable")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, then CPU), cpu, cuda, cuda:N")
    parser.add_argument("--max-pixels", type=int, help="refuse larger images (decompression bombs); "
                        "default 120 Mpx")
    args = parser.parse_args(argv)
    if args.max_pixels is not None and args.max_pixels < 1:
        parser.error(f"--max-pixels must be at least 1, got {args.max_pixels}")
    allow_pixels(args.max_pixels)
    bad_out = [out for out in args.out if Path(out).suffix.lower() not in OUT_SUFFIXES]
    if bad_out:
        parser.error(f"--out must end in {' or '.join(OUT_SUFFIXES)}: {bad_out[0]}")
    from stylenet.atomic import unwritable, write_text

    for out in args.out:  # refused before the scoring, not after
        reason = unwritable(out)
        if reason:
            parser.error(f"cannot write --out {out!r}: {reason}")
    try:  # a stop while torch loads or a large image is scored ends as the other commands' do: one line
        with sigterm_as_terminated():
            from stylenet.devices import resolve_device
            from stylenet.fastpath import reuse_freed_memory

            # the device is checked with or without a model: a typo is not silently ignored
            if resolve_device(args.device).type == "cpu" and args.model:  # this process is ours (see fastpath)
                reuse_freed_memory()
            rows, methods, factor, errors = evaluate(args.inputs, args.model, args.factor, args.device,
                                                     args.max_pixels)
    except StylenetError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:  # the table is written at the end: none is
        how, status = stopped_by(stop)
        print(f"{PROG}: {how}; no table written", file=sys.stderr)
        return status
    for error in errors:
        print(f"{PROG}: error: {error}", file=sys.stderr)
    if not rows:
        print(f"{PROG}: error: no image could be scored", file=sys.stderr)
        return 2
    table = markdown_table(rows, methods, factor)
    print(table, end="")
    for out in map(Path, args.out):
        write_text(out, table if out.suffix.lower() == ".md" else csv_table(rows, methods))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
