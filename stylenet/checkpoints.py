"""Lightning checkpoints that survive crashes, and are found again by ``resume=auto|must|never``.

Lightning writes checkpoints through an fsspec transaction: on a local disk that is a temporary file
in the system temp folder, no fsync, then ``shutil.move``, which is a copy (not an atomic rename)
whenever /tmp is another filesystem. :class:`AtomicCheckpointIO` writes through
:func:`stylenet.atomic.atomic_write` instead (next to the target, fsync, rename), so a crash leaves
the previous checkpoint or the new one, never half of one. The temporary name is hidden, and
:func:`run_checkpoints` skips hidden files, so nothing mistakes what a kill during a write
leaves behind for a checkpoint.

A kill -9, the OOM killer or a power cut lose what came after the newest checkpoint: the default
callbacks (configs/callbacks/default.yaml) write one every 1000 steps and rewrite ``last.ckpt`` every
10 minutes of training as well, whichever comes first.

Lightning's ``ckpt_path="last"`` silently starts from scratch when there is no checkpoint, and Hydra
gives every run a new folder; :func:`resolve_resume` adds what a user expects instead: find the
newest checkpoint of this experiment that actually loads, wherever the previous run put it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from fsspec.utils import get_protocol
from pytorch_lightning.plugins.io import TorchCheckpointIO

from stylenet.atomic import atomic_write, remove_cut_writes
from stylenet.errors import StylenetError, load_failure
from stylenet.modelfile import first_non_finite

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "must", "never")
#: what every Lightning training checkpoint holds; a file without these cannot restore a run.
REQUIRED_KEYS = ("state_dict", "optimizer_states", "global_step", "loops")
#: hyper-parameters that decide whether a checkpoint can continue this run: the network's shape
#: (else the weights do not fit), the style image (else it would train another style), adding a
#: style, the model file it extends (else its frozen weights would be another file's), and the
#: objective and the style's targets (else the model file would record a loss that trained only some of
#: its steps: the SR paper's per-pixel baseline, ``loss=pixel``, would continue the feature-loss run of
#: its name). Dotted keys look inside a setting (``style.size``: the Gram targets' scale).
IDENTITY_HPARAMS = ("model", "style_sha256", "base_sha256", "loss", "temporal_weight", "saturation_weight",
                    "identity_steps", "style.size")
#: what a checkpoint that predates an identity key had (style checkpoints before the temporal term: none)
IDENTITY_DEFAULTS = {"temporal_weight": 0.0, "saturation_weight": 0.0, "identity_steps": 0}
#: the hyper-parameter holding the sha256 of a ``loss.weights`` file (``ImageTask.record_loss_weights``), by which
#: a resume compares the file, not by its path as typed (:func:`without_weights_path`)
WEIGHTS_SHA256 = "loss_weights_sha256"
#: key under which :class:`stylenet.callbacks.ResumableRun` stamps the experiment name.
EXPERIMENT_KEY = "stylenet_experiment"
#: key under which it stamps the run's ``seed``; a run passes its own to :func:`checkpoint_problem` in ``hparams``
SEED_KEY = "stylenet_seed"
#: ``ckpt_path`` names that Lightning resolves itself, which stylenet's callbacks give nothing to find
#: (``last`` is ours: see :func:`resolve_resume`).
LIGHTNING_CKPT_NAMES = ("hpc", "best", "registry")
#: The file both checkpoint callbacks rewrite with each save (configs/callbacks/default.yaml, ``save_last``).
LAST = "last.ckpt"
#: How :func:`checkpoint_problem` starts the reason of a checkpoint at or past ``max_steps``.
FINISHED = "a finished run"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints written atomically (temporary name, fsync, rename); loads never unpickle code.

    Remote paths (``s3://`` and the like) keep Lightning's own fsspec transaction."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or get_protocol(str(path)) != "file":
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        # serialised in memory, then written by Python: torch's own file writer turns a full disk into a
        # RuntimeError ("unexpected pos"), where Python's is the OSError that names the file and the reason
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(Path(path), lambda tmp: tmp.write_bytes(buffer.getbuffer()))

    def load_checkpoint(self, path: str | Path, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Always ``weights_only=True``, whatever the caller or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says:
        our checkpoints hold only tensors and primitives, and a checkpoint may come from anyone. Onto the
        CPU unless the caller maps it elsewhere (Lightning passes no ``map_location``, and torch.load's
        default would put each tensor back on the device it was saved from): a GPU run's checkpoint
        then resumes on a machine without one, and DDP's processes do not all load it onto the first GPU."""
        return super().load_checkpoint(path, map_location="cpu" if map_location is None else map_location,
                                       weights_only=True)


