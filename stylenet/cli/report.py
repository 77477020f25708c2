"""``stylenet-report``: does a trained style look like style transfer? Evidence anyone can rerun.

Stylizes held-out photos with each model (and, with ``--gatys``, the optimisation baseline on the
same objective), then writes into ``--out``: ``figure.png`` (one row per photo: photo | style |
Gatys | one column per model), ``report.md`` (the measures of :mod:`stylenet.quality` per photo and
method, each method's mean, and whether it meets the targets), ``report.json``, and every cell as a
PNG under ``images/``:

    stylenet-report --style demo:ihc -m outputs/demo/<time>/demo.safetensors --gatys --out report/

Photos default to the demo data module's held-out photos (never the style image). A bad photo or
model is reported on one line naming the file and the others are still processed; the exit status
is then 1. Ctrl-C (exit 130) and SIGTERM (143) stop it with one line; the table and figure of an
earlier report in ``--out`` are then left as they were.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stylenet.cli import ErrorReporter, measuring_parser, refuse_models_as_inputs, run_reporting_errors
from stylenet.errors import StylenetError, first_line
from stylenet.styles import file_sha256, style_records

if TYPE_CHECKING:
    from torch import nn

    from stylenet.modelfile import StoredModel

PROG = "stylenet-report"


def build_parser() -> argparse.ArgumentParser:
    parser = measuring_parser(PROG, __doc__)
    parser.add_argument("--style", required=True, help="the style image: a path or demo:<name>")
    parser.add_argument("-m", "--model", action="append", dest="models", default=[], metavar="MODEL",
                        help="a trained style model file (.safetensors, .ckpt, .pth); repeat for several")
    parser.add_argument("--gatys", action="store_true", help="add a Gatys column on the --loss-config objective")
    parser.add_argument("--gatys-iterations", type=int, default=300, help="L-BFGS iterations (default: %(default)s)")
    parser.add_argument("--loss-config", default="offline",
                        help="the Gatys objective: a configs/loss name or a YAML file (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="long side of every image, px (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--out", required=True, help="output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from stylenet.atomic import unwritable

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.models and not args.gatys:
        parser.error("nothing to compare: pass -m MODEL (repeatable) and/or --gatys")
    if args.size < 16 or args.gatys_iterations < 1:
        parser.error("--size must be >= 16 and --gatys-iterations >= 1")
    refuse_models_as_inputs(parser, args.photos, args.models)
    if not args.out.strip():  # '' is the current folder: its files would be replaced without a word
        parser.error("--out must name a folder, got ''")
    reason = unwritable(Path(args.out) / "report.md")  # refused now, not after the stylizing and Gatys
    if (Path(args.out) / "quality.json").exists():  # a training run's figure.png would be replaced
        reason = reason or "it is a training run's folder (its figure.png and quality.json): name another"
    if reason:
        parser.error(f"cannot write into --out {args.out!r}: {reason}")
    return run_reporting_errors(PROG, lambda error: report(args, error))


def report(args: argparse.Namespace, error: ErrorReporter) -> int:
    """Build the methods (a bad model file is reported and left out), run and write the report."""
    from stylenet.cli.train import config_dir
    from stylenet.image import load_rgb, resolve_image_path
    from stylenet.modelfile import read_model
    from stylenet.report import (
        demo_held_out,
        gatys_method,
        load_loss_config,
        network_method,
        run_report,
        unique_names,
        write_report,
    )
    from stylenet.styles import file_name_part

    style_picture = resolve_image_path(args.style)
    load_rgb(style_picture)  # unreadable: said as such, not as every model's "trained on another picture"
    methods = []
    if args.gatys:
        methods.append(gatys_method(load_loss_config(args.loss_config, config_dir()), iterations=args.gatys_iterations,
                                    device=args.device))
    columns, refused = [], []
    for path in args.models:
        try:
            stored = read_model(path, task="style")
            style, net = trained_on(path, stored, args.style)
            stem = Path(path).stem.strip(".") or "model"  # '..safetensors': no column folder '.' or '..'
            columns.append((stem if len(stored.styles) == 1 else f"{stem}_{file_name_part(style)}", net))
        except StylenetError as err:
            error(str(err))
            refused.append(str(err))  # and in the report's "Not measured": one asked for is not lost without a word
    # column folders, beside images/photo/, images/gatys/ and the style's cell, images/style.png
    names = unique_names(["photo", "style", "style.png", "gatys", *(name for name, _ in columns)])[4:]
    methods += [network_method(name, model_on(net, args.device)) for name, (_, net) in zip(names, columns, strict=True)]
    if not methods:
        return 1
    photos = args.photos or demo_held_out(config_dir(), exclude=style_picture)
    report, rows = run_report(args.out, args.style, photos, methods, size=args.size, on_error=error,
                              on_done=lambda photo, method: print(f"{photo}: {method} done", file=sys.stderr),
                              refused=refused)
    if not report.entries:  # an earlier report in --out is not replaced by an empty one
        error(f"nothing was measured: {str(args.out)!r} is left as it was")
        return 1
    title, extra = "Quality report", None
    if args.gatys:  # which objective the Gatys column optimised: a loss config's, not a model's own
        extra = {"gatys": {"loss_config": str(args.loss_config), "iterations": args.gatys_iterations}}
        title += f" (Gatys: loss config {args.loss_config}, {args.gatys_iterations} L-BFGS iterations)"
    paths = write_report(args.out, report, rows, title=title, extra=extra)
    for method in report.methods:
        missed = report.missed(method)
        print(f"{method}: targets {'met' if not missed else 'NOT met: ' + ', '.join(missed)}")
    print(f"wrote {', '.join(str(path) for path in paths.values())}")
    return 0  # 1 where a photo or model was reported (run_reporting_errors)


def trained_on(path: str, stored: StoredModel, style: str) -> tuple[str, nn.Module]:
    """(name, network) of the model's style whose image is ``--style`` (the same bytes): every column is
    measured against that one image, so another style's verdict would mean nothing. None of them is one
    line naming the styles and their images; a model of one style that records no picture's hash
    (pytorch/examples' files) is taken at its word."""
    from stylenet.image import resolve_image_path

    try:
        style_sha256 = file_sha256(resolve_image_path(style))
    except OSError as err:
        raise StylenetError(f"cannot read --style {style!r}: {err.strerror or err}") from None
    records = style_records(stored.metadata)
    if len(records) == 1 and records[0].get("sha256") in (None, style_sha256):
        return records[0]["name"], stored.net
    for record in records:
        if record.get("sha256") == style_sha256:
            return stored.for_style(record["name"])
    if len(records) == 1:
        raise StylenetError(f"model {path!r} was trained on another picture ({records[0].get('image')!r}) than "
                            f"--style {style!r}: pass its picture as --style")
    listed = ", ".join(f"{record['name']} ({record.get('image')!r})" for record in records)
    raise StylenetError(f"model {path!r} holds {len(records)} styles and none was trained on --style {style!r}: "
                        f"pass one of their images as --style ({listed})")


def model_on(net: nn.Module, device: str) -> nn.Module:
    """``net`` on ``--device`` (``auto``: CUDA if available)."""
    from stylenet.gatys import resolve_device

    try:
        return net.to(resolve_device(device, hint="--device cpu"))
    except RuntimeError as err:
        raise StylenetError(f"--device {device}: {first_line(err)}") from None


if __name__ == "__main__":
    sys.exit(main())
