"""``stylenet-upscale``: upscale photos x2, x4 or x8 with a super-resolution model file.

Johnson et al. 2016, Sec. 4.2. Everything ``stylenet-stylize`` does, with the same options: files,
folders or globs; any size (tiled, seam-free); any image mode (EXIF rotation, 16-bit, greyscale,
ICC profiles); alpha upscaled separately (interpolated, the network sees RGB only); safe loading
(a style model is refused); one line per failed input, whatever the error, and the others go on;
repeat ``-m`` for several models. ``--match-histogram`` is the paper's post-processing: match each
channel's histogram of the output to the (low-resolution) input.

    stylenet-upscale --model sr_x4.safetensors photo.png -o photo_x4.png
    stylenet-upscale -m sr_x8.safetensors photos/ -o upscaled/ --match-histogram --tile 256

Imports neither Hydra nor Lightning, so it starts fast.
"""

from __future__ import annotations

import sys

from stylenet.cli.stylize import run_cli


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 all done, 1 something failed, 2 bad usage, 130 Ctrl-C)."""
    return run_cli(argv, prog="stylenet-upscale", task="sr", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
