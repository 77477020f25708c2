"""Reproduce Fig. 5 of Johnson et al. 2016: the objective a trained style network reaches in one pass,
against what the optimisation of Gatys et al. 2016 reaches after 10 ... 500 L-BFGS iterations, on
held-out content images at several sizes.

The objective is the network's own training loss: :class:`stylenet.losses.PerceptualLoss` built from
the ``loss`` config stored in the model file's metadata, with the style targets computed as training
computed them (the style image resized so its long side is the model's ``style_size``). Content images
are resized (short side) and centre-cropped to squares. Gatys starts from uniform noise and from the
content image (``--inits``); its objective is read at each iteration count of one run per image, size
and start. The paper reports the network matching roughly 50-100 iterations at 256, 512 and 1024 px,
although it was trained at 256 px only.

Writes ``fig5.csv`` (one row per image, size, method and iteration count) and ``fig5.png`` (one panel
per size: Gatys' mean objective against iterations, the network's mean as a band of +- one standard
deviation), and prints at how many iterations Gatys first matches the network's mean objective.

    python scripts/reproduce_fig5.py --model candy.safetensors --images coco/val2014 --max-images 50
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from stylenet import StylenetError
from stylenet.cli import ErrorReporter, run_reporting_errors
from stylenet.gatys import Progress, check_memory, optimize, parse_comparison_args, read_image, resolve_device
from stylenet.image import (
    ImageError,
    crop,
    list_images,
    load_rgb,
    long_side_shape,
    resize_long_side,
    resize_short_side,
    resolve_image_path,
)
from stylenet.inference import run_network
from stylenet.losses import PerceptualLoss
from stylenet.modelfile import read_model
from stylenet.styles import file_sha256, style_records
from stylenet.temporal import split_temporal_weight

PROG = "reproduce_fig5.py"
NETWORK = "network"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="per-style .safetensors model file (stylenet-export)")
    parser.add_argument("--model-style", help="the style measured, for a file of several styles (one of its names)")
    parser.add_argument("--images", required=True, help="folder of held-out content images (e.g. COCO val)")
    parser.add_argument("--style", help="the style image; default: the model's metadata style_image")
    parser.add_argument("--style-size", type=int, help="long side of the style image; default: the model's")
    parser.add_argument("--weights", help="VGG weights overriding the model's loss.weights (a .pth file)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024],
                        help="square image sides, px")
    parser.add_argument("--iterations", type=int, nargs="+", default=[10, 25, 50, 100, 200, 300, 500],
                        help="L-BFGS iteration counts at which Gatys' objective is read")
    parser.add_argument("--inits", nargs="+", choices=["noise", "content"], default=["noise", "content"],
                        help="Gatys starting images")
    parser.add_argument("--max-images", type=int, default=50, help="use the first N images (the paper: 50)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-plot", action="store_true", help="write the CSV only (no matplotlib needed)")
    parser.add_argument("--out", default="outputs/fig5", help="folder for fig5.csv and fig5.png")
    args = parse_comparison_args(parser, argv, ["max_images"],
                                 "iterations must be >= 1, sizes >= 8 px and --max-images >= 1",
                                 ("fig5.csv", "fig5.png"))
    if args.style_size is not None and args.style_size < 1:  # not the model's size in its place
        parser.error("--style-size must be >= 1 px")
    return args


def build_objective(model_path: str, args: argparse.Namespace, device: torch.device) -> tuple:
    """The style network and its training objective, style targets set as training set them."""
    model = read_model(model_path)
    metadata = model.metadata
    if model.task != "style" or not isinstance(metadata.get("loss"), dict) or not metadata["loss"]:
        raise StylenetError(f"model file {model_path!r} is not a style model with its training loss config "
                            "in its metadata")
    if len(model.styles) > 1 and args.model_style is None:
        raise StylenetError(f"model file {model_path!r} holds {len(model.styles)} styles "
                            f"({', '.join(model.styles)}): pick one with --model-style NAME")
    # the style asked for (of several in one network: as a plain network), else the file's one style; a
    # single-style file's --model-style is checked too, so that a name it does not hold is not ignored
    name, net = model.for_style(0 if args.model_style is None else args.model_style)
    # its own objective: a file grown by task=add_style records each style's loss and size (the file's own
    # are its last run's); the temporal term is not the loss network's (files of before it was kept apart)
    record = next(s for s in style_records(metadata) if s["name"] == name)
    loss_config = split_temporal_weight(record.get("loss") or metadata["loss"])[0]
    if args.weights:
        loss_config["weights"] = args.weights
    style_spec = args.style or record.get("image")
    style_size = args.style_size or record.get("style_size") or metadata.get("style_size")
    if style_spec in (None, "", "None") or not style_size:
        raise StylenetError(f"model file {model_path!r} does not record its style image and size: "
                            "pass --style and --style-size")
    loss = PerceptualLoss(**loss_config).to(device)
    style = read_image(style_spec, "style image (--style)")
    trained_on = record.get("sha256")  # the recorded path may hold another picture now: another objective
    if trained_on and file_sha256(resolve_image_path(style_spec)) != trained_on:
        if args.style is None:
            raise StylenetError(f"{style_spec!r} is not the picture {model_path!r} was trained on (its sha256 "
                                "differs): pass that picture with --style")
        print(f"{PROG}: warning: --style {style_spec!r} is not the picture {model_path!r} was trained on: the "
              "network's objective is measured against another style", file=sys.stderr)
    # refused before the resize allocates it; its Grams are one forward pass each: no optimiser state
    check_memory(loss, *long_side_shape(*style.shape[-2:], int(style_size)), None, 0, device,
                 setting="--style-size")
    loss.set_style([resize_long_side(style, int(style_size))])
    return net.to(device), loss


def content_images(folder: str, limit: int) -> list[tuple[str, torch.Tensor]]:
    """The first ``limit`` readable images of ``folder``; unreadable files are reported and skipped."""
    images = []
    for path in list_images(folder):
        try:
            images.append((path.name, load_rgb(path)))
        except ImageError as err:
            print(f"{PROG}: skipped {err}", file=sys.stderr)
        if len(images) == limit:
            break
    if not images:
        raise StylenetError(f"no readable images in {folder!r}")
    return images


def measure(net: torch.nn.Module, loss: PerceptualLoss, images: list[tuple[str, torch.Tensor]],
            args: argparse.Namespace) -> list[dict]:
    """Rows (image, size, method, init, iterations, objective): the network once per image and size,
    Gatys at every requested iteration count of one run per image, size and start."""
    counts = sorted(set(args.iterations))
    rows = []
    for size in args.sizes:  # every size before any is measured: the last must not fail after hours
        check_memory(loss, size, size, "lbfgs", 100, loss.device, setting="--sizes")
    for size in args.sizes:
        for index, (name, photo) in enumerate(images):
            content = crop(resize_short_side(photo, size), size, None).to(loss.device)
            with torch.no_grad():
                stylized = run_network(net, content)
                network = float(loss(stylized.unsqueeze(0), content.unsqueeze(0))["total"])
            rows.append({"image": name, "size": size, "method": NETWORK, "init": "", "iterations": "",
                         "objective": network})
            for init in args.inits:
                reached: dict[int, float] = {}

                def record(progress: Progress, reached: dict[int, float] = reached) -> None:
                    if progress.iteration in counts:
                        reached[progress.iteration] = progress.terms["total"]

                result = optimize(content, loss, iterations=max(counts), init=init, seed=index,
                                  callback=record)
                if result.stopped:
                    raise StylenetError(f"{name} at {size} px from {init}: {result.stopped}")
                rows += [{"image": name, "size": size, "method": "gatys", "init": init, "iterations": n,
                          "objective": value} for n, value in reached.items()]
            print(f"{size} px, {name}: network {network:.4g}, Gatys after {max(counts)} iterations "
                  f"{result.terms['total']:.4g}", file=sys.stderr)
    return rows


def summarise(rows: list[dict]) -> tuple[dict, dict]:
    """Per size: the network's (mean, std), and Gatys' mean objective per (init, iterations)."""
    network: dict[int, list[float]] = defaultdict(list)
    gatys: dict[int, dict[tuple[str, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["method"] == NETWORK:
            network[row["size"]].append(row["objective"])
        else:
            gatys[row["size"]][row["init"], row["iterations"]].append(row["objective"])
    bands = {size: (statistics.fmean(v), statistics.pstdev(v)) for size, v in network.items()}
    means = {size: {key: statistics.fmean(v) for key, v in curves.items()} for size, curves in gatys.items()}
    return bands, means


def report(bands: dict, means: dict, inits: list[str]) -> str:
    """At how many iterations Gatys' mean objective first drops to the network's mean, per size and start."""
    lines = []
    for size, (mean, std) in bands.items():
        parts = []
        for init in inits:
            reached = sorted(n for (i, n), value in means[size].items() if i == init and value <= mean)
            last = max(n for i, n in means[size] if i == init)
            parts.append(f"from {init} at {reached[0]} iterations" if reached
                         else f"from {init} not within {last} iterations")
        lines.append(f"{size} px: network objective {mean:.4g} +- {std:.2g}; Gatys first matches it "
                     + ", ".join(parts))
    return "\n".join(lines)


def plot(path: Path, bands: dict, means: dict, inits: list[str]) -> None:
    """One panel per size: Gatys' mean objective per start vs iterations, the network as a band."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(bands), figsize=(4.5 * len(bands), 3.6), squeeze=False)
    for axis, (size, (mean, std)) in zip(axes[0], bands.items(), strict=True):
        for init in inits:
            points = sorted((n, value) for (i, n), value in means[size].items() if i == init)
            axis.plot(*zip(*points, strict=True), marker="o", label=f"Gatys et al., from {init}")
        axis.axhline(mean, color="black", label="feed-forward network (mean +- std)")
        axis.axhspan(mean - std, mean + std, color="black", alpha=0.15)
        axis.set(title=f"{size} x {size}", xlabel="L-BFGS iterations", ylabel="objective", yscale="log")
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_reporting_errors(PROG, lambda error: reproduce(args, error))  # Ctrl-C: one line, exit 130


def reproduce(args: argparse.Namespace, error: ErrorReporter) -> int:
    """Measure, then write the CSV and the plot and print the summary; a refusal is one line through
    ``error`` and exit status 2."""
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401 - fail now, not after hours of optimisation
        except ImportError:
            error("the plot needs matplotlib (pip install matplotlib), or pass --no-plot")
            return 2
    try:
        device = resolve_device(args.device, hint="--device cpu")
        net, loss = build_objective(args.model, args, device)
        rows = measure(net, loss, content_images(args.images, args.max_images), args)
    except StylenetError as err:
        error(str(err))
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "fig5.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "objective": f"{row['objective']:.6g}"} for row in rows)
    bands, means = summarise(rows)
    print(report(bands, means, args.inits))
    if not args.no_plot:
        plot(out / "fig5.png", bands, means, args.inits)
    elif (out / "fig5.png").exists():  # an earlier run's plot would no longer show this table
        (out / "fig5.png").unlink()
        print(f"removed the earlier run's {out / 'fig5.png'}", file=sys.stderr)
    written = [out / "fig5.csv"] + ([] if args.no_plot else [out / "fig5.png"])
    print("wrote " + " and ".join(map(str, written)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
