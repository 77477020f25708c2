"""``stylenet-train``: the Hydra application that trains a model (configs/train.yaml).

Builds, in this order so that bad settings fail before any data is read or any step runs: the
task (loss network weights, style image, network), the data module (lists the files), then the
Lightning trainer with its logger and callbacks. A style run ends with the exported model, a stylized
held-out photo and its quality report (``figure.png``, ``quality.md``, ``quality.json``:
:func:`stylenet.report.training_report`); a multirun (``-m``) ends with one contact sheet and table
(:mod:`stylenet.sweep`), and there ``resume=auto`` looks only in the job's own folder: the folders
beside it are the sweep's other jobs.

Exit status: 0 done; 2 a bad setting, file or training error (one line on stderr, e.g. a non-finite
loss or a dead DataLoader worker, with the step or file named); 143 SIGTERM and 130 Ctrl-C, after
saving ``checkpoints/last.ckpt`` at the current step (``resume=auto``, the default, continues from it; after
the last step, before the model file or report is written, ``resume=auto`` in the run folder writes them).
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import GrammarParseError, InterpolationResolutionError

from stylenet import StylenetError
from stylenet.atomic import no_room_as_error, unwritable
from stylenet.cli import (
    EarlierRecord,
    allow_pixels,
    launch_hydra_app,
    report_refusal,
    tolerate_any_file_name_in_log_files,
)
from stylenet.errors import EveryRankError, check_seed, describe, first_line, first_rank
from stylenet.styles import check_run_name, style_name_of

# Lightning 2.6 on torch 2.14 warns about torch's pytree API on every step; it is not actionable here.
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # (a FutureWarning, once a DeprecationWarning)
# The DDP presets' broadcast_buffers=false, which torch 2.13 renamed: the old name is kept for torch 2.6 to 2.12.
warnings.filterwarnings("ignore", message=r"`broadcast_buffers` is deprecated")
# The frozen VGG inside the loss is in eval mode on purpose (VGGFeatures.train is a no-op).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", module="pytorch_lightning")


# ``${style_name:<image>}`` in the configs: a style's default name, its image file's (stylenet.styles.style_name_of), so
# a model of painting.jpg is not named after a preset
OmegaConf.register_new_resolver("style_name", style_name_of, replace=True)


def config_dir() -> str:
    """The configs folder: inside the installed package, or the checkout's top-level ``configs/``."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"stylenet configs not found next to {package}")


def model_options(super_resolution: bool) -> list[str]:
    """The ``model=`` options of one task: super-resolution networks have a ``factor`` (``sr``'s, or
    their own on top of it)."""
    options = {path.stem: OmegaConf.load(path) for path in sorted(Path(config_dir(), "model").glob("*.yaml"))}
    return [name for name, option in options.items()
            if ("factor" in option or "sr" in option.get("defaults", [])) == super_resolution]


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces our one-line errors (and wrong setting names)
    instead of Hydra's multi-line wrapper."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf.errors import MissingMandatoryValue

    try:
        return instantiate(node, **kwargs)
    except MissingMandatoryValue as err:
        raise StylenetError(f"setting {err.full_key} is required (pass {err.full_key}=...)") from None
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, StylenetError):
            raise cause from None
        if isinstance(cause, TypeError):  # an unknown or missing setting name
            raise StylenetError(f"{node.get('_target_')}: {cause}") from None
        if isinstance(cause, (ValueError, ImportError)) and "accelerator" in node:  # the Trainer's: precision=foo
            # (or one whose package is missing: transformer-engine)
            raise StylenetError(f"trainer: {first_line(cause)}") from None
        if type(cause).__name__ == "MisconfigurationException":  # Lightning's: trainer=gpu with no GPU, ...
            if "accelerator" in node:
                raise StylenetError(f"trainer: {first_line(cause)} (trainer.accelerator={node.accelerator}, "
                                    f"trainer.devices={node.get('devices')}; trainer=cpu or trainer=ddp_cpu run "
                                    "on the CPU)") from None
            raise StylenetError(f"{node.get('_target_')}: {first_line(cause)}") from None
        raise


class SweepRefusedError(StylenetError):
    """A setting no job of a sweep (``-m``) can run with: the sweep stops at its first job."""


def relaunched_ranks(trainer: Any) -> int:
    """How many processes Lightning will start by running this command line again (its subprocess-script
    launcher: local DDP on several devices, no torchrun or SLURM to start them); 0 if none."""
    from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if not isinstance(launcher, _SubprocessScriptLauncher) or launcher.cluster_environment.creates_processes_externally:
        return 0
    return launcher.num_processes - 1


