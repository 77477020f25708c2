"""``stylenet-export``: Lightning checkpoint -> per-style model file (weights + metadata only)."""

from __future__ import annotations

import argparse
import sys

from stylenet import StylenetError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stylenet-export", description=__doc__)
    parser.add_argument("checkpoint", help="a Lightning .ckpt written by stylenet-train")
    parser.add_argument("-o", "--output", required=True, help="the model file to write (.safetensors)")
    args = parser.parse_args(argv)
    from stylenet.export import export_checkpoint

    try:
        path = export_checkpoint(args.checkpoint, args.output)
    except StylenetError as err:
        print(f"stylenet-export: error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
