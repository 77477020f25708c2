"""``stylenet-stylize``: stylize photos with a per-style model file in one forward pass each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stylenet import StylenetError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stylenet-stylize", description=__doc__)
    parser.add_argument("inputs", nargs="+", help="content images")
    parser.add_argument("--model", required=True, help="a model file written by stylenet-export")
    parser.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    args = parser.parse_args(argv)
    from stylenet.export import load_model
    from stylenet.image import check_output_path, load_rgb, save_image
    from stylenet.inference import run_network

    try:
        model = load_model(args.model)
    except StylenetError as err:
        print(f"stylenet-stylize: error: {err}", file=sys.stderr)
        return 2
    output = Path(args.output)
    failed = 0
    for source in map(Path, args.inputs):
        target = output if len(args.inputs) == 1 and output.suffix else output / f"{source.stem}.png"
        try:
            check_output_path(target)
            save_image(target, run_network(model.net, load_rgb(source)))
        except (StylenetError, ValueError) as err:
            print(f"stylenet-stylize: error: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
