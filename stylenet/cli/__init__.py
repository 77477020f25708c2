"""Command-line entry points (console scripts declared in pyproject.toml)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from stylenet.errors import StylenetError


def print_out(text: str, prog: str) -> bool:
    """Print ``text`` to stdout; False when stdout is gone: a pipe closed early (``--info | head -1``,
    left without a word: the reader had what it wanted) or a full disk (one line on stderr). stdout then
    points at /dev/null, so that the interpreter's own flush at exit raises nothing more."""
    try:
        print(text, flush=True)
        return True
    except OSError as err:
        if not isinstance(err, BrokenPipeError):
            print(f"{prog}: error: cannot write to stdout: {err.strerror or err}", file=sys.stderr)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False


#: ``error(message)``: report one failed input on stderr and go on with the others.
ErrorReporter = Callable[[str], None]


def measuring_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The parser of a command that measures models on held-out photos (``stylenet-report``,
    ``stylenet-stability``): its positional ``photos`` default to the demo data's held-out ones."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="*",
                        help="held-out photos (paths or demo:<name>); default: the demo data's held-out photos")
    return parser


def model_suffixes() -> tuple[str, ...]:
    """Extensions of model files (never of images): what stylenet reads, and the exports that ``-m`` refuses.
    An input named like this is almost certainly a second model after one ``-m``: a usage error, not a bad
    image. (Imported when asked: the model-file module loads torch, which ``--help`` need not wait for.)"""
    from stylenet.modelfile import FOREIGN_EXPORTS, READ_SUFFIXES

    return (*READ_SUFFIXES, *FOREIGN_EXPORTS)


