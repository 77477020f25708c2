"""Reproduce Table 1 of Johnson et al. 2016: seconds for one pass of the style transformation network
versus the optimisation of Gatys et al. 2016 for 100, 300 and 500 L-BFGS iterations, at 256, 512 and
1024 px, on this machine's device, with the speed-up of the network over each.

Both sides run what stylenet ships: :class:`stylenet.nets.TransformerNet` with its default (paper)
architecture, and :func:`stylenet.gatys.optimize` (L-BFGS with a strong-Wolfe line search on the
VGG-16 training objective). Timing: warm-up first (network passes and one optimisation iteration),
CUDA synchronised before every clock read; the network's time is the median of ``--repeats`` passes;
Gatys' times at 100 and 300 iterations are read from the same run that goes on to 500. Iterations
are L-BFGS iterations (the paper's unit); objective evaluations per iteration are reported too.

Only with ``--extrapolate-from N`` are fewer iterations run: N are timed and the rest scaled
linearly from the rate after the first iteration (which also holds the one-off start: content
features, the first evaluation and line search); the output says so.

    python scripts/reproduce_table1.py --weights random --sizes 256 --extrapolate-from 20 --out table1
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from stylenet import StylenetError
from stylenet.bench.measure import median_seconds, sync
from stylenet.cli import ErrorReporter, run_reporting_errors
from stylenet.gatys import Progress, check_memory, optimize, parse_comparison_args, read_image, resolve_device
from stylenet.image import crop, resize_long_side, resize_short_side
from stylenet.losses import PerceptualLoss
from stylenet.nets import TransformerNet

PROG = "reproduce_table1.py"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024],
                        help="square image sides, px")
    parser.add_argument("--iterations", type=int, nargs="+", default=[100, 300, 500],
                        help="L-BFGS iteration counts to report")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--weights", default="imagenet",
                        help="VGG-16 weights of the objective: imagenet, random, or a .pth file")
    parser.add_argument("--extrapolate-from", type=int, metavar="N",
                        help="time only N L-BFGS iterations and scale linearly to the requested counts")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed network passes (the median is reported)")
    parser.add_argument("--content", default="demo:chelsea", help="content photo (path or demo:<name>)")
    parser.add_argument("--style", default="demo:ihc", help="style image (path or demo:<name>)")
    parser.add_argument("--out", default="outputs/table1", help="folder for table1.md and table1.csv")
    args = parse_comparison_args(parser, argv, ["repeats"],
                                 "sizes must be >= 8 px, iterations >= 1 and repeats >= 1", ("table1.md", "table1.csv"))
    if args.extrapolate_from is not None and args.extrapolate_from < 2:
        parser.error("--extrapolate-from must be >= 2 (the rate is taken after the first iteration)")
    return args


def time_network(net: TransformerNet, image: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward pass on a (1, 3, S, S) batch, after two warm-up passes."""
    with torch.inference_mode():
        return median_seconds(lambda: net(image), image.device, repeats, warmup=2)


def time_gatys(content: torch.Tensor, loss: PerceptualLoss, counts: list[int],
               extrapolate_from: int | None) -> tuple[dict[int, float], float, int]:
    """Seconds to reach each iteration count, objective evaluations per iteration (the initial one
    left out), and the number of iterations actually run."""
    optimize(content, loss, iterations=1)  # warm-up: allocator, thread pools, cuDNN algorithm choice
    run = min(extrapolate_from, max(counts)) if extrapolate_from else max(counts)
    device = loss.device
    elapsed: dict[int, float] = {}

    def clock(progress: Progress) -> None:
        sync(device)
        elapsed[progress.iteration] = time.perf_counter() - start

    sync(device)
    start = time.perf_counter()
    result = optimize(content, loss, iterations=run, callback=clock)
    if result.stopped:
        raise StylenetError(result.stopped)
    if run < max(counts):  # from the rate after the first iteration, which also holds the one-off start
        rate = (elapsed[run] - elapsed[1]) / (run - 1)
        return {n: elapsed[1] + rate * (n - 1) for n in counts}, (result.evaluations - 1) / run, run
    return {n: elapsed[n] for n in counts}, (result.evaluations - 1) / run, run


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the number of threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = argv if argv is not None else sys.argv[1:]
    return run_reporting_errors(PROG, lambda error: reproduce(args, command, error))  # Ctrl-C: one line, exit 130


