"""``stylenet-gatys``: the optimisation baseline (Gatys et al. 2016) as a Hydra app (configs/gatys.yaml).

One content photo and one or more style images in, one optimised image out, scored by the same
objective the feed-forward networks are trained on (``loss`` group). In the run folder: the final
image (``output``), ``tensorboard/`` (every objective term per iteration, intermediate images),
``steps/`` (snapshots every ``save_every`` iterations) and Hydra's config and log.

Bad settings and unreadable images fail before any optimisation with one line,
``stylenet-gatys: error: ...``, and exit status 2, before anything is written into the run folder.
A non-finite objective stops the optimisation, writes the last finite image to ``output`` and exits
with status 1. Ctrl-C and SIGTERM write the last finished iteration's image to ``output`` (exit 130
and 143): ``init=<that image>`` goes on from it in a new run (into another ``output=`` where one was
named). Each of these ends ``gatys.log`` too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from stylenet import StylenetError
from stylenet.atomic import NO_ROOM, no_room_as_error
from stylenet.cli import (
    EarlierRecord,
    Terminated,
    allow_pixels,
    launch_hydra_app,
    report_refusal,
    sigterm_as_terminated,
    stopped_by,
    tolerate_any_file_name_in_log_files,
)
from stylenet.cli.train import config_dir
from stylenet.config_check import check_added_keys
from stylenet.errors import check_seed
from stylenet.styles import check_run_name

if TYPE_CHECKING:
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from stylenet.gatys import Progress

log = logging.getLogger(__name__)


def style_specs(styles: object) -> list[str]:
    """``styles=a.jpg`` or ``styles=[a.jpg,b.jpg]`` -> a list of image specs."""
    specs = [styles] if isinstance(styles, str) else list(styles) if OmegaConf.is_list(styles) else None
    if not specs or not all(isinstance(spec, str) for spec in specs):
        raise StylenetError(f"styles must be an image or a list of images: styles=painting.jpg, or "
                            f"styles=[a.jpg,b.jpg] style_weights=[0.7,0.3]; got {styles!r}")
    return specs


def _whole(value: object, minimum: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: what ``init`` may be
INIT_CHOICES = "one of content, noise, style or an image file (a path or demo:<name>)"
#: setting -> (whether a value is acceptable, what it must be): types first, so that a bad value is one
#: line naming the setting rather than a traceback from deep inside the optimiser (ranges: check_settings).
SETTING_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {
    **{key: (lambda v: v is None or _whole(v, 1), "a whole number of pixels >= 1 or null")
       for key in ("size", "style_size")},
    **{key: (_whole, "a whole number") for key in ("iterations", "history_size", "scales")},
    **{key: (lambda v: _whole(v, 0), "a whole number >= 0 (0: never)") for key in ("save_every", "image_every")},
    "lr": (lambda v: v is None or _number(v), "a number or null"),
    "style_weights": (lambda v: v is None or (OmegaConf.is_list(v) and all(map(_number, v))),
                      "a list of numbers, one per style image (e.g. [0.7,0.3]), or null"),
    **{key: (lambda v: isinstance(v, bool), "true or false") for key in ("preserve_color", "progress")},
    "init": (lambda v: isinstance(v, str), INIT_CHOICES),
    "output": (lambda v: v is None or isinstance(v, str), "a file name or null (the run folder's <name>.png)"),
    "device": (lambda v: isinstance(v, str), "auto, cpu, cuda or cuda:N"),
}


def start_image(init: str, max_pixels: int | None) -> str | torch.Tensor:
    """``init``: one of :data:`~stylenet.gatys.INITS`, or the image it names (an interrupted run's
    result, to go on from it); a name that is neither is refused as a setting, not as a missing file."""
    from stylenet.gatys import INITS, read_image
    from stylenet.image import resolve_image_path

    if init in INITS:
        return init
    if not init.startswith("demo:") and not resolve_image_path(init).exists():
        raise StylenetError(f"init must be {INIT_CHOICES}, got {init!r}")
    return read_image(init, "init", max_pixels)


def check_setting_types(cfg: DictConfig) -> None:
    """A one-line :class:`StylenetError` for the first setting of the wrong type (see SETTING_TYPES)."""
    for key, (acceptable, what) in SETTING_TYPES.items():
        if not acceptable(cfg[key]):
            raise StylenetError(f"{key} must be {what}, got {cfg[key]!r}")


def progress_reporter(cfg: DictConfig, run_dir: Path, board: Callable[[], SummaryWriter], bar: tqdm
                      ) -> Callable[[Progress], None]:
    """The per-iteration callback: loss curves and snapshots to TensorBoard (``board()``: its writer, made at
    the first call), ``steps/`` PNGs every ``save_every`` iterations, and the progress bar."""
    from stylenet.image import save_image

    def on_iteration(progress: Progress) -> None:
        try:  # a full disk: the result so far is still written (run)
            writer = board()
            for name, value in progress.terms.items():
                writer.add_scalar(f"loss/{name}", value, progress.iteration)
            if cfg.image_every and progress.iteration % cfg.image_every == 0:
                writer.add_image("image", progress.image.cpu(), progress.iteration)
            if cfg.save_every and progress.iteration % cfg.save_every == 0:
                save_image(run_dir / "steps" / f"iter_{progress.iteration:05d}.png", progress.image.cpu())
        except StylenetError as err:
            raise SnapshotFailed(str(err)) from None
        except OSError as err:
            if err.errno not in NO_ROOM:
                raise
            raise SnapshotFailed(f"cannot write {err.filename or 'its TensorBoard events'}: {err.strerror}") from None
        bar.set_postfix(loss=f"{progress.terms['total']:.4g}", scale=progress.scale + 1, refresh=False)
        bar.update(1)

    return on_iteration


PROG = "stylenet-gatys"


class SnapshotFailed(Exception):
    """A ``steps/`` snapshot or TensorBoard's record could not be written (a full disk): the run stops as
    on Ctrl-C, its last image kept."""


class StoppedRun(Exception):
    """Ctrl-C or SIGTERM during the optimisation, after :func:`run` wrote the last iteration's image
    and said so; ``status`` is the exit status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def run(cfg: DictConfig, run_dir: Path, on_start: Callable[[], None] | None = None) -> int:
    """Optimise one image, writing into ``run_dir`` (Hydra's run folder); returns the exit status:
    0, or 1 when the objective became non-finite; raises :class:`StoppedRun` after Ctrl-C or SIGTERM
    during the optimisation. ``on_start`` is called once every check has passed, before anything is
    written into ``run_dir``."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from stylenet.atomic import unwritable
    from stylenet.gatys import (
        INITS,
        check_memory,
        check_settings,
        check_sizes,
        check_style_term,
        optimize_image,
        read_image,
        resize_to,
        resolve_device,
        with_content_chroma,
    )
    from stylenet.image import check_output_path, long_side_shape, resolve_image_path, save_image
    from stylenet.losses import PerceptualLoss, style_blend

    for key in ("content", "styles"):
        if OmegaConf.is_missing(cfg, key):
            raise StylenetError(f"{key} is required: stylenet-gatys content=photo.jpg styles=painting.jpg")
    check_run_name(cfg.name, "it names the run's folder and its picture")
    check_setting_types(cfg)
    output = Path(cfg.output) if cfg.output else run_dir / f"{cfg.name}.png"
    reason = unwritable(output)  # refused now, not after the optimisation
    if reason is not None:
        raise StylenetError(f"cannot write output {str(output)!r}: {reason}")
    check_output_path(output)
    check_seed(cfg.seed, "seed")
    inputs = [("content", cfg.content), *(("styles", spec) for spec in style_specs(cfg.styles))]
    if cfg.init not in INITS:
        inputs.append(("init", cfg.init))
    for key, spec in inputs:
        if resolve_image_path(spec).resolve() == output.resolve():
            raise StylenetError(f"output {str(output)!r} is the {key} image: refusing to overwrite an input")
    earlier = [f"{name}/" for name in ("tensorboard", "steps", "checkpoints")
               if (run_dir / name).is_dir() and any((run_dir / name).iterdir())]
    earlier += sorted(path.name for path in run_dir.glob("*.safetensors")) + [
        name for name in ("quality.json",) if (run_dir / name).exists()]  # a training run's
    if earlier:  # its curves and snapshots would mix with this run's, its result be replaced
        raise StylenetError(f"{str(run_dir)!r} already holds a run ({', '.join(earlier)}): "
                            "give another hydra.run.dir (hydra.sweep.dir for -m)")
    settings = {key: cfg[key] for key in ("iterations", "optimizer", "lr", "history_size", "scales")}
    check_settings(**settings)
    style_blend(cfg.style_weights, len(style_specs(cfg.styles)))
    device = resolve_device(cfg.device)
    max_pixels = cfg.max_pixels  # (no null for "none": Pillow's own bound would still refuse, naming no setting)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise StylenetError(f"max_pixels must be a whole number >= 1, got {max_pixels!r}")
    allow_pixels(max_pixels)
    content = read_image(cfg.content, "content", max_pixels)
    styles = [read_image(spec, "style", max_pixels) for spec in style_specs(cfg.styles)]
    settings["init"] = start_image(cfg.init, max_pixels)
    height, width = long_side_shape(*content.shape[-2:], cfg.size)
    try:
        loss = PerceptualLoss(**OmegaConf.to_container(cfg.loss, resolve=True)).to(device)
    except TypeError as err:
        raise StylenetError(f"loss: {err}") from None
    check_style_term(loss, "loss=offline, perceptual or gatys_vgg19 (with loss.style_weight > 0)")
    check_memory(loss, height, width, cfg.optimizer, cfg.history_size, device)
    style_shapes = [long_side_shape(*style.shape[-2:], cfg.style_size or max(height, width)) for style in styles]
    for style_height, style_width in style_shapes:  # their Grams are one forward pass each: no optimiser state
        check_memory(loss, style_height, style_width, None, 0, device, setting="style_size")
    content = resize_to(content, height, width)
    styles = [resize_to(style, *shape) for style, shape in zip(styles, style_shapes, strict=True)]
    check_sizes((height, width), cfg.scales, styles, loss)

    if on_start is not None:
        on_start()
    writers: list[SummaryWriter] = []

    def board() -> SummaryWriter:
        """The TensorBoard writer, made when the first iteration ends (or the run does): a run stopped
        before then has written nothing, as it says, and its folder takes a run again."""
        if not writers:
            writers.append(SummaryWriter(str(run_dir / "tensorboard")))
            writers[0].add_image("content", content)
            for index, style in enumerate(styles):
                writers[0].add_image(f"style/{index}", style)
        return writers[0]

    bar = tqdm(total=cfg.iterations * cfg.scales, desc="gatys", unit="it", file=sys.stderr,
               disable=not cfg.progress, dynamic_ncols=True)
    report = progress_reporter(cfg, run_dir, board, bar)
    latest: list[Progress] = []  # the last finished iteration, written if the run is stopped

    def on_iteration(progress: Progress) -> None:
        latest[:] = [progress]
        report(progress)

    started = time.perf_counter()
    try:
        result = optimize_image(content, styles, loss, style_weights=cfg.style_weights, **settings,
                                preserve_color=cfg.preserve_color, seed=cfg.seed, callback=on_iteration)
    except (KeyboardInterrupt, Terminated, SnapshotFailed) as stop:
        bar.close()
        if not latest:
            message = "before the first iteration ended; nothing written"
        else:
            image = resize_to(latest[0].image.cpu(), height, width)  # a coarse scale's, at full size
            if cfg.preserve_color:  # the content's own colours at full size, not a coarse scale's upsampled
                image = with_content_chroma(image, content)
            save_image(output, image)
            with contextlib.suppress(OSError):  # a full disk's TensorBoard: the picture itself is written
                board().add_image("final", image, latest[0].iteration)
            # output= named: the new run must write elsewhere (an init image is never overwritten)
            elsewhere = f" and another output=, not {output.name}" if cfg.output else ""
            message = (f"after iteration {latest[0].iteration} of {latest[0].total}; wrote its image to {output} "
                       f"(a new run goes on from it with init={output}{' scales=1' if cfg.scales > 1 else ''}"
                       f"{elsewhere})")
        for writer in writers:
            with contextlib.suppress(OSError):
                writer.close()
        if isinstance(stop, SnapshotFailed):
            report_refusal(PROG, f"{stop}; the run stopped {message}")
            raise StoppedRun(1) from None
        how, status = stopped_by(stop)
        report_refusal(PROG, message, label=how, level=logging.WARNING)
        raise StoppedRun(status) from None
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    save_image(output, result.image.cpu())
    board().add_image("final", result.image.cpu(), result.iterations)
    board().close()
    if result.stopped:
        report_refusal(PROG, f"{result.stopped}; wrote it to {output}")
        return 1
    log.info("wrote %s: %d %s iterations (%d objective evaluations) in %.1f s on %s, objective %.4g -> %.4g%s",
             output, result.iterations, cfg.optimizer, result.evaluations, seconds, device, result.history[0],
             result.terms["total"], " (from the coarsest scale's start)" if cfg.scales > 1 else "")
    return 0


@hydra.main(config_path=config_dir(), config_name="gatys", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from stylenet.checkpoints import run_folder_lock

    sweep_job = HydraConfig.get().mode == RunMode.MULTIRUN
    EARLIER_RECORD.note_launch(Path(HydraConfig.get().runtime.output_dir))
    tolerate_any_file_name_in_log_files()
    try:
        check_added_keys(cfg, HydraConfig.get())  # +iteratons=5 ran the default iterations without a word
        if sweep_job:
            claim_sweep_output(cfg, Path(HydraConfig.get().runtime.output_dir), HydraConfig.get().job.num)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        # a scheduler's stop: the last iteration's image is kept, as on Ctrl-C; two launches in one second share
        # the default folder: the second is refused, not a writer of the first's picture
        with sigterm_as_terminated(), run_folder_lock(run_dir, PROG), no_room_as_error():
            status = run(cfg, run_dir, on_start=EARLIER_RECORD.started)
    except StylenetError as err:  # in a folder of another run: its gatys.log still ends with that run's ending
        report_refusal(PROG, str(err), to_log=not EARLIER_RECORD.held)
        EARLIER_RECORD.restore()  # refused: the folder keeps the record of the run that made it
        if not sweep_job:
            sys.exit(2)
        FAILED_SWEEP_JOBS.append(f"#{HydraConfig.get().job.num}")  # the other jobs still run
        return
    except StoppedRun as stop:  # during the optimisation: run() wrote the last image and said so
        sys.exit(stop.status)
    except (KeyboardInterrupt, Terminated) as stop:  # outside the optimisation
        how, status = stopped_by(stop)
        report_refusal(PROG, "the run did not finish", label=how, level=logging.WARNING,
                       to_log=not EARLIER_RECORD.held)
        EARLIER_RECORD.restore()
        sys.exit(status)
    if status and not sweep_job:
        sys.exit(status)
    if status:  # one job of a sweep: the others still run
        FAILED_SWEEP_JOBS.append(f"#{HydraConfig.get().job.num}")


def claim_sweep_output(cfg: DictConfig, run_dir: Path, job: int) -> None:
    """Refuse a sweep's job whose result file an earlier job of the sweep wrote (``output=`` the same in every
    job): it would replace that job's result. Jobs a launcher runs in this process are seen; each job's own
    folder (no ``output=``) never collides."""
    output = os.path.realpath(cfg.output if cfg.output else run_dir / f"{cfg.name}.png")
    if output in SWEEP_OUTPUTS:
        raise StylenetError(f"output={cfg.output} is job #{SWEEP_OUTPUTS[output]}'s result in this sweep: give each "
                            "job its own (sweep output= too, or put ${hydra:job.num} in it), or leave it out")
    SWEEP_OUTPUTS[output] = job


#: The result files of this process's sweep (``stylenet-gatys -m``), and the job that wrote each.
SWEEP_OUTPUTS: dict[str, int] = {}
#: The Hydra record of the run folder the command line names, before this launch (:class:`EarlierRecord`).
EARLIER_RECORD = EarlierRecord()
#: The jobs of this process's sweep (``stylenet-gatys -m``) that failed, each already reported.
FAILED_SWEEP_JOBS: list[str] = []


def main() -> None:
    launch_hydra_app(PROG, hydra_main, EARLIER_RECORD, FAILED_SWEEP_JOBS, Path(config_dir()) / "gatys.yaml")


if __name__ == "__main__":
    main()
