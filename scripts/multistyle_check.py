"""Several styles in one network, measured (issue 16, point 5; Dumoulin, Shlens & Kudlur, ICLR 2017).

On the demo data (scikit-image's bundled photos, the held-out ones for measuring), with the offline loss
network of ``experiment=demo`` (its ``loss`` settings, composed from configs/), fixed seeds:

1. **N styles vs N networks**: N single-style networks of ``--steps`` steps each against one N-style
   network of N x ``--steps`` steps (every style gets the same samples: each takes every N-th sample of
   the stream); each style's objective on the held-out photos, and the ratio (target: <= 1.10).
2. **Adding a style**: the N-style network grows style N + 1 by its norm parameters alone for
   ``--add-fraction`` x ``--steps`` steps (``task=add_style``), against a full single-style network of
   ``--steps`` steps on that style (target: objective within 10%).
3. **Blends**: the first two styles and their 50/50 blend, scored by :mod:`stylenet.quality` against each
   style's image (target: the blend between the two on every measure), and the quality report of the
   N-style network's outputs (``styles/<style>/``, as a training run ends).

Writes ``results.json``, ``results.md`` and the model files into ``--out``; prints the table.

    python scripts/multistyle_check.py --steps 200 --out outputs/multistyle
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from stylenet.errors import StylenetError, check_seed
from stylenet.styles import style_name_of

PROG = "multistyle_check.py"
ROOT = Path(__file__).resolve().parents[1]
#: Bundled images (not among the demo's training photos) as the N styles and the added one.
STYLES = ("demo:ihc", "demo:brick", "demo:gravel", "demo:color")
NEW_STYLE = "demo:grass"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", nargs="+", default=list(STYLES), help="the N styles (default: 4 bundled images)")
    parser.add_argument("--new-style", default=NEW_STYLE, help="the style added by its norm parameters")
    parser.add_argument("--steps", type=int, default=200, help="training steps of each single-style network")
    parser.add_argument("--add-fraction", type=float, default=0.25, help="add-style steps / --steps")
    parser.add_argument("--channels", type=int, default=32, help="network width (paper: 32)")
    parser.add_argument("--residual-blocks", type=int, default=5, help="residual blocks (paper: 5)")
    parser.add_argument("--image-size", type=int, default=None, help="training crop (default: experiment=demo's)")
    parser.add_argument("--scale-size", type=int, default=None,
                        help="photos' short side before the crop (default: experiment=demo's data.scale_size)")
    parser.add_argument("--style-size", type=int, default=256, help="long side of the style images")
    parser.add_argument("--batch-size", type=int, default=4, help="batch size (paper: 4)")
    parser.add_argument("--loss-weights", help="override loss.weights (default: experiment=demo's, the offline "
                                                 "calibrated network; random: for tests only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true",
                        help="keep the model files already in --out (an interrupted measurement goes on) that "
                             "record this run's settings (network, styles, loss, sizes, steps); the others are "
                             "retrained. Batch size, seed and --scale-size are not recorded: keep them as they were")
    parser.add_argument("--out", default="outputs/multistyle", help="output folder")
    return parser


def demo_settings(image_size: int | None, scale_size: int | None, weights: str | None) -> dict[str, Any]:
    """experiment=demo's loss settings, learning rate, crop size and scale, share of identity steps (of
    its ``trainer.max_steps``) and saturation weight, and task=add_style's learning rate, from configs/."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", *([f"loss.weights={weights}"] if weights else [])])
    return {"loss": OmegaConf.to_container(cfg.loss, resolve=True), "lr": float(cfg.task.lr),
            "identity_share": int(cfg.task.identity_steps) / int(cfg.trainer.max_steps),
            "saturation_weight": float(cfg.task.saturation_weight),
            "image_size": image_size or int(cfg.data.image_size),
            "scale_size": scale_size or cfg.data.scale_size,
            "add_lr": float(OmegaConf.load(ROOT / "configs" / "task" / "add_style.yaml").lr)}