def checkpoint_problem(path: Path, name: str | None, hparams: dict[str, Any],
                       max_steps: int | None = None) -> str | None:
    """Why ``path`` cannot resume this run (None when it can).

    It must load with ``weights_only=True``, hold a full training state with finite weights, belong
    to experiment ``name`` (when given and recorded), have the same :data:`IDENTITY_HPARAMS` (a
    ``loss.weights`` file by its content: :func:`without_weights_path`) and
    learning-rate schedule (:func:`schedule_problem`) and, when ``max_steps`` is given, be short of
    it: a finished run has nothing left to continue, and "resuming" it would train no step and export
    nothing. "Finished" is said only of a checkpoint that otherwise fits, a finished run of this very
    configuration (:func:`first_valid` ends its search there)."""
    if path.suffix.lower() == ".safetensors":
        return "a model file, not a training checkpoint (a run resumes from its checkpoints/*.ckpt)"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, I/O error: all mean "not a checkpoint"
        return f"unreadable ({load_failure(err, path).split('. ')[0]})"
    if (not isinstance(checkpoint, dict) or not all(key in checkpoint for key in REQUIRED_KEYS)
            or not isinstance(checkpoint["state_dict"], dict)):
        return f"not a Lightning training checkpoint (needs {', '.join(REQUIRED_KEYS)})"
    bad = first_non_finite(checkpoint["state_dict"])
    if bad:
        return f"non-finite weights in {bad}"
    recorded = checkpoint.get(EXPERIMENT_KEY)
    if name is not None and recorded is not None and recorded != name:
        return f"belongs to experiment {recorded!r}, not {name!r}"
    seed, before = hparams.get(SEED_KEY), checkpoint.get(SEED_KEY)
    if seed is not None and before is not None and before != seed:  # its data stream and crops are another's
        return f"trained with another seed ({before}, this run has seed={seed})"
    hparams = {key: value for key, value in hparams.items() if key != SEED_KEY}
    saved = checkpoint.get("hyper_parameters")
    saved = saved if isinstance(saved, dict) else {}
    before, now = saved.get(WEIGHTS_SHA256), hparams.get(WEIGHTS_SHA256)
    if before and now:  # two loss.weights files: one by content, however their paths are spelled
        if before != now:
            return f"trained with another loss.weights file (sha256 {short(before)}, this run's {short(now)})"
        saved, hparams = without_weights_path(saved), without_weights_path(hparams)
    from stylenet.losses import spelt_out_layer_weights

    for key in IDENTITY_HPARAMS:
        before, now = (identity_setting(settings, key) for settings in (saved, hparams))
        if key == "loss":  # style_layer_weights: gatys and the numbers it stands for are one objective
            before, now = spelt_out_layer_weights(before), spelt_out_layer_weights(now)
        if before != now:
            if key == "style_sha256":  # two hashes say nothing to a reader: the file changed
                return f"trained with another style image (sha256 {short(before)}, this run's {short(now)})"
            return f"trained with another {key} ({setting_difference(key, before, now)})"
    schedule = schedule_problem(checkpoint, saved, hparams, max_steps)
    if schedule is None and max_steps is not None and max_steps > 0 and int(checkpoint["global_step"]) >= max_steps:
        return f"{FINISHED} (step {checkpoint['global_step']}, trainer.max_steps={max_steps})"  # a run of this one
    return schedule