def check_text_output(option: str, output: str | Path, holds: str, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse a text output (a table, JSON) before minutes of measuring, where writing it would replace one of
    ``inputs`` or a file whose name says picture, video or model: ``--json half.safetensors`` would put the
    figures in place of the model they were measured with. ``holds`` says what ``option`` writes instead."""
    from stylenet.image import IMAGE_EXTENSIONS
    from stylenet.video.formats import VIDEO_SUFFIXES

    source = next((path for path in inputs if os.path.realpath(path) == os.path.realpath(output)), None)
    if source is not None:
        raise StylenetError(f"{option} {str(output)!r} is an input ({str(source)!r}): refusing to overwrite it")
    if Path(output).suffix.lower() in (*IMAGE_EXTENSIONS, *VIDEO_SUFFIXES, *model_suffixes()):
        raise StylenetError(f"{option} {str(output)!r} names a picture, video or model file, and {option} is {holds}")


def refuse_models_as_inputs(parser: argparse.ArgumentParser, inputs: list[str], models: list[str]) -> None:
    """A usage error for a model file among the images: ``-m a.safetensors b.safetensors photo.jpg`` gives
    ``-m`` one file, and ``b`` would be read as an image after everything else was done."""
    stray = [spec for spec in inputs if Path(spec).suffix.lower() in model_suffixes()]
    if stray:
        given = os.path.realpath(stray[0]) in {os.path.realpath(model) for model in models}
        parser.error(f"{stray[0]!r} is a model file, not an image: " + (
            "it is given with -m already" if given else
            f"each -m takes one model file, repeat it for several (-m {models[-1]} -m {stray[0]})" if models else
            f"pass it with -m (-m {stray[0]})"))


def allow_pixels(max_pixels: int | None) -> None:
    """Let Pillow open images of up to ``max_pixels`` (a command's ``--max-pixels``) in this process.
    Pillow refuses any image of more than twice its ``Image.MAX_IMAGE_PIXELS`` (179 MP by default) as
    it opens it, so a larger ``--max-pixels`` would be refused by Pillow's limit, not ours. The library
    never touches that global (:mod:`stylenet.image`); a command owns its process and may raise it. Our
    own check, from the header, still refuses anything above ``max_pixels`` before it is decoded."""
    from PIL import Image

    if max_pixels is not None and Image.MAX_IMAGE_PIXELS is not None and max_pixels > 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def tolerate_any_file_name_in_log_files() -> None:
    """Hydra's ``train.log`` (``gatys.log``) handler writes strict UTF-8: a line naming a photo whose
    file name is not UTF-8 (Python holds its bytes as lone surrogates) would become a logging
    traceback on stderr instead. Such characters are written as ``\\udcXX`` escapes."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.errors = "backslashreplace"
            if handler.stream is not None:
                handler.stream.reconfigure(errors="backslashreplace")


class Terminated(BaseException):
    """SIGTERM (a scheduler's stop, ``kill``): handled as Ctrl-C is, with exit status 143. Not an
    ``Exception``, as ``KeyboardInterrupt`` is not: an ``except Exception`` that passes over one broken
    input must not take it for one."""


def stopped_by(stop: BaseException) -> tuple[str, int]:
    """How a run was stopped, as its last line says it, and its exit status (as a shell reports a process
    that the signal ended): Ctrl-C (``KeyboardInterrupt``) or SIGTERM (:class:`Terminated`)."""
    return ("terminated", 143) if isinstance(stop, Terminated) else ("interrupted", 130)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_as_terminated() -> Iterator[None]:
    """Within: SIGTERM raises :class:`Terminated` in the main thread, so that temporary files and
    workers are cleaned up as on Ctrl-C, instead of the process dying where it stands (a thread
    other than the main one cannot take signals, and leaves them as they are)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report_refusal(prog: str, message: str, *, label: str = "error", level: int = logging.ERROR,
                   to_log: bool = True, to_stderr: bool = True) -> None:
    """A refused run's one line (or how a run ended: ``label`` "interrupted", ``level`` WARNING), on
    stderr and in the run folder's log (``train.log``, ``gatys.log``), where a batch job's reader looks
    first; through the log's file handlers only, so that a terminal does not show it twice. ``to_log``
    False: stderr only, for a launch refused in a folder that holds another run (:attr:`EarlierRecord.held`),
    whose log ends with that run's own ending; ``to_stderr`` False: the log only (a DDP rank after the
    first, with the first rank's very line)."""
    if to_stderr:
        print(f"{prog}: {label}: {message}", file=sys.stderr)
    if not to_log:
        return
    record = logging.makeLogRecord({"name": prog, "levelno": level, "levelname": logging.getLevelName(level),
                                    "msg": message})
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def exit_if_sweep_jobs_failed(prog: str, failed: list[str]) -> None:
    """The end of a sweep (``-m``) whose jobs ``failed`` (``#3``), each reported when it failed while
    the others ran on: one line and exit 2."""
    if failed:
        print(f"{prog}: error: {len(failed)} sweep job(s) failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(2)


def run_reporting_errors(prog: str, work: Callable[[ErrorReporter], int | None]) -> int:
    """Run ``work(error)`` and return the exit status: 1 if it reported any error (each one line,
    ``<prog>: error: ...``, the other inputs still processed) or raised a :class:`StylenetError`,
    130 on Ctrl-C and 143 on SIGTERM (one line, after ``work``'s temporary files are cleaned up),
    else what ``work`` returned (None: 0)."""
    failed = False

    def error(message: str) -> None:
        nonlocal failed
        failed = True
        print(f"{prog}: error: {message}", file=sys.stderr)

    try:
        with sigterm_as_terminated():
            status = work(error)
    except StylenetError as err:
        error(str(err))
        return 1
    except (KeyboardInterrupt, Terminated) as stop:  # one line, as the other commands end a stopped run
        how, code = stopped_by(stop)
        print(f"{prog}: {how}", file=sys.stderr)
        return code
    return status or int(failed)


def explicit_run_dir(argv: list[str] | None = None, key: str = "hydra.run.dir") -> Path | None:
    """The folder ``hydra.run.dir=`` (or another ``key``: ``hydra.sweep.dir``) names on the command line
    (the last, as Hydra takes it, quotes and escapes undone by Hydra's own parser), else None; None too
    for a value Hydra resolves later (``${name}``, ``${now:...}``): this is read before Hydra starts."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, named = OverridesParser.create(), None
    for item in sys.argv[1:] if argv is None else argv:
        if item.lstrip("+~").partition("=")[0] != key:
            continue
        try:
            value = parser.parse_override(item).value()
        except Exception:  # Hydra itself reports a bad override
            continue
        text = str(value) if isinstance(value, (str, int, float, bool)) else ""  # hydra.run.dir=42 is a folder too
        named = Path(text) if text and "${" not in text else None
    return named


def refuse_run_dir_file(prog: str, argv: list[str] | None = None) -> None:
    """Exit 2 with one line when ``hydra.run.dir=`` on the command line names an existing file, or a
    folder inside one: Hydra creates the run folder before any of our code runs, and reports the clash
    as a traceback. An empty one (``hydra.run.dir=$UNSET``) is refused too: Hydra ran in the current folder,
    which filled with the run's files (in a checkout, its root)."""
    for item in sys.argv[1:] if argv is None else argv:
        key, equals, value = item.partition("=")
        if equals and key.lstrip("+~") in ("hydra.run.dir", "hydra.sweep.dir") and value.strip() in ("", "''", '""'):
            print(f"{prog}: error: {key.lstrip('+~')} is empty: name the run's folder (an unset variable?)",
                  file=sys.stderr)
            sys.exit(2)
    run_dir = explicit_run_dir(argv)
    if run_dir is None:
        return
    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if not path.is_dir():
                which = "" if path == run_dir else f": {str(path)!r}"
                print(f"{prog}: error: hydra.run.dir={run_dir}{which} is a file, not a folder", file=sys.stderr)
                sys.exit(2)
            return


def refuse_null_group(prog: str, primary: Path, argv: list[str] | None = None) -> None:
    """Exit 2 with one line for ``logger=null`` (or any config group set to null): Lightning users' way of
    turning the logger off, which Hydra refuses with a traceback ("Config group override must be a string
    or a list"). A group of the program's ``primary`` config (its defaults list) is left out with
    ``~logger``; a group of the config folder that the program does not use is not its setting."""
    from omegaconf import OmegaConf

    folders = {path.name for path in primary.parent.iterdir() if path.is_dir()}
    own = {key.split()[-1] for entry in OmegaConf.load(primary).get("defaults", []) if not isinstance(entry, str)
           for key in entry}  # (- loss: perceptual; - override hydra/...: the group's name last)
    for item in sys.argv[1:] if argv is None else argv:
        key, equals, value = item.partition("=")
        group = key.lstrip("+")
        if equals and group in folders and value.strip().lower() in ("null", "none", ""):
            why = (f"a config group is left out with ~{group}, not set to null ({group}=<choice> picks one of "
                   f"configs/{group}/)" if group in own else
                   f"{prog} has no {group} group (its groups: {', '.join(sorted(own - {'hydra'}))})")
            print(f"{prog}: error: {item}: {why}", file=sys.stderr)
            sys.exit(2)


def read_if_file(path: Path) -> bytes | None:
    """The bytes of ``path``, None if it is not a readable file."""
    try:
        return path.read_bytes()
    except OSError:
        return None


#: What Hydra writes into a run folder before the application runs (``hydra.output_subdir``).
HYDRA_RECORD = ("config.yaml", "hydra.yaml", "overrides.yaml")


class EarlierRecord:
    """The Hydra record (``.hydra/*.yaml``) of the folder that ``hydra.run.dir=`` names on the command
    line, and of each job folder under ``hydra.sweep.dir=`` (``-m``), as it was before this launch.
    Hydra rewrites a job's record before any check of ours, so a job that is refused there (the folder
    holds another run, or a setting is bad) puts it back with :meth:`restore`: the folder keeps the
    record of the run that made it, and a sweep's report labels what the folder holds. Only files that
    still hold what this launch's Hydra wrote (:meth:`note_launch`) are put back: a launch beside it (a
    job submitted twice, another node of the run) keeps its own."""

    def __init__(self) -> None:
        self.files: dict[Path, bytes | None] = {}
        self.launch: dict[Path, bytes | None] = {}
        #: whether the noted folder held another run's record when this launch began (:meth:`note_launch`):
        #: a refusal there leaves that run's files, its log included, as they are
        self.held = False
        #: ``hydra.sweep.dir``'s multirun.yaml: its bytes before this launch, and as this launch's Hydra wrote them
        self.sweep_file: Path | None = None
        self.sweep_before: bytes | None = None
        self.sweep_launch: bytes | None = None
        self.ran = False  # whether a run (a sweep's job) of this launch started

    def take(self, argv: list[str] | None = None) -> None:
        """Read the records now, before Hydra starts (``argv``: default ``sys.argv[1:]``)."""
        folders = [explicit_run_dir(argv)]
        sweep_dir = explicit_run_dir(argv, "hydra.sweep.dir")
        if sweep_dir is not None and sweep_dir.is_dir():  # job folders at any depth (hydra.sweep.subdir)
            folders += [record.parent for record in sweep_dir.glob("**/.hydra") if record.is_dir()]
        self.files.clear()
        self.sweep_file = None if sweep_dir is None else sweep_dir.absolute() / "multirun.yaml"
        self.sweep_before = None if self.sweep_file is None else read_if_file(self.sweep_file)
        for folder in folders:
            if folder is not None and folder.is_dir():  # a new folder has nothing to keep
                for name in HYDRA_RECORD:  # absolute: a job may run in its folder (hydra.job.chdir)
                    path = folder.absolute() / ".hydra" / name
                    self.files[path] = read_if_file(path)

    def note_launch(self, run_dir: Path | None = None) -> None:
        """Read what Hydra wrote for this launch (call it first thing in the application) in ``run_dir``,
        the folder the launch (or this job of a sweep) runs in; None: every folder taken."""
        here = None if run_dir is None else os.path.realpath(run_dir)
        if self.sweep_file is not None and self.sweep_launch is None:
            self.sweep_launch = read_if_file(self.sweep_file)
        self.launch = {path: read_if_file(path) for path in self.files
                       if here is None or os.path.realpath(path.parent.parent) == here}
        self.held = any(self.files[path] is not None for path in self.launch)

    def relaunched(self) -> bool:
        """Whether this launch's overrides in the noted folder are the ones its record held before: the
        same job launched again (a sweep run again to finish it), not another run. True where no record
        was taken (a folder named through ``${...}``, which only Hydra resolves): nothing tells then."""
        noted = [path for path in self.launch if path.name == "overrides.yaml"]
        return not noted or any(self.files[path] is not None and self.files[path] == self.launch[path]
                                for path in noted)

    def started(self) -> None:
        """The noted folder now holds this launch's run (pass it as the run's ``on_start``): from here on
        :meth:`restore` keeps this record, and a later job of the sweep in the same folder (a constant
        ``hydra.sweep.subdir``) puts back this one, not the one before it; and its log is this run's."""
        self.files.update(self.launch)
        self.held = False
        self.ran = True

    def restore(self) -> None:
        """Put back the noted folder's record as it was before this launch, unless the launch started
        its run there (what the folder did not hold is removed)."""
        from stylenet.atomic import atomic_write

        for path, written in self.launch.items():
            if read_if_file(path) != written or self.files[path] == written:  # another launch's, or as it was
                continue
            if self.files[path] is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, lambda tmp, data=self.files[path]: tmp.write_bytes(data))
        if self.launch and not any(self.files[path] for path in self.launch):  # no record before: none now
            with contextlib.suppress(OSError):  # unless something else is in .hydra/
                next(iter(self.launch)).parent.rmdir()


    def restore_sweep(self) -> None:
        """Put back ``hydra.sweep.dir``'s multirun.yaml, which Hydra rewrites before any job, where no job
        of this launch ran (each refused, or finished already): it describes the sweep whose jobs the
        folder holds, not one that never ran there (unless another launch has rewritten it since)."""
        from stylenet.atomic import atomic_write

        earlier, path = self.sweep_before, self.sweep_file
        if self.ran or path is None or earlier is None or self.sweep_launch in (None, earlier):
            return
        if read_if_file(path) == self.sweep_launch:
            atomic_write(path, lambda tmp: tmp.write_bytes(earlier))


def launch_hydra_app(prog: str, app: Callable[[], None], record: EarlierRecord, failed_jobs: list[str],
                     primary: Path) -> None:
    """Run the Hydra application ``app`` of ``stylenet-train`` or ``stylenet-gatys`` (``primary``: its
    primary config file) with the run folder's ``record`` (:class:`EarlierRecord`), and end with the failed
    jobs of a sweep. Ctrl-C before the
    application's own handler takes over (while Hydra writes its record, or torch and Lightning import:
    the first seconds, when a typo is noticed) is the one line and exit status 130 of a later one, and
    the folder keeps its earlier record, not this launch's settings that never ran there."""
    refuse_run_dir_file(prog)
    refuse_null_group(prog, primary)
    record.take()
    try:
        app()
    except KeyboardInterrupt:
        record.note_launch()
        record.restore()
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:  # a job's own exit (Ctrl-C before its first step) included
        record.restore_sweep()
    exit_if_sweep_jobs_failed(prog, failed_jobs)