def recorded_difference(path: Path, task: pl.LightningModule, steps: int) -> str | None:
    """How the model file at ``path`` records other settings than training ``task`` for ``steps`` steps
    would (its network, styles and their images' digests, loss, sizes, steps, the base of an added
    style: every field of its header), None where it records the same: only then is it this
    measurement's file, and reusing it does not report another run's numbers under this one's settings."""
    from stylenet.checkpoints import setting_difference
    from stylenet.modelfile import checkpoint_metadata, header, read_header

    recorded = read_header(path)
    expected = json.loads(json.dumps(header(task.net, checkpoint_metadata(dict(task.hparams), steps))))
    differences = []
    for key in dict.fromkeys([*expected, *recorded]):
        before, now = recorded.get(key), expected.get(key)
        if before != now:
            difference = setting_difference(key, before, now)  # of two mappings, it names their keys
            differences.append(difference if isinstance(before, dict) and isinstance(now, dict)
                               else f"{key}: {difference}")
    return "; ".join(differences) or None


def fit(task: pl.LightningModule, steps: int, args: argparse.Namespace, path: Path) -> Path:
    """Train ``task`` for ``steps`` steps on the demo photos (seeded), write its model file to ``path``;
    with ``--reuse``, a file already there that records these settings is kept instead."""
    from stylenet.callbacks import ExportStyleModel
    from stylenet.data import ImageFolderDataModule
    from stylenet.fastpath import training_precision

    if args.reuse and path.is_file():
        difference = recorded_difference(path, task, steps)
        if difference is None:
            print(f"reusing {path}", file=sys.stderr, flush=True)
            return path
        print(f"retraining {path}: it records other settings ({difference})", file=sys.stderr, flush=True)
    data = ImageFolderDataModule(source="demo", image_size=task.hparams["image_size"], batch_size=args.batch_size,
                                 val_images=2, seed=args.seed, scale_size=args.scale_size)
    trainer = pl.Trainer(accelerator="cpu", precision=training_precision("cpu"),  # as stylenet-train: bf16 if native
                         max_steps=steps, max_epochs=-1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, callbacks=[ExportStyleModel(str(path))],
                         default_root_dir=path.parent)
    try:
        trainer.fit(task, datamodule=data, weights_only=True)
    except SystemExit:  # Lightning ends a run stopped by Ctrl-C with exit 1: a stop here, said as one
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    print(f"trained {path.name} ({steps} steps)", file=sys.stderr, flush=True)
    return path


def held_out_files() -> list[Path]:
    """The demo data's held-out photos (never trained on), as the training CLI's report takes them."""
    from stylenet.report import demo_held_out

    return demo_held_out(ROOT / "configs")


def held_out(size: int) -> list[torch.Tensor]:
    """The held-out photos, long side ``size``."""
    from stylenet.image import load_rgb, resize_long_side

    return [resize_long_side(load_rgb(path), size) for path in held_out_files()]


def evaluator(settings: dict[str, Any]) -> torch.nn.Module:
    """The objective's perceptual terms (a PerceptualLoss of the run's settings), built once."""
    from stylenet.losses import PerceptualLoss
    from stylenet.temporal import split_temporal_weight

    return PerceptualLoss(**split_temporal_weight(settings["loss"])[0])


@torch.no_grad()
def objective(net: torch.nn.Module, style: str, photos: list[torch.Tensor], loss: torch.nn.Module,
              style_size: int) -> float:
    """The training objective (``total``) of ``net`` for ``style``, averaged over ``photos``."""
    from stylenet.inference import run_network
    from stylenet.tasks import load_style_image

    loss.set_style([load_style_image(style, style_size)[0]])
    totals = [float(loss(run_network(net, photo)[None], photo[None])["total"]) for photo in photos]
    return sum(totals) / len(totals)


def style_task(styles: list[str], args: argparse.Namespace, settings: dict[str, Any], scale: int = 1
               ) -> pl.LightningModule:
    """A StyleTransferTask of the given styles (several: one network of several styles), trained for
    ``scale`` x ``--steps`` steps, the first ones as experiment=demo's share of identity steps."""
    from stylenet.tasks import StyleTransferTask

    pl.seed_everything(args.seed)
    style = ({"image": styles[0], "name": style_name_of(styles[0])} if len(styles) == 1 else {"images": styles})
    return StyleTransferTask(model={"channels": args.channels, "residual_blocks": args.residual_blocks},
                             loss=settings["loss"], style={**style, "size": args.style_size}, lr=settings["lr"],
                             image_size=settings["image_size"],
                             identity_steps=round(settings["identity_share"] * args.steps) * scale,
                             saturation_weight=settings["saturation_weight"])


