"""Super-resolution quality bar: does a briefly trained per-pixel-loss x4 model beat bicubic?

1. ``stylenet-prepare`` the bundled demo photos (scikit-image's, offline) into 288 px shards, so that
   training does not spend its few minutes decoding large PNGs for 32 px patches;
2. ``stylenet-train experiment=sr_demo data=shards``: the paper's per-pixel baseline (Johnson et al.
   2016, Sec. 4.2), a small x4 network, 2500 steps (minutes on a CPU);
3. ``stylenet-evaluate-sr`` on the photos the run held out (whole images at their own resolution):
   the model against bicubic upsampling, PSNR/SSIM on Y with a 4 px border shaved.

Writes ``sr_quality.md`` / ``.csv`` into the run folder and exits 1 if the model's mean PSNR does not
beat bicubic's. The commands run with ``--threads`` (default 1) intra-op threads: a network this small
gains nothing from more, and on a shared machine extra threads spin against the other processes.

    python scripts/sr_quality.py [--run-dir outputs/sr_quality] [--threads N] [stylenet-train overrides...]

Each run needs its own ``--run-dir``: the one of a finished run is refused before anything is done.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROG = "sr_quality.py"
#: The model file the training run ends with, in ``<--run-dir>/train``: there, a finished run.
MODEL = "sr_demo.safetensors"


def console_script(name: str, module: str) -> list[str]:
    """The installed console script beside this Python, or ``python -m`` the module."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


class StepFailed(Exception):
    """A command of the protocol failed: exit 2, apart from the model missing the bar (exit 1)."""


def run(command: list[str], threads: int) -> float:
    """Run and echo ``command`` with ``threads`` OpenMP threads; returns its wall time in seconds."""
    print(f"$ OMP_NUM_THREADS={threads}", " ".join(command), flush=True)
    started = time.perf_counter()
    from stylenet.cli import Terminated

    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    try:
        status = process.wait()
    except (KeyboardInterrupt, Terminated) as stop:  # let the command end its own way (training saves a checkpoint):
        if isinstance(stop, Terminated):  # Ctrl-C reached it too, SIGTERM (kill, a scheduler) only this process
            process.send_signal(signal.SIGTERM)
        process.wait()
        raise
    if status:
        raise StepFailed(f"{Path(command[0]).name} failed (exit {status}); its own error is above")
    return time.perf_counter() - started


def held_out_files(run_dir: Path) -> list[str]:
    """The validation photos of the run, from the config Hydra saved with it."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    data = instantiate(OmegaConf.load(run_dir / ".hydra" / "config.yaml").data)
    data.setup("fit")
    return [str(path) for path in data.val_files]


def trained_steps(run_dir: Path) -> tuple[int, int]:
    """The steps the run's model file was trained for, and the run's ``trainer.max_steps``."""
    from omegaconf import OmegaConf

    from stylenet.modelfile import read_header

    planned = OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.max_steps
    return int(read_header(run_dir / MODEL).get("steps") or 0), int(planned)


def resumes(override: str) -> bool:
    """Whether a stylenet-train override continues a run's checkpoints: ``resume=auto`` or ``must``, or
    a ``ckpt_path`` (``+``/``++`` and quotes as Hydra takes them; ``ckpt_path=null`` names none)."""
    key, _, value = override.lstrip("+").partition("=")
    value = value.strip("'\"")
    return (key == "resume" and value in ("auto", "must")) or (key == "ckpt_path" and value not in ("", "null"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, refused (exit 2, one line) before any step where it cannot work: a
    ``--run-dir`` that cannot be written into, or that holds a finished run (``stylenet-train`` would
    refuse its folder only after the data preparation), and ``--threads`` under 1."""
    from stylenet.atomic import unwritable

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default="outputs/sr_quality", help="folder for everything this writes")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads of each command (default 1)")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                        help="stylenet-train overrides, after the protocol's own (e.g. trainer.max_steps=500)")
    args = parser.parse_intermixed_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    reason = unwritable(Path(args.run_dir) / "sr_quality.md")
    if reason:
        parser.error(f"cannot write into --run-dir {args.run_dir!r}: {reason}")
    train = Path(args.run_dir) / "train"
    resumed = any(resumes(override) for override in args.overrides)
    if (Path(args.run_dir) / "sr_quality.csv").is_file():
        parser.error(f"--run-dir {args.run_dir!r} holds a finished measurement (sr_quality.csv): pass another "
                     "--run-dir")
    if (train / MODEL).is_file() and not resumed:  # trained, then stopped or failed in the evaluation
        parser.error(f"--run-dir {args.run_dir!r} holds a trained model not yet evaluated (train/{MODEL}): "
                     "resume=auto evaluates it, or pass another --run-dir")
    fixed = [override for override in args.overrides  # where the steps after training look for the model
             if override.lstrip("+").partition("=")[0] in ("name", "callbacks.export.path", "callbacks.export",
                                                            "hydra.run.dir")]
    if fixed:
        parser.error(f"{fixed[0]}: the protocol sets the run's name and folder (the model is {MODEL} in "
                     "<--run-dir>/train); pass --run-dir instead")
    if any((train / "checkpoints").glob("*.ckpt")) and not resumed:  # stylenet-train would refuse it, later
        parser.error(f"--run-dir {args.run_dir!r} holds an interrupted run (train/checkpoints/): pass another "
                     "--run-dir, or resume=auto to go on with it")
    return args


