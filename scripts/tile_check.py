#!/usr/bin/env python
"""Measure tiled inference: seam PSNR, memory, speed and export time (the README's numbers come from here).

    python scripts/tile_check.py psnr     # tiled vs whole PSNR, 1024x1024 photo, 256 px tiles, fp32
    python scripts/tile_check.py large    # 8000x8000 on the CPU, --tile: peak RSS and time of stylenet-stylize
    python scripts/tile_check.py speed    # seconds per megapixel at 1024x1024, fp32 vs bf16
    python scripts/tile_check.py export   # ONNX and .pt2 export time of the paper's network

The network is the paper's TransformerNet (32 channels, 5 residual blocks) with seeded random
weights: no trained model ships with the repository. Random weights react more strongly to
everything than a trained network does, so the PSNR figures are conservative. The photo is
scikit-image's astronaut (512x512), resized. The seam check runs in fp32 unless ``--precision`` says
otherwise: bf16, what stylenet-stylize picks on CPUs that run it natively, rounds the whole image and
the tiled one differently everywhere, which caps their PSNR near 47 dB whatever the seams.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402 - after the path setup

from stylenet import StylenetError, metrics  # noqa: E402
from stylenet.cli import ErrorReporter, run_reporting_errors  # noqa: E402
from stylenet.export import ONNX_PACKAGES, write_models  # noqa: E402
from stylenet.fastpath import reuse_freed_memory  # noqa: E402
from stylenet.image import demo_root, load_image, resize  # noqa: E402
from stylenet.inference import MIN_TILE, PRECISIONS, InferenceModel  # noqa: E402
from stylenet.modelfile import read_model, save_model  # noqa: E402
from stylenet.nets import TransformerNet  # noqa: E402


def paper_model(folder: Path) -> Path:
    torch.manual_seed(0)
    metadata = {"task": "style", "style_name": "random"}
    return save_model(folder / "random.safetensors", TransformerNet(), metadata)


def photo(size: int) -> torch.Tensor:
    return resize(load_image(demo_root() / "astronaut.png").rgb, (size, size), clamp=True)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """dB between two (3, H, W) images (+inf where identical: one tile covers the photo)."""
    return float(metrics.psnr(a[None], b[None]))


def check_psnr(folder: Path, size: int, tile: int, precision: str) -> None:
    model = InferenceModel.from_file(paper_model(folder), device="cpu", precision=precision)
    image = photo(size)
    start = time.perf_counter()
    whole = model.transform(image)
    print(f"whole {size}x{size} in {model.precision}: {time.perf_counter() - start:.1f} s")
    for overlap in (32, 64, 128):
        if overlap > tile // 2:  # the tiler clamps it to half a tile: the row would repeat another
            continue
        start = time.perf_counter()
        tiled = model.transform(image, tile=tile, tile_overlap=overlap)
        print(f"tiles {tile} px, overlap {overlap}: PSNR vs whole {psnr(tiled, whole):.1f} dB "
              f"({time.perf_counter() - start:.1f} s)")
    # a budget too small for a full-size statistics pass; a thumbnail is a tile at least (its side as used)
    for stats_side in dict.fromkeys(max(side, MIN_TILE) for side in (size // 2, size // 4)):
        model.max_memory = int(stats_side * stats_side * model.bytes_per_pixel())
        tiled = model.transform(image, tile=tile)
        print(f"tiles {tile} px, InstanceNorm statistics from a {stats_side} px thumbnail: "
              f"PSNR vs whole {psnr(tiled, whole):.1f} dB")
    start = time.perf_counter()
    tiled = model.transform(image, tile=tile, exact_statistics=True)
    print(f"tiles {tile} px, exact streaming statistics (budget {stats_side} px): PSNR vs whole "
          f"{psnr(tiled, whole):.1f} dB ({time.perf_counter() - start:.1f} s)")


def check_large(folder: Path, size: int, tile: int) -> None:
    """stylenet-stylize of a ``size`` px photo with ``--tile``: its time and peak memory (what README's row
    states); a StylenetError naming stylize's own error where it failed (no figures of a failure)."""
    from PIL import Image

    source = folder / f"large_{size}.jpg"
    with Image.open(demo_root() / "astronaut.png") as image:
        image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(source, quality=90)
    command = [sys.executable, str(ROOT / "scripts" / "stylize.py"), str(source), "--model",
               str(paper_model(folder)), "-o", str(folder / "large_out.jpg"), "--device", "cpu", "--tile", str(tile)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    if result.returncode:
        raise StylenetError(f"large: stylize of {size}x{size} failed (exit {result.returncode}): "
                            f"{(result.stderr.strip().splitlines() or ['no message'])[-1]}")
    print(result.stdout.strip(), result.stderr.strip(), sep="\n")
    print(f"{size}x{size} on the CPU: exit {result.returncode}, {seconds:.0f} s, peak RSS {peak_gib:.2f} GiB")


def check_speed(folder: Path, size: int) -> None:
    path = paper_model(folder)
    image = photo(size)
    for precision in ("fp32", "bf16"):
        model = InferenceModel.from_file(path, device="cpu", precision=precision)
        model.transform(image[:, :64, :64])  # warm-up
        start = time.perf_counter()
        model.transform(image)
        rate = (time.perf_counter() - start) / (size * size / 1e6)
        threads = torch.get_num_threads()
        print(f"{size}x{size} {precision} on the CPU ({threads} threads): {rate:.2f} s/megapixel")


def check_export(folder: Path) -> None:
    model = read_model(paper_model(folder))
    for suffix in (".pt2", ".onnx"):
        start = time.perf_counter()
        write_models(model, [folder / f"random{suffix}"])
        print(f"export {suffix}: {time.perf_counter() - start:.1f} s")


#: what the script measures, in the order it runs them by default
CHECKS = ("psnr", "speed", "export", "large")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tile_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # (no choices=: Python 3.11's argparse checked the default list against them, and the plain command failed)
    parser.add_argument("checks", nargs="*", metavar="CHECK", help=f"{', '.join(CHECKS)} (default: all of them)")
    parser.add_argument("--size", type=int, default=1024, help="photo side for psnr and speed")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                        help="precision of the psnr check (default: fp32, so that it measures the seams)")
    parser.add_argument("--large", type=int, default=8000, help="image side for the memory check")
    args = parser.parse_args(argv)
    args.checks = args.checks or list(CHECKS)
    unknown = [check for check in args.checks if check not in CHECKS]
    if unknown:
        parser.error(f"no check {unknown[0]!r} (choose from {', '.join(CHECKS)})")
    if args.size < 1 or args.large < 1 or args.tile < MIN_TILE:
        parser.error(f"--size and --large must be >= 1 px and --tile >= {MIN_TILE} px")
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if "export" in args.checks and missing:  # said before the other checks' minutes, not after them
        parser.error(f"the export check needs {' and '.join(missing)}: pip install -e '.[export]'")
    reuse_freed_memory()  # as stylenet-stylize runs on the CPU

    def run_checks(error: ErrorReporter) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for check in args.checks:
                if check == "psnr":
                    check_psnr(folder, args.size, args.tile, args.precision)
                elif check == "speed":
                    check_speed(folder, args.size)
                elif check == "export":
                    check_export(folder)
                else:
                    check_large(folder, args.large, args.tile)

    return run_reporting_errors("tile_check.py", run_checks)  # Ctrl-C: one line, as the commands it checks


if __name__ == "__main__":
    sys.exit(main())
