"""``stylenet-export``: a trained model -> per-style model file, ONNX model and/or ``torch.export`` program.

The source is a ``stylenet-train`` Lightning checkpoint (.ckpt), a stylenet model file (.safetensors)
or a pytorch/examples fast_neural_style checkpoint (.pth/.model); it is read without unpickling
code. Each ``-o`` picks its format by extension: .safetensors (weights + metadata, for
stylenet-stylize), .onnx (onnxruntime etc.) or .pt2 (torch.export.load); ONNX and .pt2 accept any
height and width >= 8. Ctrl-C (exit 130) and SIGTERM (exit 143) stop it with one line, every output as it
was and no temporary file left. ``--info`` prints what the source holds (its styles, network and training
record) instead of, or before, writing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from stylenet.cli import Terminated, print_out, sigterm_as_terminated, stopped_by
from stylenet.errors import StylenetError, cannot_write

if TYPE_CHECKING:
    from stylenet.modelfile import StoredModel

PROG = "stylenet-export"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source",
                        help="a .ckpt from stylenet-train, a .safetensors model or a pytorch/examples .pth")
    parser.add_argument("-o", "--output", action="append", dest="outputs", default=[],
                        help="file to write (.safetensors, .onnx or .pt2); repeat for several formats")
    parser.add_argument("--info", action="store_true",
                        help="print the source's styles, network and training record (JSON after the first line)")
    parser.add_argument("--style-name", help="set the style's name (used in stylenet-stylize's output names); for "
                                             "a model of several styles, one name each in its order: a,b,c")
    args = parser.parse_args(argv)
    if not args.outputs and not args.info:
        parser.error("give -o FILE to write (.safetensors, .onnx or .pt2), or --info to show what the source holds")
    from stylenet.export import write_models
    from stylenet.modelfile import read_model

    try:
        with sigterm_as_terminated():  # a scheduler's stop: the temporary files are removed as on Ctrl-C
            check_outputs(args.source, args.outputs)
            model = read_model(args.source)
            if args.style_name is not None:  # --style-name "" is refused as a name, not ignored
                if model.task != "style":
                    raise StylenetError(f"--style-name names a style model; {args.source!r} is a {model.task!r} "
                                        "model")
                rename_styles(model, args.style_name, args.source)
            told = not args.info or print_out(describe(model, args.source), PROG)
            paths = write_models(model, args.outputs) if args.outputs else []
    except StylenetError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the disk, after every check: full, read-only, ...
        print(f"{PROG}: error: {cannot_write(err, args.outputs[0])}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as stop:  # write_models publishes all outputs or none
        how, status = stopped_by(stop)
        print(f"{PROG}: {how}; no output written", file=sys.stderr)
        return status
    return 0 if told and all(print_out(str(path), PROG) for path in paths) else 1


def describe(model: StoredModel, source: str) -> str:
    """``--info``: one line a person reads (the task, the network's size, the style names that
    ``stylenet-stylize --style`` takes), then the file's whole record as JSON for scripts."""
    parameters = sum(parameter.numel() for parameter in model.net.parameters())
    if model.task == "style":
        styles = model.styles
        kind = f"{len(styles)} style{'s' if len(styles) > 1 else ''} ({', '.join(styles)})"
    else:
        kind = f"x{model.metadata.get('factor')} super-resolution"
    summary = f"{source}: {kind}, {type(model.net).__name__} of {parameters / 1e6:.2f} M parameters"
    return summary + "\n" + json.dumps(model.metadata, indent=2, sort_keys=True)


def rename_styles(model: StoredModel, names: str, source: str) -> None:
    """``--style-name``: the style's new name, or for a network of several styles one name per row of its
    norm tables, comma-separated in the file's order (a style name holds no comma); each record keeps
    its image and hash."""
    from stylenet.styles import check_style_names

    styles = model.styles
    new = check_style_names([name.strip() for name in names.split(",")] if len(styles) > 1 else [names],
                            "--style-name")
    if len(new) != len(styles):
        raise StylenetError(f"--style-name {names!r}: {source!r} holds {len(styles)} styles ({', '.join(styles)}): "
                            f"give {len(styles)} names, comma-separated, in that order")
    if len(styles) > 1:
        model.metadata["styles"] = [{**record, "name": name}
                                    for record, name in zip(model.metadata["styles"], new, strict=True)]
        renamed = dict(zip(styles, new, strict=True))  # a task=add_style file's top level names the style it added
        if model.metadata.get("style_name") in renamed:
            model.metadata["style_name"] = renamed[model.metadata["style_name"]]
    else:
        model.metadata["style_name"] = new[0]


def check_outputs(source: str, outputs: list[str]) -> None:
    """Every ``-o`` writable, none of them the source (which would be lost) or given twice."""
    from stylenet.export import check_export_path

    written = {Path(source).resolve(): "the source"}
    for output in outputs:
        check_export_path(output)
        resolved = Path(output).resolve()
        if resolved in written:
            raise StylenetError(f"-o {output!r} is {written[resolved]}: refusing to write it twice or over "
                                "the source; name another file")
        written[resolved] = "already an output"


if __name__ == "__main__":
    sys.exit(main())