def train(cfg: DictConfig, run_dir: Path, on_start: Callable[[], None] | None = None, sweep_job: bool = False) -> None:
    """Run one training job whose artefacts go to ``run_dir`` (Hydra's run folder); ``on_start`` is
    called once every check has passed, as the first step begins. ``sweep_job``: one job of ``-m``."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from stylenet.callbacks import ExportStyleModel, ResumableRun, TrainingInterrupted
    from stylenet.checkpoints import SEED_KEY, FinishedRunError, checkpoint_step, note_continued, resolve_resume

    # settings the run reads beyond the task's constructor: removed (~seed, ~style.size), a traceback after the run
    absent = object()
    for key in ("name", "seed", "resume", *(("style.size",) if "style" in cfg.task else ())):
        if OmegaConf.select(cfg, key, default=absent, throw_on_missing=False) is absent:
            raise StylenetError(f"~{key} removed {key}, which the run needs: set {key}=<value> instead")
    # ??? or null (a preset's painting, not shipped); a style of several has style.images; super-resolution none
    several = OmegaConf.select(cfg, "style.images", default=None, throw_on_missing=False) is not None
    # style=multi's list, ??? or null (a DictConfig's "in" is False for a ??? value: its keys() hold it)
    if "style" in cfg.task and "images" in cfg.style.keys() and not several:  # noqa: SIM118
        raise StylenetError("style.images is required: pass style.images=[a.jpg,b.jpg] (several styles in one "
                            "network)")
    if several and OmegaConf.is_missing(cfg.style, "image"):
        cfg.style.image = None  # a single style's preset (its ???) with several styles given: the name reads it
    if "style" in cfg.task and not several and (OmegaConf.is_missing(cfg.style, "image")
                                                or OmegaConf.select(cfg, "style.image", default="") is None):
        name = OmegaConf.select(cfg, "style.name", default=None, throw_on_resolution_failure=False)
        name = name if isinstance(name, str) and name and name != "None" else "painting"
        raise StylenetError(f"style.image is required: pass style.image=/path/to/{name}.jpg "
                            "(the presets' paintings are not shipped)")
    super_resolution = "style" not in cfg.task
    if super_resolution != ("factor" in cfg.model):  # a network of the other task: refused before Hydra's interpolation
        kind = "super-resolution" if super_resolution else "style"
        raise StylenetError(f"a {kind} run needs a {kind} network: model={', '.join(model_options(super_resolution))}")
    settings = cfg.trainer
    # a strategy's name or a DDPStrategy's _target_; Lightning picks DDP for several devices itself
    distributed = ("ddp" in str(settings.get("strategy")).lower()
                   or str(settings.get("devices", 1)) not in ("1", "auto") or int(settings.get("num_nodes") or 1) > 1)
    if (settings.get("sync_batchnorm") and settings.get("accelerator") == "cpu" and distributed
            and cfg.model.get("norm") == "batch"):  # not fit()'s traceback
        raise StylenetError("trainer.sync_batchnorm=true with model.norm=batch needs GPUs under DDP: PyTorch's "
                            "SyncBatchNorm runs on GPUs only")
    check_run_name(cfg.name, "it names the run's folder and model file")
    max_steps = cfg.trainer.get("max_steps")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:  # -1 would never end
        raise StylenetError(f"trainer.max_steps must be > 0 (the photo stream is endless: max_steps ends the run), "
                            f"got {max_steps!r}")
    limit = cfg.trainer.get("limit_train_batches")  # (an int 1 or true is one batch an epoch to Lightning)
    if limit is not None and not (isinstance(limit, float) and limit == 1.0):  # each epoch restarted the stream
        raise StylenetError(f"trainer.limit_train_batches={limit} would end epochs of the endless photo stream, each "
                            "starting it again at the same photos: trainer.max_steps ends the run")
    for setting, unit in (("val_check_interval", "steps > 0 (the photo stream has no epochs to share)"),
                          ("log_every_n_steps", "steps > 0"), ("accumulate_grad_batches", "batches > 0")):
        value = cfg.trainer.get(setting)  # log_every_n_steps=abc was fit()'s traceback, 0 logged nothing
        given = value is not None or (setting == "accumulate_grad_batches" and setting in cfg.trainer)
        if given and (isinstance(value, bool) or not isinstance(value, int) or not value > 0):
            raise StylenetError(f"trainer.{setting} must be a whole number of {unit}, got {value!r}")
    pl.seed_everything(check_seed(cfg.seed, "seed"), workers=True)
    task = build(cfg.task, _convert_="all")
    warm_up = task.hparams.get("identity_steps", 0)
    if warm_up >= max_steps and first_rank():  # a smoke run cut short, say
        logging.getLogger(__name__).warning(
            "trainer.max_steps=%d ends within the identity warm-up (task.identity_steps=%d): the run trains "
            "neither the style nor any other term of its objective", max_steps, warm_up)
    datamodule = build(cfg.data)
    if getattr(datamodule, "factor", None) not in (None, getattr(task, "factor", None)):  # super-resolution
        raise StylenetError(f"data.factor={datamodule.factor} but model.factor={task.factor}: they must be equal "
                            "(data.factor follows model.factor unless set)")
    if super_resolution and getattr(datamodule, "factor", None) is None:  # task=sr alone: photos, no LR inputs
        raise StylenetError("task=sr trains on low- and high-resolution pairs: use experiment=sr_x4 or "
                            "experiment=sr_x8 (data._target_=stylenet.data.SuperResolutionDataModule)")
    allow_pixels(getattr(datamodule, "max_pixels", None))  # data.max_pixels beyond Pillow's own limit (checked by now)
    datamodule.setup("fit")
    datamodule.report_path = run_dir / "skipped_images.txt"
    try:
        ckpt_path = resolve_resume(cfg.resume, cfg.ckpt_path, run_dir, cfg.name, {**task.hparams, SEED_KEY: cfg.seed},
                                   max_steps, siblings=not sweep_job)  # a sweep's other jobs are no earlier runs
        note_continued(run_dir, ckpt_path)
    except FinishedRunError:  # nothing left to train; but a run stopped before its end's files were written gets them
        missing = (None if cfg.resume != "auto" or cfg.ckpt_path is not None
                   else missing_outputs(cfg, run_dir, task, datamodule))
        if missing is None:
            raise
        logging.getLogger(__name__).warning("%s holds this run, finished, without its %s (stopped before it was "
                                            "written): writing it now", run_dir, missing)
        if first_rank():
            if missing == MODEL_FILE:  # the finished checkpoint holds the very weights the export would have saved
                from stylenet.checkpoints import run_checkpoints
                from stylenet.export import export_checkpoint

                export_checkpoint(run_checkpoints(run_dir)[0], cfg.callbacks.export.path)
            finish(cfg, run_dir, task, datamodule)
            still = missing_outputs(cfg, run_dir, task, datamodule)
            if still is not None:  # not exit 0 with nothing written, run after run; a sweep passes over it
                raise FinishedRunError(f"{str(run_dir)!r} holds this run, finished, but its {still} cannot be "
                                       "written: see the warnings above") from None
        return
    settings = {name: node for name, node in (cfg.get("callbacks") or {}).items() if node}  # none after ~callbacks
    callbacks = [build(node) for node in settings.values()]
    for name, built in zip(settings, callbacks, strict=True):
        if not isinstance(built, pl.Callback):  # a preset's settings left of one removed with ~callbacks.<name>
            raise StylenetError(f"callbacks.{name} is no callback (it has no _target_); remove it with "
                                f"~callbacks.{name} or give it a _target_")
        folder = getattr(built, "dirpath", None)  # a checkpoint folder not writable failed at the first save
        reason = unwritable(Path(folder) / "last.ckpt") if isinstance(built, ModelCheckpoint) and folder else None
        if reason:
            raise StylenetError(f"callbacks.{name}: cannot write checkpoints in {str(folder)!r}: {reason}")
        interval = getattr(built, "_train_time_interval", None)  # 0 read as "off" saved after every step
        if interval is not None and interval.total_seconds() <= 0:
            raise StylenetError(f"callbacks.{name}.train_time_interval must be longer than 0, got {interval}; "
                                f"callbacks.{name}=null turns these saves off")
    base = task.hparams.get("base")  # task=add_style: the model file that grows a style
    for callback in callbacks:
        if base and isinstance(callback, ExportStyleModel) and callback.path.resolve() == Path(base).resolve():
            raise StylenetError(f"the run would write its model file over task.base {base!r}: give another "
                                "name= or hydra.run.dir")
    refuse_overwriting(run_dir, callbacks, str(cfg.name))
    # ~logger on the command line: no TensorBoard (Lightning's logger=False)
    # name=2024 is a number to Hydra, and so is logger.name=2024: TensorBoard joins them into a path
    logger_settings: dict[str, Any] = {key: str(cfg.logger[key]) for key in ("name", "version")
                                       if isinstance(cfg.logger.get(key), int)} if cfg.get("logger") else {}
    if ckpt_path is not None and cfg.get("logger") and str(cfg.logger.get("_target_")).endswith("TensorBoardLogger"):
        # a run killed after its last checkpoint (kill -9, a lost node) logged steps it trains again: TensorBoard
        # hides the earlier files' points from the checkpoint's step on (our step N is its N - 1: the first logged
        # again is the checkpoint's step)
        logger_settings["purge_step"] = checkpoint_step(Path(ckpt_path))
    logger = build(cfg.logger, **logger_settings) if cfg.get("logger") else False
    # Lightning counts val_check_interval in batches: with +trainer.accumulate_grad_batches=N, N of them a step
    interval, accumulated = cfg.trainer.get("val_check_interval"), cfg.trainer.get("accumulate_grad_batches") or 1
    in_batches = {"val_check_interval": interval * accumulated} if interval is not None and accumulated > 1 else {}
    trainer = build(cfg.trainer, callbacks=callbacks, logger=logger, **in_batches)
    relaunched = relaunched_ranks(trainer) if sweep_job else 0
    if relaunched:  # each would run the whole sweep again (and the jobs after the first on one process)
        raise SweepRefusedError(
            f"a sweep (-m) cannot give its jobs the {relaunched + 1} processes Lightning starts "
            "itself (trainer.devices): it starts them by running the command line again, which would launch the "
            "sweep again; run each job as a command of its own, or start the processes with torchrun or srun")
    try:  # TensorBoard reads its settings as its writer starts, in fit(): a bad one is a traceback there
        _ = logger and logger.experiment  # (started after every refusal: a refused run leaves no events file)
    except (TypeError, ValueError, OSError) as err:
        raise StylenetError(f"logger: {first_line(err)}") from None
    if on_start is not None:
        on_start()
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:  # Lightning's stop (on SIGTERM or Ctrl-C) exits 0, which a scheduler takes for success
        stopping = next((c.stopping for c in callbacks if isinstance(c, ResumableRun)), None)
        raise TrainingInterrupted(stopping or signal.SIGTERM) from None
    except SystemExit as stop:  # a second Ctrl-C: Lightning ends its KeyboardInterrupt with exit 1, a bad command's
        if isinstance(stop.__context__, KeyboardInterrupt) and not isinstance(stop, TrainingInterrupted):
            raise KeyboardInterrupt from None  # hydra_main's one line and exit 130
        raise
    except Exception as err:  # a dead or stuck DataLoader worker: name the file it was decoding
        explained = datamodule.explain_failure(err)
        if explained is None:
            raise
        raise explained from err
    if trainer.is_global_zero:
        finish(cfg, run_dir, task, datamodule)


#: What :func:`finish` writes beside the model file, in the run folder (:func:`stylenet.report.training_report`).
REPORT_FILES = ("figure.png", "quality.md", "quality.json")


def refuse_overwriting(run_dir: Path, callbacks: list[Any], name: str) -> None:
    """Refuse, before any step, a run whose model file or report is there already while the run folder
    holds no checkpoints: its end would write over another run's work without a word. A folder with
    checkpoints holds this very run, continued (:func:`stylenet.checkpoints.check_own_checkpoints`
    refuses any other), whose files it may well rewrite."""
    from stylenet.callbacks import ExportStyleModel
    from stylenet.checkpoints import run_checkpoints

    models = [callback.path for callback in callbacks if isinstance(callback, ExportStyleModel)]
    if not models or run_checkpoints(run_dir):  # no model file, no report (finish)
        return
    for path in [*models, *(run_dir / name for name in REPORT_FILES)]:
        if not path.exists():
            continue
        # what moves it: another run folder moves a report or a model file in the folder; name= only the default
        # <run folder>/<name>.safetensors; callbacks.export.path a model file it puts anywhere else
        if path not in models:
            advice = "another hydra.run.dir"
        elif path.parent.resolve() != run_dir.resolve():
            advice = "callbacks.export.path another file"
        elif path.name == f"{name}.safetensors":
            advice = "another hydra.run.dir or name="
        else:
            advice = "another hydra.run.dir or callbacks.export.path"
        raise StylenetError(f"{str(path)!r} exists already and this run would overwrite it: give {advice}, or "
                            "remove it")


#: What :func:`missing_outputs` calls the model file that a finished run lacks.
MODEL_FILE = "model file"


def missing_outputs(cfg: DictConfig, run_dir: Path, task: Any, datamodule: Any) -> str | None:
    """What a finished run's folder lacks of what its end writes (None: nothing), as a warning names it.

    A SIGTERM or a kill came after the last checkpoint but before the export (no model file, nor its
    report), or after the export but before the report (:func:`missing_report`). ``resume=auto`` there
    writes it instead of refusing the finished run for ever. A model file gone from beside its report
    was moved away after the run, not cut short: that run is finished."""
    export = OmegaConf.select(cfg, "callbacks.export.path")
    if export is None:
        return None
    report = missing_report(cfg, run_dir, task, datamodule)
    if Path(export).is_file():
        return report
    return MODEL_FILE if report is not None or not datamodule.val_files else None


def missing_report(cfg: DictConfig, run_dir: Path, task: Any, datamodule: Any) -> str | None:
    """What :func:`finish` writes last, if the folder lacks it: a style's ``quality.json`` (one per style
    for several), super-resolution's upscaled held-out photo; None without held-out photos."""
    if not datamodule.val_files:
        return None
    if "style" not in cfg.task:  # <photo>_x<factor>.png of the first held-out photo that can be read
        kept = any((run_dir / f"{photo.stem}_x{task.factor}.png").is_file() for photo in datamodule.val_files)
        return None if kept else "upscaled held-out photo"
    styles = task.hparams.get("styles") or []
    # a style whose picture is gone (a base's, trained elsewhere) gets no report: finish() warned of it
    folders = [run_dir / "styles" / record["name"] for record in styles if picture_found(record)] if styles \
        else [run_dir]
    return "report" if any(not (folder / "quality.json").is_file() for folder in folders) else None