def reproduce(args: argparse.Namespace, command: list[str], error: ErrorReporter) -> int:
    """Time every size, then print and write the table (``command``: the arguments it names); a refusal
    is one line through ``error`` and exit status 2."""
    try:
        device = resolve_device(args.device, hint="--device cpu")
        content_photo, style_photo = read_image(args.content, "--content"), read_image(args.style, "--style")
        loss = PerceptualLoss(weights=args.weights).to(device)
        net = TransformerNet().to(device).eval()
        counts = sorted(set(args.iterations))
        rows = []
        for size in args.sizes:  # every size before any is measured: the last must not fail after hours
            check_memory(loss, size, size, "lbfgs", 100, device, setting="--sizes")
        for size in args.sizes:
            content = crop(resize_short_side(content_photo, size), size, None)
            loss.set_style([resize_long_side(style_photo, size)])
            network_s = time_network(net, content.unsqueeze(0).to(device), args.repeats)
            gatys_s, evaluations, run = time_gatys(content, loss, counts, args.extrapolate_from)
            rows.append({"size": size, "network_s": network_s, "gatys_s": gatys_s,
                         "evaluations_per_iteration": evaluations, "measured_iterations": run})
            print(f"{size} px: network {network_s:.4g} s, Gatys {run} iterations timed", file=sys.stderr)
    except StylenetError as err:
        error(str(err))
        return 2
    report = markdown(rows, counts, device, args, command)
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table1.md").write_text(report + "\n", encoding="utf-8")
    write_csv(out / "table1.csv", rows, counts, device)
    print(f"wrote {out / 'table1.md'} and {out / 'table1.csv'}", file=sys.stderr)
    return 0


def markdown(rows: list[dict], counts: list[int], device: torch.device, args: argparse.Namespace,
             argv: list[str]) -> str:
    """The paper's layout: Gatys per iteration count, ours, then the speed-up over each count."""
    header = (["Image size", *(f"Gatys {n}" for n in counts), "Ours", *(f"Speed-up {n}" for n in counts)])
    lines = [f"Table 1 (Johnson et al. 2016), seconds on {device} ({device_name(device)}); "
             f"VGG-16 weights: {args.weights}",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row['size']} x {row['size']}", *(f"{row['gatys_s'][n]:.2f}" for n in counts),
                 f"{row['network_s']:.4f}", *(f"{row['gatys_s'][n] / row['network_s']:.0f}x" for n in counts)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for row in rows:
        measured = row["measured_iterations"]
        how = (f"EXTRAPOLATED linearly from {measured} timed iterations" if measured < max(counts)
               else f"measured in one {measured}-iteration run")
        lines.append(f"- {row['size']} px: Gatys times {how}; "
                     f"{row['evaluations_per_iteration']:.2f} objective evaluations per L-BFGS iteration.")
    lines.append(f"- Ours: median of {args.repeats} passes of TransformerNet() after 2 warm-up passes.")
    lines.append(f"- Command: `python scripts/reproduce_table1.py {' '.join(argv)}`")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict], counts: list[int], device: torch.device) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["size", "device", "network_s", *(f"gatys_{n}_s" for n in counts),
                         *(f"speedup_{n}" for n in counts), "gatys_measured_iterations",
                         "evaluations_per_iteration"])
        for row in rows:
            writer.writerow([row["size"], str(device), f"{row['network_s']:.6g}",
                             *(f"{row['gatys_s'][n]:.6g}" for n in counts),
                             *(f"{row['gatys_s'][n] / row['network_s']:.6g}" for n in counts),
                             row["measured_iterations"], f"{row['evaluations_per_iteration']:.4g}"])


if __name__ == "__main__":
    sys.exit(main())
