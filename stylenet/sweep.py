"""The end of a Hydra multirun: one contact sheet and one table, so that choosing a weight is one look.

How to pick ``loss.style_weight`` is the question every user of a style-transfer trainer asks, and a
grid search is the answer; reading N run folders is not. Each style run leaves ``quality.json``
(:func:`stylenet.report.training_report`); :class:`SweepReport`, a Hydra callback registered in
``configs/hydra/default.yaml``, gathers them when the sweep ends into ``<sweep dir>/contact_sheet.png``
(rows: the held-out photos; columns: photo | style | one per run, labelled with its job number and the
overrides that differ between runs; a sweep over the style puts each run's style in a first row instead) and
``<sweep dir>/sweep.md`` (one row per run: its overrides and mean measures).
Sweeps without style runs (super-resolution, ``stylenet-gatys -m``) write nothing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from stylenet.errors import StylenetError, first_line
from stylenet.markdown import table_row

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One job of the sweep: its folder, its command-line overrides and its ``quality.json`` (None
    when the job wrote none: it failed, or it was not a style run)."""

    folder: Path
    overrides: list[str]
    quality: dict[str, Any] | None


def job_order(folder: Path) -> list[Any]:
    """Natural order of job folders: ``2`` before ``10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", folder.as_posix())]


#: a character of an override's value that Hydra's grammar needs escaped with a backslash
HYDRA_ESCAPE = re.compile(r"\\([\\()\[\]{}:=, '\"])")


def sweep_runs(sweep_dir: Path, jobs: Collection[Path] | None = None) -> list[Run]:
    """The jobs under ``sweep_dir`` (each folder with Hydra's ``.hydra/overrides.yaml``), in job order;
    only the folders ``jobs`` where given (this sweep's: an earlier sweep into the same folder left its own)."""
    runs = []
    chosen = None if jobs is None else {Path(job).resolve() for job in jobs}
    for record in sweep_dir.glob("**/.hydra/overrides.yaml"):
        folder = record.parent.parent
        if chosen is not None and folder.resolve() not in chosen:
            continue
        summary = folder / "quality.json"
        try:
            quality = json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else None
        except (OSError, json.JSONDecodeError) as err:
            raise StylenetError(f"cannot read {str(summary)!r}: {first_line(err)}") from None
        # as typed, with Hydra's escapes (style.image=demo\:ihc): shown as the value it set
        runs.append(Run(folder, [HYDRA_ESCAPE.sub(r"\1", str(item)) for item in OmegaConf.load(record)], quality))
    return sorted(runs, key=lambda run: job_order(run.folder.relative_to(sweep_dir)))


def labels(runs: list[Run], sweep_dir: Path) -> list[str]:
    """Each run's overrides that not every run shares (its folder name when all are shared)."""
    shared = set.intersection(*(set(run.overrides) for run in runs)) if runs else set()
    return [" ".join(item for item in run.overrides if item not in shared)
            or run.folder.relative_to(sweep_dir).as_posix() for run in runs]


def column_label(run: Run, label: str, sweep_dir: Path) -> str:
    """``loss.style_weight=5`` of job ``1`` -> ``1: style_weight=5``: the sheet's column label. The job
    comes first, so that columns stay apart (and findable in ``sweep.md``) where a cell is too narrow for
    the rest, which is cut at the column's edge; a path is shortened to its file's name
    (``style.image=/art/a.jpg`` -> ``image=a.jpg``), the part that tells such runs apart."""
    short = " ".join(re.sub(r"^[\w.]*\.(?=\w+=)|(?<==)[^=,\[\]]*/(?=[^/,\[\]]+$)", "", item) for item in label.split())
    job = run.folder.relative_to(sweep_dir).as_posix()
    return short if short == job else f"{job}: {short}"


def unmeasured(run: Run) -> str:
    """Why a run has no row of measures: several styles (a report each), super-resolution (scored by PSNR
    and SSIM in TensorBoard and ``stylenet-evaluate-sr``), or no ``quality.json`` (the run failed or stopped)."""
    if any(run.folder.glob("styles/*/quality.md")):
        return f"several styles: see {run.folder.name}/styles/*/quality.md"
    task = OmegaConf.select(OmegaConf.load(run.folder / ".hydra" / "config.yaml"), "task._target_", default="") \
        if (run.folder / ".hydra" / "config.yaml").is_file() else ""
    if str(task).endswith("SuperResolutionTask"):
        return "super-resolution: no quality report"
    return "no quality.json"


def write_sweep_report(sweep_dir: str | Path, sheet: str = "contact_sheet.png", table: str = "sweep.md",
                       jobs: Collection[Path] | None = None) -> dict[str, Path] | None:
    """Write the contact sheet and the table of a finished sweep (of the job folders ``jobs``, default every
    one under ``sweep_dir``); None when no run left a ``quality.json`` (super-resolution,
    ``stylenet-gatys -m``). Runs of several styles each leave one per style instead, which one sheet of one
    style per run cannot show: a one-line error says so."""
    from stylenet.atomic import atomic_write, write_text
    from stylenet.image import load_rgb
    from stylenet.report import GAP, MEASURES, cell, figure, missed_targets, targets_text, verdict

    sweep_dir = Path(sweep_dir)
    runs = sweep_runs(sweep_dir, jobs)
    measured = [run for run in runs if run.quality is not None]
    if not measured:
        several = next((run.folder for run in runs if any(run.folder.glob("styles/*/quality.json"))), None)
        if several is not None:
            raise StylenetError(f"its runs train several styles each, with a report per style (such as "
                                f"{str(several / 'styles')!r}/<style>/quality.md), which one sheet cannot compare")
        return None
    names = labels(runs, sweep_dir)
    first = measured[0]
    # each held-out photo of any run, as the first run that holds it copied it: runs of another data.val_images or
    # data.root hold others, each output in its row. Known by name and the file it was read from (not by the copy,
    # resized to each run's own style.size), the name alone in a report from before it recorded them
    def photo_key(run: Run, photo: str) -> tuple[str, str]:
        return photo, str(run.quality.get("photo_sources", {}).get(photo, ""))

    held = {run.folder: [photo_key(run, photo) for photo in run.quality["photos"]] for run in measured}
    photo_files: dict[tuple[str, str], Path] = {}
    for run in measured:
        for photo, copy in run.quality["photos"].items():
            photo_files.setdefault(photo_key(run, photo), run.folder / copy)
    # A sweep over the style itself (style.image=a.jpg,b.jpg) shows each run's style above its column;
    # otherwise the one style is a column beside the photos.
    one_style = len({run.quality["style"] for run in measured}) == 1
    rows: list[list[torch.Tensor | None]] = [] if one_style else [
        [None, *(load_rgb(run.folder / run.quality["style_file"]) if run.quality else None for run in runs)]]
    for key, photo_file in photo_files.items():
        row = [load_rgb(photo_file)]
        if one_style:
            row.append(load_rgb(first.folder / first.quality["style_file"]))
        for run in runs:
            outputs = {entry["photo"]: entry["output"] for entry in (run.quality or {}).get("entries", [])}
            shown = key in held.get(run.folder, []) and key[0] in outputs
            row.append(load_rgb(run.folder / outputs[key[0]]) if shown else None)
        rows.append(row)
    size = max(int(run.quality["size"]) for run in measured)
    paths = {"sheet": sweep_dir / sheet, "table": sweep_dir / table}
    columns = ["photo", "style"] if one_style else ["photo / style"]
    run_labels = [column_label(run, name, sweep_dir) for run, name in zip(runs, names, strict=True)]
    image = figure(rows, [*columns, *run_labels], size)
    atomic_write(paths["sheet"], lambda tmp: image.save(tmp, format="PNG"))

    shared = [item for item in runs[0].overrides if all(item in run.overrides for run in runs)]
    same = len({tuple(photos) for photos in held.values()}) == 1
    over = (f"the held-out photos ({', '.join(photo for photo, _ in held[first.folder])})" if same else
            "each run's held-out photos (they differ: " + "; ".join(
                f"{folder.relative_to(sweep_dir).as_posix()}: {', '.join(photo for photo, _ in keys)}"
                for folder, keys in held.items()) + ")")
    lines = [f"# Sweep {sweep_dir}", "", f"Shared overrides: `{' '.join(shared) or '(none)'}`. Mean measures of "
             f"stylenet.quality over {over}; contact sheet: `{sheet}` "
             f"(photo | style | one column per run, labelled `run: overrides`, {GAP} px gaps).", "",
             table_row(["run", "overrides", *MEASURES, "targets"]), "|" + "---|" * (len(MEASURES) + 3)]
    for run, name in zip(runs, names, strict=True):
        folder = run.folder.relative_to(sweep_dir).as_posix()
        method = next(iter(run.quality["methods"].items()), None) if run.quality else None
        mean = method[1]["mean"] if method else None
        if not mean:
            lines.append(table_row([folder, name, *("-" for _ in MEASURES), unmeasured(run)]))
            continue
        result = verdict(missed_targets(mean, method[1]["targets"]))
        lines.append(table_row([folder, name, *(cell(mean[k]) for k in MEASURES), result]))
    targets = next(iter(first.quality["methods"].values()))["targets"]
    lines += ["", f"Targets: {targets_text(targets)}."]
    write_text(paths["table"], "\n".join(lines) + "\n")
    return paths


class SweepReport(Callback):
    """Hydra callback: after a multirun, :func:`write_sweep_report` into the sweep folder."""

    def __init__(self, sheet: str = "contact_sheet.png", table: str = "sweep.md") -> None:
        self.sheet, self.table = sheet, table
        self.jobs: list[Path] = []  # this sweep's job folders (Hydra's launcher runs them in this process)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self.jobs.append(Path(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:  # (a launcher that ran the jobs elsewhere told this process of none: every folder then)
            paths = write_sweep_report(sweep_dir, self.sheet, self.table, self.jobs or None)
        except (StylenetError, OSError, KeyError) as err:  # the runs are done: report, do not fail them
            log.warning("no sweep report in %s: %s", sweep_dir, first_line(err))
            return
        if paths:
            log.info("sweep report: %s, %s", paths["table"], paths["sheet"])