def picture_found(record: dict[str, Any]) -> bool:
    """Whether a style record's picture (``demo:<name>`` or a path) is a file that is there."""
    from stylenet.image import resolve_image_path

    try:
        return resolve_image_path(str(record.get("image"))).is_file()
    except (StylenetError, OSError):
        return False


def finish(cfg: DictConfig, run_dir: Path, task: Any, datamodule: Any) -> None:
    """What a run leaves beside its model file: a stylized (or upscaled) held-out photo and, for a style,
    the quality report. Never fails the run, whose model is saved: a held-out photo that cannot be read
    is named in a warning and in ``skipped_images.txt``, and the next one is used."""
    from stylenet.image import ImageError, load_rgb, save_image
    from stylenet.inference import InferenceModel
    from stylenet.metrics import degrade, modcrop
    from stylenet.modelfile import read_model

    log = logging.getLogger(__name__)
    export = OmegaConf.select(cfg, "callbacks.export.path")
    if export is None:
        log.info("callbacks.export is off: no model file, so no stylized photo and no quality report")
        return
    photos, first = list(datamodule.val_files), None
    single_style = "style" in (OmegaConf.select(cfg, "task") or {}) and not task.hparams.get("styles")
    if single_style:  # the style picture held out too (a folder of photos and paintings): measured, it moves nothing
        from stylenet.image import resolve_image_path
        from stylenet.report import held_out_photos

        try:
            shown = held_out_photos(photos, resolve_image_path(str(cfg.style.image)))
        except StylenetError as err:
            log.warning("no stylized photo and no quality report: %s", err)
            return
    for photo in shown if single_style else photos:
        try:
            first = photo, load_rgb(photo)
            break
        except ImageError as err:
            datamodule.record_bad_held_out(str(err))
    if first is None:
        if datamodule.val_files:  # (none held out: the data module has said so)
            log.warning("no stylized photo and no quality report: none of the %d held-out photo(s) can be read "
                        "(%s)", len(datamodule.val_files), datamodule.report_path or "the warnings above")
        return
    if task.hparams.get("styles"):  # several styles
        from stylenet.style_reports import style_reports

        style_reports(run_dir, export, photos, int(cfg.style.size), on_error=datamodule.record_bad_held_out,
                      shown=first[0])
        return
    photo, image = first
    model = read_model(export)
    label = model.metadata.get("style_name") or cfg.style.name  # (style.name=null: the picture's, as the file's)
    if model.task == "sr":  # upscale the held-out photo's own low-resolution version
        factor = model.net.scale
        if min(image.shape[-2:]) < factor:
            log.warning("no upscaled held-out photo: %s is %dx%d px, smaller than the factor %d", photo,
                        image.shape[-1], image.shape[-2], factor)
            return
        image, label = degrade(modcrop(image, factor).unsqueeze(0), factor)[0], f"x{factor}"
    done = "upscaled" if model.task == "sr" else "stylized"
    try:  # at the photo's own size, within stylenet-stylize's memory budget (one pass of a camera's photo: GBs)
        output = InferenceModel(model.net, precision="fp32").transform(image)
        out = save_image(run_dir / f"{photo.stem}_{label}.png", output)
    except (StylenetError, RuntimeError) as err:  # out of memory all the same: the model is saved
        log.warning("no %s held-out photo: %s", done, first_line(err))
    else:
        log.info("%s %s -> %s", done, photo.name, out)
    if model.task == "style":  # photo | style | network for every held-out photo, measured
        from stylenet.report import training_report

        try:
            paths, verdict = training_report(run_dir, export, cfg.style.image, photos, int(cfg.style.size),
                                             on_error=datamodule.record_bad_held_out)
        except (StylenetError, OSError) as err:  # the model is saved: a missing figure fails nothing
            log.warning("no quality report: %s", first_line(err))
        else:
            log.info("quality of the held-out photos: targets %s; %s, %s", verdict, paths["table"],
                     paths.get("figure"))