def compare_styles(args: argparse.Namespace, settings: dict[str, Any], out: Path,
                   photos: list[torch.Tensor]) -> tuple[dict[str, Any], Path]:
    """Point 1: N single-style networks against one N-style network at equal samples per style."""
    from stylenet.modelfile import read_model

    count = len(args.styles)
    multi = read_model(fit(style_task(args.styles, args, settings, count), count * args.steps, args,
                           out / "multi.safetensors"))
    rows = {}
    for spec in args.styles:
        path = out / f"{style_name_of(spec)}.safetensors"
        single = read_model(fit(style_task([spec], args, settings), args.steps, args, path))
        name = style_name_of(spec)
        alone = objective(single.net, spec, photos, settings["evaluator"], args.style_size)
        shared = objective(multi.for_style(name)[1], spec, photos, settings["evaluator"], args.style_size)
        rows[name] = {"single": alone, "multi": shared, "ratio": shared / alone}
    worst = max(row["ratio"] for row in rows.values())
    return {"styles": rows, "worst_ratio": worst, "met": worst <= 1.10}, out / "multi.safetensors"


def compare_added(args: argparse.Namespace, settings: dict[str, Any], out: Path, photos: list[torch.Tensor],
                  base: Path) -> dict[str, Any]:
    """Point 2: a style added by its norm parameters against a full single-style network."""
    from stylenet.modelfile import read_model
    from stylenet.tasks import AddStyleTask

    spec, name = args.new_style, style_name_of(args.new_style)
    steps = max(1, round(args.add_fraction * args.steps))
    single = read_model(fit(style_task([spec], args, settings), args.steps, args, out / f"{name}.safetensors"))
    pl.seed_everything(args.seed)
    task = AddStyleTask(base=str(base), loss=settings["loss"], style={"image": spec, "size": args.style_size},
                        lr=settings["add_lr"], image_size=settings["image_size"])
    added = read_model(fit(task, steps, args, out / "multi_plus_new.safetensors"))
    alone = objective(single.net, spec, photos, settings["evaluator"], args.style_size)
    grown = objective(added.for_style(name)[1], spec, photos, settings["evaluator"], args.style_size)
    return {"style": name, "steps": steps, "single_steps": args.steps, "single": alone, "added": grown,
            "ratio": grown / alone, "met": grown / alone <= 1.10, "styles": added.styles}


def compare_blend(args: argparse.Namespace, multi: Path, photos: list[torch.Tensor]) -> dict[str, Any]:
    """Point 3: the 50/50 blend of the first two styles between the two, on each style's measures."""
    from stylenet import quality
    from stylenet.inference import run_network
    from stylenet.modelfile import read_model
    from stylenet.tasks import load_style_image

    stored, (a, b) = read_model(multi), [style_name_of(spec) for spec in args.styles[:2]]
    nets = {a: stored.for_style(a)[1], b: stored.for_style(b)[1], "blend": stored.for_style({a: 0.5, b: 0.5})[1]}
    result: dict[str, Any] = {}
    for spec in args.styles[:2]:
        image = load_style_image(spec, args.style_size)[0]
        means = {}
        for label, net in nets.items():
            scores = [quality.score(photo, image, run_network(net, photo).clamp(0, 1)).as_dict() for photo in photos]
            means[label] = {key: sum(s[key] for s in scores) / len(scores) for key in scores[0]}
        between = {key: min(means[a][key], means[b][key]) <= means["blend"][key] <= max(means[a][key], means[b][key])
                   for key in ("colour_moved", "texture_moved")}
        result[style_name_of(spec)] = {"means": means, "between": between}
    result["met"] = all(all(r["between"].values()) for r in result.values() if isinstance(r, dict))
    return result