def main(argv: list[str] | None = None) -> int:
    from stylenet.cli import Terminated, sigterm_as_terminated, stopped_by

    args = parse_args(argv)
    try:
        with sigterm_as_terminated():
            return measure(args)
    except StepFailed as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        how, status = stopped_by(stop)
        print(f"{PROG}: {how}; the same command with resume=auto goes on where it stopped (training from its "
              "checkpoint, or the evaluation of the trained model)", file=sys.stderr)
        return status


def measure(args: argparse.Namespace) -> int:
    """The three steps of the module docstring; 0 when the model beats bicubic on mean PSNR, else 1."""
    from stylenet.image import DEMO_PHOTOS, demo_root

    root = Path(args.run_dir).resolve()
    photos, shards, train_dir = root / "photos", root / "shards", root / "train"
    trained = None
    if (train_dir / MODEL).is_file():  # (resume=auto: parse_args) stopped or failed in the evaluation
        from omegaconf import OmegaConf

        def settings(overrides: list[str]) -> list[str]:  # all but how to resume
            return [item for item in overrides if item.lstrip("+").partition("=")[0] not in ("resume", "ckpt_path")]

        # the protocol's three (experiment, data, data.root), then the user's: another trainer.max_steps would
        # be dropped without a word, the verdict given on the model trained before
        trained_with = settings([str(item) for item in OmegaConf.load(train_dir / ".hydra" / "overrides.yaml")])[3:]
        if trained_with != settings(args.overrides):
            raise StepFailed(f"{train_dir / MODEL} was trained with other overrides ({' '.join(trained_with) or 'none'}"
                             "): pass those with resume=auto to evaluate it, or another --run-dir")
        print(f"{train_dir / MODEL} is trained: evaluating it")
    else:
        photos.mkdir(parents=True, exist_ok=True)
        for name in DEMO_PHOTOS:
            link = photos / name
            if not link.exists() and (demo_root() / name).is_file():
                link.symlink_to(demo_root() / name)
        run([*console_script("stylenet-prepare", "stylenet.cli.prepare"), str(photos), "-o", str(shards),
             "--size", "288", "--workers", "0", "--no-progress"], args.threads)
        trained = run([*console_script("stylenet-train", "stylenet.cli.train"), "experiment=sr_demo",
                       "data=shards", f"data.root={shards}", "resume=never", f"hydra.run.dir={train_dir}",
                       *args.overrides], args.threads)
    steps, planned = trained_steps(train_dir)
    if steps < planned:  # trainer.max_time (the preset's cap on a busy machine): a verdict of another model
        raise StepFailed(f"training stopped at step {steps} of trainer.max_steps={planned} (trainer.max_time): no "
                         "verdict on a model trained short; pass trainer.max_time=null and another --run-dir")
    tables = ["--out", str(root / "sr_quality.md"), "--out", str(root / "sr_quality.csv")]
    evaluated = run([*console_script("stylenet-evaluate-sr", "stylenet.cli.evaluate_sr"),
                     *held_out_files(train_dir), "--model", str(train_dir / MODEL), *tables],
                    args.threads)
    print(f"training {trained:.0f} s (wall, including start-up), " if trained is not None else "", end="")
    print(f"evaluation {evaluated:.0f} s")
    with open(root / "sr_quality.csv", newline="") as handle:
        mean = list(csv.DictReader(handle))[-1]
    gain = {k: float(mean[f"sr_demo_{k}"]) - float(mean[f"bicubic_{k}"]) for k in ("psnr", "ssim")}
    print(f"model - bicubic: {gain['psnr']:+.2f} dB PSNR, {gain['ssim']:+.4f} SSIM")
    return 0 if gain["psnr"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