#: The jobs of this process's sweep (``stylenet-train -m``) that failed, each already reported.
FAILED_SWEEP_JOBS: list[str] = []
#: The Hydra record of the run folder the command line names, before this launch (:class:`EarlierRecord`).
EARLIER_RECORD = EarlierRecord()


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from stylenet.checkpoints import FinishedRunError, run_folder_lock
    from stylenet.config_check import check_group_choices, unresolvable_setting

    sweep_job = HydraConfig.get().mode == RunMode.MULTIRUN
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    EARLIER_RECORD.note_launch(run_dir)
    tolerate_any_file_name_in_log_files()
    try:
        try:
            check_group_choices(cfg)
            with run_folder_lock(run_dir), no_room_as_error():
                train(cfg, run_dir, on_start=EARLIER_RECORD.started, sweep_job=sweep_job)
        except (InterpolationResolutionError, GrammarParseError) as err:  # a ${...} that does not resolve, met
            where = err.full_key or unresolvable_setting(cfg)                # where it is read
            raise StylenetError(f"setting {where}: {first_line(err)}" if where else first_line(err)) from None
    except StylenetError as err:
        EARLIER_RECORD.restore()  # refused: the folder keeps the record of the run that made it
        if sweep_job and isinstance(err, FinishedRunError) and EARLIER_RECORD.relaunched():  # to finish a cut sweep
            print(f"stylenet-train: sweep job #{HydraConfig.get().job.num} in {str(run_dir)!r} is finished already",
                  file=sys.stderr)
            return
        report_refusal("stylenet-train", str(err), to_stderr=not isinstance(err, EveryRankError) or first_rank())
        if not sweep_job or isinstance(err, SweepRefusedError):
            sys.exit(2)
        # one job of a sweep: the others still run and the sweep's report is written (stylenet.sweep);
        # main() exits non-zero at the end
        FAILED_SWEEP_JOBS.append(f"#{HydraConfig.get().job.num}")
    except Exception as err:  # a sweep job's unforeseen failure (a batch size out of GPU memory): Hydra re-raised
        if not sweep_job:     # it, and the other jobs never ran and the sweep's report was never written
            raise
        report_refusal("stylenet-train", describe(err, f"sweep job #{HydraConfig.get().job.num} ({run_dir})"))
        FAILED_SWEEP_JOBS.append(f"#{HydraConfig.get().job.num}")
    except KeyboardInterrupt:  # before the first step (ResumableRun handles Ctrl-C from then on), or a second one
        if first_rank():  # every rank of a DDP run gets here on a second Ctrl-C: one line
            print("stylenet-train: interrupted", file=sys.stderr)
        EARLIER_RECORD.restore()
        sys.exit(130)


def main() -> None:
    launch_hydra_app("stylenet-train", hydra_main, EARLIER_RECORD, FAILED_SWEEP_JOBS, Path(config_dir()) / "train.yaml")


if __name__ == "__main__":
    main()