def without_weights_path(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without ``loss.weights``, a file whose sha256 (:data:`WEIGHTS_SHA256`) stands for it:
    ``./vgg16.pth`` and ``/data/vgg16.pth`` are one file, and a file replaced at the same path is another.
    A keyword (``imagenet``, ``random``), or a checkpoint saved before the hash was recorded, keeps its
    path as given."""
    loss = settings.get("loss")
    if not isinstance(loss, Mapping):
        return settings
    return {**settings, "loss": {key: value for key, value in loss.items() if key != "weights"}}


def short(digest: Any) -> str:
    """A sha256 (or a list of them, one per style) cut to 12 hex digits, for a message ("none" where a
    checkpoint recorded none)."""
    if digest is None:
        return "none"
    return ", ".join(str(one)[:12] for one in digest) if isinstance(digest, list) else str(digest)[:12]


def identity_setting(settings: Mapping[str, Any], key: str) -> Any:
    """``settings[key]``, a dotted key looked up level by level; :data:`IDENTITY_DEFAULTS` (else None)
    where a level is missing."""
    value: Any = settings
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return IDENTITY_DEFAULTS.get(key)
        value = value[part]
    return value


def setting_difference(key: str, before: Any, now: Any) -> str:
    """``before`` against ``now``, for a message; of two mappings only the entries that differ
    (``loss.style_weight: 5.0, this run has 10.0``), not two whole loss configs."""
    if isinstance(before, Mapping) and isinstance(now, Mapping):
        changed = [k for k in sorted({*before, *now}, key=str) if before.get(k) != now.get(k)]
        return "; ".join(f"{key}.{k}: {before.get(k)!r}, this run has {now.get(k)!r}" for k in changed)
    if isinstance(before, list) and isinstance(now, list) and len(before) == len(now):  # one per style
        changed = [i for i, (old, new) in enumerate(zip(before, now, strict=True)) if old != new]
        return "; ".join(f"style {i + 1} of {len(now)}: {before[i]!r}, this run has {now[i]!r}" for i in changed)
    return f"{before!r}, this run has {now!r}"


def schedule_problem(checkpoint: dict[str, Any], saved: dict[str, Any], hparams: dict[str, Any],
                     max_steps: int | None) -> str | None:
    """A learning-rate schedule the checkpoint cannot continue: Lightning restores the saved scheduler
    and rate as they are, so another ``task.lr_schedule``, or a cosine decay planned over another number
    of steps, would train on at a wrong rate (0, or climbing back) without a word."""
    schedule, before = hparams.get("lr_schedule", "constant"), saved.get("lr_schedule", "constant")
    if schedule != before:
        return f"trained with another task.lr_schedule ({before!r}, this run has {schedule!r})"
    if schedule == "cosine":
        planned = [state.get("T_max") for state in checkpoint.get("lr_schedulers") or [] if isinstance(state, dict)]
        if planned != [max_steps]:
            return (f"its cosine decay was planned over {planned[0] if planned else '?'} steps, this run has "
                    f"trainer.max_steps={max_steps}")
    return None


#: the checkpoints :func:`newest_first` has warned of, once each (a launch lists a folder several times)
UNLISTABLE: set[Path] = set()


def newest_first(paths: Iterable[Path]) -> list[Path]:
    """By modification time (the name breaks ties): the order in which a run wrote them. One whose time
    cannot be read (a link to nothing, a file gone since it was listed) is skipped, with a warning once."""
    timed = []
    for path in paths:
        try:
            timed.append((path.stat().st_mtime_ns, path.name, path))
        except OSError as err:
            if path not in UNLISTABLE:
                UNLISTABLE.add(path)
                log.warning("skipping checkpoint %s: %s", path, err.strerror or err)
    return [path for *_, path in sorted(timed, key=lambda entry: entry[:2], reverse=True)]


def lock_record(run_dir: Path) -> tuple[str, str]:
    """What ``run_dir``'s :data:`LOCK_FILE` says: the program whose run holds it, as :func:`run_folder_lock`
    wrote it there ("stylenet run" where it says none), and the checkpoint that run continues
    (:func:`note_continued`; '' for none)."""
    text = ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = (run_dir / LOCK_FILE).read_text(encoding="utf-8")
    program, _, continued = text.partition("\n")
    return program.strip() or "stylenet run", continued.strip()


def lock_holder(run_dir: Path) -> str:
    """The program whose run holds ``run_dir``'s :data:`LOCK_FILE`."""
    return lock_record(run_dir)[0]


def note_continued(run_dir: Path, checkpoint: str | None) -> None:
    """Write the checkpoint this run continues into its :data:`LOCK_FILE` (the line after the program's), where
    a second launch of the same job finds it (:func:`refuse_continued_elsewhere`)."""
    from stylenet.errors import first_rank

    if checkpoint is not None and first_rank() and (run_dir / LOCK_FILE).is_file():
        with open(run_dir / LOCK_FILE, "a", encoding="utf-8") as handle:
            handle.write(f"\n{Path(checkpoint).resolve()}")


def refuse_continued_elsewhere(checkpoint: Path, run_dir: Path) -> None:
    """A job launched twice: the first launch continues ``checkpoint``'s run in a new folder, and trains there
    now. The second would continue the same checkpoint beside it, two forks of one run, and the next resume
    would keep whichever wrote last. Refused, naming the live run's folder."""
    source = checkpoint.resolve().parent.parent
    for folder in (run_dir.parent.iterdir() if run_dir.parent.is_dir() else []):
        if folder == run_dir or not folder.is_dir() or not in_use(folder):
            continue
        program, continued = lock_record(folder)
        if continued and Path(continued).parent.parent == source:
            raise StylenetError(f"the run of {str(checkpoint)!r} is being continued by another {program} in "
                                f"{str(folder)!r} now (a job launched twice?): let it end, or pass resume=never "
                                "to train afresh")


def in_use(run_dir: Path) -> bool:
    """Whether another process holds ``run_dir``'s :data:`LOCK_FILE` (:func:`run_folder_lock`): a run
    training there now, whose checkpoints are not another run's to continue."""
    try:
        import fcntl
    except ImportError:  # Windows: nothing is locked
        return False
    try:
        with open(run_dir / LOCK_FILE) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return False


def candidate_runs(run_dir: Path, siblings: bool = True) -> list[list[Path]]:
    """The ``*.ckpt`` files of this run folder, newest first, then (with ``siblings``) those of each sibling
    run folder (the run with the newest checkpoint first), one list per run.

    With the default ``hydra.run.dir=outputs/<name>/<time>`` the siblings are the earlier runs of
    the same experiment; with a custom ``hydra.run.dir`` they are the folders next to it. Hidden
    files are left out: they are the temporary files of writes that a kill interrupted."""
    folders = [run for run in run_dir.parent.iterdir() if run.is_dir() and run != run_dir] \
        if siblings and run_dir.parent.is_dir() else []
    busy = [run for run in folders if in_use(run)]  # a job launched twice: the first one's run, still training
    for run in busy:
        log.warning("skipping run folder %s: another %s is at work there", run, lock_holder(run))
    folders = [run for run in folders if run not in busy]
    siblings = [run for run in map(run_checkpoints, folders) if run]  # each newest first: run[0] is its newest
    siblings.sort(key=lambda run: (run[0].stat().st_mtime_ns, run[0].name), reverse=True)
    own = run_checkpoints(run_dir)
    return [own, *siblings] if own else siblings


def checkpoint_step(path: Path) -> int | None:
    """The training step a checkpoint was saved at; None if it cannot be read. Memory-mapped, so only
    the few bytes of the step are read, not the weights."""
    for mmap in (True, False):  # files torch saved before its zip format cannot be mapped
        try:
            return int(torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)["global_step"])
        except Exception:  # an unreadable or foreign file: no step to compare
            continue
    return None


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The ``*.ckpt`` files of one run folder, newest first (not the hidden files of cut writes): in
    the order the run wrote them, except that ``last.ckpt`` leads when it holds a later step than the
    file written last by time. Every save rewrites it last, so that can only be a copy without ``-p``
    that gave the files new times in any order; a kill between a ``step_N.ckpt`` and its rewrite of
    ``last.ckpt`` leaves the step file newer in both, and a run gone back to an earlier checkpoint
    (``ckpt_path=``) has a ``last.ckpt`` of fewer steps than its abandoned later files: time decides."""
    found = newest_first(p for p in (run_dir / "checkpoints").glob("*.ckpt") if not p.name.startswith("."))
    last = next((path for path in found if path.name == LAST), None)
    if last is not None and last != found[0]:
        last_step, newest_step = checkpoint_step(last), checkpoint_step(found[0])
        if last_step is not None and newest_step is not None and last_step > newest_step:
            found.remove(last)
            found.insert(0, last)
    return found


def first_valid(runs: Iterable[list[Path]], problem: Callable[[Path], str | None],
                finished: Callable[[Path], None] = lambda path: None) -> Path | None:
    """The first checkpoint without a problem; each skipped one is named in a warning.

    Within a run, an older checkpoint stands in for a newer one that is unreadable or diverged.
    A finished run ends the search (after ``finished`` of its checkpoint, which may refuse it): it has
    nothing left to continue, its mid-run checkpoints would silently retrain its last steps, and the
    older runs it may itself have continued are done too."""
    for run in runs:
        for path in run:
            reason = problem(path)
            if reason is None:
                return path
            log.warning("skipping checkpoint %s: %s", path, reason)
            if reason.startswith(FINISHED):
                finished(path)
                return None
    return None


#: Where a run writes its model file, as its Hydra record holds it (configs/callbacks/default.yaml).
DEFAULT_EXPORT_PATH = "${hydra:runtime.output_dir}/${name}.safetensors"


def recorded_model_file(folder: Path, name: str) -> Path | None:
    """The model file the run of experiment ``name`` in ``folder`` was to write, from its Hydra record
    (``.hydra/config.yaml``): None where it wrote none (``callbacks.export=null``), where another path was set
    (its folder is not known here) or where there is no record."""
    from omegaconf import OmegaConf

    try:
        record = OmegaConf.load(folder / ".hydra" / "config.yaml")
        export = OmegaConf.to_container(record.callbacks.export, resolve=False)
    except Exception:  # no record, or none that says
        return None
    if not isinstance(export, dict) or export.get("path") != DEFAULT_EXPORT_PATH:
        return None
    return folder / f"{name}.safetensors"


#: what a finished run's end leaves beside its model file: a style's report (one per style for several),
#: super-resolution's upscaled photo (<photo>_x4.png; not a style named x...'s <photo>_xmas.png)
REPORTS = ("quality.json", "quality", "styles/*/quality.json", "*_x[0-9].png", "*_x[0-9][0-9].png")


def refuse_unfinished_end(checkpoint: Path, run_dir: Path, name: str) -> None:
    """A finished run in another folder whose end was cut short: a SIGTERM or Ctrl-C in its last step, a
    kill during its export, left it without its model file and report. The same command run again would
    train it all afresh in a new folder; in its own folder (``hydra.run.dir``) the end is written instead.
    A model file moved away from beside its report leaves a finished run, passed over as before. (One cut
    short after its model file, before its report, is not told apart here from one that wrote no report on
    purpose: no held-out photo, the style picture held out.)"""
    folder = checkpoint.parent.parent
    model_file = recorded_model_file(folder, name)
    reported = any(any(folder.glob(pattern)) for pattern in REPORTS)
    if folder != run_dir and model_file is not None and not model_file.exists() and not reported:
        raise StylenetError(f"{str(folder)!r} holds a finished run of experiment {name!r} stopped before its model "
                            f"file was written: run again with hydra.run.dir={folder} to write it, or pass "
                            "resume=never to train afresh")


def resolve_resume(mode: str, ckpt_path: str | None, run_dir: Path, name: str,
                   hparams: dict[str, Any], max_steps: int | None = None, siblings: bool = True) -> str | None:
    """The checkpoint to resume from (for ``trainer.fit(ckpt_path=...)``), or None to start afresh.

    An explicit ``ckpt_path`` wins over ``resume`` and must be valid and short of ``max_steps``
    (``last``, which Lightning looks for only in this run's new folder, means ``resume=must``;
    Lightning's other names, such as ``best``, are refused: nothing here keeps what they name).
    Otherwise ``never`` starts afresh, ``auto`` takes the newest valid checkpoint of
    :func:`candidate_runs` that is short of ``max_steps`` (an interrupted run; a finished one ends the
    search) and ``must`` does the same but fails without one. Without ``siblings`` (a sweep's job, whose
    sibling folders are the other jobs) only this run folder's checkpoints are looked at.

    Whatever the mode, a run folder holding checkpoints this run does not continue is refused
    (:func:`check_own_checkpoints`)."""
    if mode not in RESUME_MODES:
        raise StylenetError(f"resume must be one of {', '.join(RESUME_MODES)}, got {mode!r}")
    if str(ckpt_path) in LIGHTNING_CKPT_NAMES:
        raise StylenetError(f"ckpt_path={ckpt_path} is Lightning's name for a checkpoint stylenet's callbacks do not "
                            "keep (they monitor no metric): give a .ckpt file, or ckpt_path=last")
    if str(ckpt_path) == "last":
        mode, ckpt_path = "must", None
    if ckpt_path is not None:
        path = Path(ckpt_path).expanduser()
        if path.is_dir():
            raise StylenetError(f"ckpt_path {str(path)!r} is a folder: give a .ckpt file in it, or ckpt_path=last "
                                "(the newest checkpoint of this experiment)")
        if not path.is_file():
            raise StylenetError(f"ckpt_path {str(path)!r} does not exist")
        reason = checkpoint_problem(path, None, hparams, max_steps)
        if reason:
            raise StylenetError(f"ckpt_path {str(path)!r} cannot resume this run: {reason}")
        own = run_checkpoints(run_dir)
        if path.resolve() in {p.resolve() for p in own}:  # going back, after a divergence say: not without a word
            step = checkpoint_step(path)
            later = [p for p in own if (checkpoint_step(p) or 0) > (step or 0)]
            # those beyond a lower trainer.max_steps are never reached again: left as the earlier run wrote them
            beyond = [p for p in later if p.name != LAST and max_steps is not None and max_steps >= 0
                      and (checkpoint_step(p) or 0) > max_steps]
            replaced = [p for p in later if p not in beyond]
            if later:
                log.warning("ckpt_path: continuing from %s (step %s), older than %s of this run folder, which "
                            "training will replace%s", path.name, step, ", ".join(p.name for p in replaced),
                            f"; kept from the earlier run (beyond trainer.max_steps={max_steps}): "
                            f"{', '.join(p.name for p in beyond)}" if beyond else "")
        found: Path | None = path
    elif mode == "never":
        found = None
    else:
        found = first_valid(candidate_runs(run_dir, siblings),
                            lambda p: checkpoint_problem(p, name, hparams, max_steps),
                            lambda p: refuse_unfinished_end(p, run_dir, name))
    if found is not None and ckpt_path is None:
        refuse_continued_elsewhere(found, run_dir)
    check_own_checkpoints(run_dir, found, hparams, max_steps)
    if found is None:
        if mode == "must":
            elsewhere = f" or {run_dir.parent}/*/checkpoints" if siblings else " (a sweep's job continues its own)"
            raise StylenetError(f"resume=must: no valid checkpoint of experiment {name!r} in "
                                f"{run_dir / 'checkpoints'}{elsewhere}")
        if mode == "auto":
            log.info("resume=auto: no checkpoint of experiment %r to continue, starting afresh", name)
        return None
    if ckpt_path is None:
        log.info("resume=%s: continuing from %s (pass resume=never to start afresh)", mode, found)
    return str(found)


#: The file a training run holds locked in its run folder (:func:`run_folder_lock`).
LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_folder_lock(run_dir: Path, program: str = "stylenet-train") -> Iterator[None]:
    """Hold ``run_dir``'s :data:`LOCK_FILE` while a run (of ``program``) works there. A second run in the
    same folder (a job submitted twice, two launches in the same second) would otherwise continue the first
    one's checkpoint while it still trains, and both would write the same checkpoints and model file (or
    picture: stylenet-gatys).

    The operating system drops the lock when the process ends, however it ends: no stale lock is left
    to clean up; the temporary files of writes a kill cut short are, by the next holder. Only global
    rank 0 takes it (all ranks of a DDP run share the folder); where
    ``fcntl`` is missing (Windows) nothing is locked."""
    from stylenet.errors import first_rank

    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None or not first_rank():
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StylenetError(f"run folder {str(run_dir)!r} is in use by another {lock_holder(run_dir)}: let it end, "
                                "or give another hydra.run.dir") from None
        handle.truncate(0)
        handle.write(program)
        handle.flush()
        for folder in (run_dir, run_dir / "checkpoints"):  # what a kill -9 mid-write left (the lock's holder died)
            for path in remove_cut_writes(folder):
                log.info("removed %s, the temporary file of a write cut short", path)
        yield


class FinishedRunError(StylenetError):
    """The run folder holds this very run, finished: nothing is left to train there (a sweep launched
    again to finish its interrupted jobs passes over its finished ones)."""


def check_own_checkpoints(run_dir: Path, resumed: Path | None, hparams: dict[str, Any],
                          max_steps: int | None) -> None:
    """Refuse to train in a run folder whose checkpoints this run does not continue: its own would
    overwrite them (``last.ckpt``, ``step_*.ckpt``) and its model file, and that run could no longer
    be resumed, whatever it was (finished, or interrupted with another style or network)."""
    own = run_checkpoints(run_dir)
    if not own or (resumed is not None and resumed.resolve() in {path.resolve() for path in own}):
        return
    reason = checkpoint_problem(own[0], None, hparams, max_steps)
    held = (f"{reason} ({own[0].name})" if reason and reason.startswith(FINISHED)
            else f"an earlier run's checkpoint {own[0].name}" + (f", {reason}" if reason else ""))
    finished = reason is not None and reason.startswith(FINISHED)
    raise (FinishedRunError if finished else StylenetError)(
        f"{str(run_dir)!r} already holds {held}, which this run would overwrite: give another hydra.run.dir "
        "(hydra.sweep.dir for -m), or remove its checkpoints to train there")