def markdown(results: dict[str, Any]) -> str:
    """The README's table of the three measurements."""
    lines = ["| style | single-style network | N-style network | ratio |", "|---|---|---|---|"]
    lines += [f"| {name} | {row['single']:.4g} | {row['multi']:.4g} | {row['ratio']:.3f} |"
              for name, row in results["multi"]["styles"].items()]
    added = results["added"]
    lines += ["", f"Added style {added['style']} ({added['steps']} steps, norm parameters only): {added['added']:.4g} "
              f"vs a single-style network of {added['single_steps']} steps: {added['single']:.4g} "
              f"(ratio {added['ratio']:.3f}, target <= 1.10: {'met' if added['met'] else 'NOT met'})", ""]
    for name, row in results["blend"].items():
        if isinstance(row, dict):
            moved = {label: f"{m['colour_moved']:.3f} / {m['texture_moved']:.3f}" for label, m in row["means"].items()}
            lines.append(f"Against {name}'s image, colour / texture moved: {moved}; blend between: {row['between']}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; a value that cannot work is a usage error before anything is trained (a size
    of 0 is refused, not replaced by the default), as is an ``--out`` that cannot be written into."""
    from stylenet.atomic import unwritable

    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.styles) < 2 or args.steps < 1 or not 0 < args.add_fraction <= 1:
        parser.error("need >= 2 --styles, --steps >= 1 and 0 < --add-fraction <= 1")
    sizes = (args.channels, args.style_size, args.batch_size, args.image_size, args.scale_size)
    if any(size is not None and size < 1 for size in sizes) or args.residual_blocks < 0:
        parser.error("--channels, --style-size, --batch-size, --image-size and --scale-size must be >= 1 and "
                     "--residual-blocks >= 0")
    try:
        check_seed(args.seed, "--seed")
    except StylenetError as err:
        parser.error(str(err))
    reason = unwritable(Path(args.out) / "results.json")
    if reason:
        parser.error(f"cannot write into --out {args.out!r}: {reason}")
    out = Path(args.out)  # another run's results and model files were rewritten, or left beside the new ones
    earlier = next((path.name for path in (out / "results.json", out / "results.md", *sorted(out.glob("*.safetensors")))
                    if path.is_file()), None)
    if earlier is not None and not args.reuse:
        parser.error(f"--out {args.out!r} holds an earlier run's {earlier}: pass another --out, or --reuse to go on "
                     "with its model files")
    return args


def main(argv: list[str] | None = None) -> int:
    from stylenet.cli import Terminated, sigterm_as_terminated, stopped_by

    args = parse_args(argv)
    try:
        with sigterm_as_terminated():
            check_styles(args)
            return measure(args)
    except StylenetError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:  # one line, exit 130 or 143, as the commands end a stopped run
        print(f"{PROG}: {stopped_by(stop)[0]}", file=sys.stderr)
        return stopped_by(stop)[1]


def check_styles(args: argparse.Namespace) -> None:
    """Before any training: every style image can be read, and the names the model files take from them
    (``<stem>.safetensors`` beside ``multi.safetensors`` and ``multi_plus_new.safetensors``) are distinct."""
    from stylenet.tasks import load_style_image

    given = [*(("--styles", spec) for spec in args.styles), ("--new-style", args.new_style)]
    for option, spec in given:  # decoded, not only found: a broken one was found after the others' training
        load_style_image(spec, args.style_size, option)
    names = [style_name_of(spec) for _, spec in given]
    for (option, spec), name in zip(given, names, strict=True):
        if name in ("multi", "multi_plus_new") or names.count(name) > 1:
            raise StylenetError(f"{option} {spec!r}: its name {name!r} is another model file's here (each style is "
                                "<name>.safetensors beside multi.safetensors and multi_plus_new.safetensors); "
                                "rename the image")


def measure(args: argparse.Namespace) -> int:
    """Train, add a style, blend and report (the module docstring); writes into ``--out``."""
    from stylenet.style_reports import style_reports

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(args.image_size, args.scale_size, args.loss_weights)
    args.scale_size = settings["scale_size"]  # what fit() crops from
    photos = held_out(settings["image_size"])
    results: dict[str, Any] = {"settings": {**vars(args), **settings}}
    settings["evaluator"] = evaluator(settings)
    results["multi"], multi = compare_styles(args, settings, out, photos)
    results["added"] = compare_added(args, settings, out, photos, multi)
    results["blend"] = compare_blend(args, multi, photos)
    style_reports(out, multi, held_out_files(), args.style_size)  # the quality report, per style
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
