"""The quality report: photo | style | Gatys | networks, side by side and measured.

A falling loss shows only that the loss network's statistics moved; whether an output looks like
style transfer is judged on the pictures, with :mod:`stylenet.quality`'s measures (which use no loss
network), over held-out photos. This module draws the figure (one row per photo, one labelled column
per method), writes the markdown table and ``report.json``, and saves every cell as a PNG. The
measures are computed on the saved 8-bit PNGs, so anyone can recompute them from the files.

Users: ``stylenet-report`` (:mod:`stylenet.cli.report`), the end of ``stylenet-train`` (``figure.png``,
``quality.md``, ``quality.json`` in the run folder) and the multirun contact sheet
(:mod:`stylenet.sweep`). Imports neither Hydra nor Lightning (the default photos' data module aside).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from stylenet import quality
from stylenet.atomic import atomic_write, write_text
from stylenet.errors import StylenetError, first_line, one_line
from stylenet.image import from_pil, load_rgb, resize_long_side, resolve_image_path, save_image, to_pil
from stylenet.markdown import table_row

#: figure layout, px: the label strip above the columns and the gap around each square cell.
LABEL_HEIGHT, GAP = 14, 4
BACKGROUND = (255, 255, 255)
#: The grid every report writes next to its table (photo | style | one column per method).
FIGURE = "figure.png"
MEASURES = tuple(quality.TARGETS)
#: the issue's targets for the Gatys baseline: texture must move further than a network's.
GATYS_TARGETS = {**quality.TARGETS, "texture_moved": 0.5}
#: L-BFGS's history of the Gatys column (stylenet-gatys's default): its memory is checked before each photo.
GATYS_HISTORY = 100
#: measures that must stay at or below their target (the others must reach it).
AT_MOST = ("clipped_beyond_style",)

#: (photo, style) -> output, all (3, H, W) in [0, 1]; the output has the photo's size.
Stylize = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Method:
    """One column of the report: a name (its label and folder) and how it stylizes a photo."""

    name: str
    stylize: Stylize
    targets: dict[str, float] = field(default_factory=lambda: dict(quality.TARGETS))


@dataclass
class Entry:
    """One (photo, method) cell: where its output was saved and how it scored."""

    photo: str
    method: str
    output: str
    quality: quality.Quality

    def as_dict(self) -> dict[str, Any]:
        return {"photo": self.photo, "method": self.method, "output": self.output, **self.quality.as_dict()}


@dataclass
class Report:
    """What :func:`run_report` measured; paths are relative to the report's folder."""

    style: str
    size: int
    style_file: str = ""  # the style image as measured (resized PNG)
    photos: dict[str, str] = field(default_factory=dict)  # photo name -> its saved, resized PNG
    #: photo name -> the file it was read from (a sweep's runs of other data.root may hold others of one name)
    sources: dict[str, str] = field(default_factory=dict)
    methods: dict[str, dict[str, float]] = field(default_factory=dict)  # method name -> its targets
    entries: list[Entry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: path -> the 8-bit image :func:`write_report` saves there; nothing is written before it, so a report
    #: that measured nothing leaves the cells of an earlier one in its folder as they were.
    cells: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def means(self) -> dict[str, dict[str, float]]:
        """Each method's measures averaged over the photos it was scored on (where a measure is
        defined: structure is not on a photo without edges)."""
        means = {}
        for method in self.methods:
            scores = [entry.quality.as_dict() for entry in self.entries if entry.method == method]
            if scores:
                means[method] = {key: quality.finite_mean([score[key] for score in scores]) for key in MEASURES}
        return means

    def missed(self, method: str) -> list[str]:
        """The measures whose mean misses ``method``'s target (all of them when nothing was scored)."""
        return missed_targets(self.means().get(method), self.methods[method])

    def as_dict(self) -> dict[str, Any]:
        means = self.means()
        return {"style": self.style, "size": self.size, "style_file": self.style_file, "photos": self.photos,
                "photo_sources": self.sources,
                "methods": {name: {"targets": targets, "mean": means.get(name), "met": not self.missed(name)}
                            for name, targets in self.methods.items()},
                "entries": [entry.as_dict() for entry in self.entries], "errors": self.errors}


#: A measure's decimals in the tables; its target is judged on the value as shown.
DECIMALS = 3


def cell(value: float | None) -> str:
    """A measure in a table: :data:`DECIMALS` decimals, ``n/a`` where it is undefined (NaN, or JSON's null)."""
    return f"{value:.{DECIMALS}f}" if value is not None and math.isfinite(value) else "n/a"


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as null: JSON has no such numbers (strict parsers refuse them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def meets(measure: str, value: float | None, target: float) -> bool:
    """Whether ``value``, as the tables show it (:func:`cell`), meets ``target``: a mean shown as 0.350
    beside a NOT met for texture >= 0.35 would contradict itself. An undefined value (NaN, JSON's null)
    meets none."""
    if value is None or not math.isfinite(value):
        return False
    shown = round(value, DECIMALS)
    return shown <= target if measure in AT_MOST else shown >= target


def missed_targets(mean: dict[str, float] | None, targets: dict[str, float]) -> list[str]:
    """The measures whose ``mean`` misses its target (all of them when nothing was measured)."""
    if mean is None:
        return list(targets)
    return [key for key, target in targets.items() if not meets(key, mean[key], target)]


def verdict(missed: Sequence[str]) -> str:
    return "met" if not missed else f"NOT met ({', '.join(missed)})"


def targets_text(targets: dict[str, float]) -> str:
    """``colour_moved >= 0.6, ..., clipped_beyond_style <= 0.01``."""
    return ", ".join(f"{key} {'<=' if key in AT_MOST else '>='} {value:g}" for key, value in targets.items())


def unique_names(names: Iterable[str]) -> list[str]:
    """``names`` with repeats numbered (``a``, ``a_2``): they become file and column names. A number
    never takes a name given as such (``a, a, a_2`` -> ``a, a_3, a_2``)."""
    names = list(names)
    taken = set(names)
    unique = []
    for index, name in enumerate(names):
        candidate, number = name, 1
        if name in names[:index]:
            while candidate in taken:
                number += 1
                candidate = f"{name}_{number}"
            taken.add(candidate)
        unique.append(candidate)
    return unique


def same_picture(a: Path, b: Path) -> bool:
    """Whether ``a`` is the picture ``b``: the same file, or a copy of its bytes (a bundled photo copied
    out as a style picture would be measured against itself, moving nothing)."""
    from stylenet.data import copies_of

    return Path(a).resolve() == Path(b).resolve() or bool(copies_of([Path(b)], [Path(a)]))


def held_out_photos(photos: Sequence[Path], style: Path) -> list[Path]:
    """The held-out photos a run's report measures: all but the style picture itself (measured against
    itself, a network moves nothing, and the report would read "NOT met" of nothing measured). One line where
    none is left."""
    kept = [photo for photo in photos if not same_picture(photo, style)]
    if photos and not kept:
        raise StylenetError(f"the held-out photo is the style picture {style.name} itself: nothing to measure "
                            "(hold out other photos: data.val_images)")
    return kept


def demo_held_out(configs: str | Path, exclude: Path | None = None) -> list[Path]:
    """The demo data module's held-out validation photos (``data=demo`` as ``configs/data/demo.yaml``
    sets it), without ``exclude`` (the style image: a photo must not be measured against itself)."""
    from omegaconf import OmegaConf

    from stylenet.data import ImageFolderDataModule

    count = OmegaConf.load(Path(configs, "data", "demo.yaml")).val_images
    datamodule = ImageFolderDataModule(source="demo", val_images=int(count))
    datamodule.setup("fit")
    return [photo for photo in datamodule.val_files if exclude is None or not same_picture(photo, exclude)]


def load_loss_config(spec: str | Path, configs: str | Path) -> dict[str, Any]:
    """The settings of a ``loss`` config: a name in ``<configs>/loss/`` (``offline``) or a YAML file.
    Its defaults list (names of files beside it or in ``<configs>/loss/``) is merged as Hydra would:
    in order, ``_self_`` last unless placed. A file that is no YAML, no UTF-8 or names a setting that is not
    there is one line naming it: PyYAML and OmegaConf say it in paragraphs, a traceback around them."""
    import yaml
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(spec).expanduser() if str(spec).endswith((".yaml", ".yml")) else Path(configs, "loss", f"{spec}")
    if path.suffix not in (".yaml", ".yml"):  # a name, or a defaults entry: a file beside it or in configs/loss
        beside = path.with_name(f"{path.name}.yaml")
        path = beside if beside.is_file() else Path(configs, "loss", f"{path.name}.yaml")
    if not path.is_file():
        raise StylenetError(f"loss config {str(path)!r} does not exist")
    try:
        node = OmegaConf.load(path)
        if not isinstance(node, DictConfig):
            raise StylenetError(f"loss config {str(path)!r} is not a mapping of settings")
        defaults = list(node.pop("defaults", []))
        merged = OmegaConf.create()
        for entry in defaults if "_self_" in defaults else [*defaults, "_self_"]:
            if entry == "_self_":
                merged = OmegaConf.merge(merged, node)
            elif isinstance(entry, str):
                merged = OmegaConf.merge(merged, load_loss_config(path.with_name(entry), configs))
            else:
                raise StylenetError(f"loss config {str(path)!r}: unsupported defaults entry {entry}")
        settings = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:  # its message runs on with 'full_key: ...' lines: the key, on this one
        key = getattr(err, "full_key", None)
        raise StylenetError(f"loss config {str(path)!r}: {first_line(err)}" + (f" (at {key})" if key else "")) from None
    except yaml.MarkedYAMLError as err:  # PyYAML's message spans lines, marks included: the problem and where
        mark = err.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = one_line(err.problem or err)
        raise StylenetError(f"loss config {str(path)!r} is not valid YAML: {problem}{where}") from None
    except yaml.YAMLError as err:
        raise StylenetError(f"loss config {str(path)!r} is not valid YAML: {first_line(err)}") from None
    except UnicodeDecodeError as err:
        raise StylenetError(f"loss config {str(path)!r} is not UTF-8 text: {first_line(err)}") from None
    settings.pop("_target_", None)
    from stylenet.losses import PerceptualLoss

    known = inspect.signature(PerceptualLoss).parameters
    unknown = sorted(key for key in settings if key not in known)
    if unknown:  # named here, with its file, not as PerceptualLoss's TypeError once the photos are loaded
        raise StylenetError(f"loss config {str(path)!r}: unknown setting {unknown[0]!r} (the loss takes "
                            f"{', '.join(known)})")
    return settings


def gatys_method(loss_settings: dict[str, Any], *, iterations: int = 300, device: str = "auto") -> Method:
    """Gatys et al. 2016 on the given objective, from the photo (the baseline column): L-BFGS, the
    optimiser of Gatys et al. and of Johnson et al.'s comparison (Sec. 4.1). The same number of Adam
    steps stops well short of the optimum (README, "The offline loss network"), and the column would
    then show an unfinished image rather than what the objective asks for."""
    from stylenet.gatys import check_memory, check_style_term, optimize_image, resolve_device
    from stylenet.losses import PerceptualLoss

    on = resolve_device(device, hint="--device cpu")
    try:
        loss = PerceptualLoss(**loss_settings).to(on)
    except TypeError as err:
        raise StylenetError(f"loss: {err}") from None
    check_style_term(loss, "--loss-config offline, perceptual or gatys_vgg19 (with a style_weight > 0)")

    def stylize(photo: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        try:  # one Gram pass: no optimiser state
            check_memory(loss, *style.shape[-2:], None, 0, on, setting="--size")
        except StylenetError as err:  # (said of the photo, it named the picture's size for the photo's)
            raise StylenetError(f"the style picture at this size: {err}") from None
        check_memory(loss, *photo.shape[-2:], "lbfgs", GATYS_HISTORY, on, setting="--size")
        result = optimize_image(photo, [style], loss, optimizer="lbfgs", iterations=iterations,
                                history_size=GATYS_HISTORY)
        if result.stopped:  # its image is the last finite one: the photo itself, at worst
            raise StylenetError(f"gatys: {result.stopped}")
        return result.image.cpu()

    return Method("gatys", stylize, dict(GATYS_TARGETS))


def network_method(name: str, net: torch.nn.Module) -> Method:
    """A trained style network's column (one forward pass, the photo's size kept)."""
    from stylenet.inference import run_network
    from stylenet.inference.memory import is_out_of_memory

    def stylize(photo: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        try:
            with torch.inference_mode():
                return run_network(net, photo).float().cpu()
        except (RuntimeError, MemoryError) as err:  # this photo only: the next ones are still measured
            if not is_out_of_memory(err):
                raise
            height, width = photo.shape[-2:]
            raise StylenetError(f"a {width}x{height} image is beyond the memory free for one pass: use a smaller "
                                "--size") from None

    return Method(name, stylize)


def as_saved(image: torch.Tensor) -> torch.Tensor:
    """``image`` as its 8-bit PNG will hold it: every measure and figure cell is of the saved pixels."""
    return from_pil(to_pil(image.detach().float().cpu())).rgb


def read_photo(spec: str | Path, size: int) -> tuple[Path, torch.Tensor]:
    """A photo (path or ``demo:<name>``) with its long side resized to ``size``."""
    path = resolve_image_path(spec)
    return path, resize_long_side(load_rgb(path), size)


def run_report(out_dir: str | Path, style: str | Path, photos: Sequence[str | Path], methods: Sequence[Method],
               *, size: int = 256, images: str = "images", on_error: Callable[[str], None] | None = None,
               on_done: Callable[[str, str], None] | None = None,
               refused: Sequence[str] = ()) -> tuple[Report, list[list[torch.Tensor | None]]]:
    """Stylize each photo with each method at ``size`` px (long side) and score it; returns the report
    and the figure's rows. Every cell is kept in ``report.cells`` for :func:`write_report` to save under
    ``out_dir/images/<column>/``.

    A photo that cannot be read, or is the style image itself, is recorded in ``report.errors`` (one
    line naming the file, also passed to ``on_error``) and left out; the others go on. The style
    image is required: without it nothing can be measured. ``refused``: what the caller left out already
    (a model that cannot be measured), under "Not measured" too."""
    out_dir = Path(out_dir)
    check_outside_outputs(out_dir, images, [style, *photos])
    style_path, style_image = read_photo(style, size)
    style_image = as_saved(style_image)
    report = Report(str(style), size, f"{images}/style.png",
                    methods={method.name: dict(method.targets) for method in methods})
    report.cells[report.style_file] = style_image
    report.errors += refused
    rows: list[list[torch.Tensor | None]] = []

    def fail(message: str) -> None:
        report.errors.append(message)
        if on_error:
            on_error(message)

    names = unique_names(Path(str(spec).removeprefix("demo:")).stem for spec in photos)
    for spec, name in zip(photos, names, strict=True):
        try:
            path = resolve_image_path(spec)
            if same_picture(path, style_path):
                raise StylenetError(f"photo {str(path)!r} is the style image (or a copy); hold out another photo")
            _, photo = read_photo(path, size)
        except StylenetError as err:
            fail(str(err))
            continue
        photo = as_saved(photo)
        report.photos[name] = f"{images}/photo/{name}.png"
        report.sources[name] = str(path.resolve())
        report.cells[report.photos[name]] = photo
        row: list[torch.Tensor | None] = [photo, style_image]
        for method in methods:
            relative = f"{images}/{method.name}/{name}.png"
            try:
                output = as_saved(method.stylize(photo, style_image))
            except StylenetError as err:
                fail(f"{method.name} on {str(path)!r}: {err}")
                row.append(None)
                continue
            report.entries.append(Entry(name, method.name, relative, quality.score(photo, style_image, output)))
            report.cells[relative] = output
            row.append(output)
            if on_done:
                on_done(name, method.name)
        rows.append(row)
    return report, rows


def check_outside_outputs(out_dir: Path, images: str, inputs: Iterable[str | Path]) -> None:
    """Refuse, before anything is written, a style or photo that the report would overwrite: one
    under ``out_dir/images`` (a cell of an earlier report) or the figure itself."""
    rewritten = (out_dir / images).resolve()
    for spec in inputs:
        if str(spec).startswith("demo:"):
            continue
        path = Path(spec).resolve()
        if path.is_relative_to(rewritten) or path == (out_dir / FIGURE).resolve():
            raise StylenetError(f"{str(spec)!r} is among the files this report writes in {str(out_dir)!r}: "
                                "copy it elsewhere or choose another output folder")


def figure(rows: Sequence[Sequence[torch.Tensor | None]], labels: Sequence[str], size: int) -> Image.Image:
    """A grid of square ``size`` px cells, ``GAP`` px apart, under a ``LABEL_HEIGHT`` px strip with
    one label per column; each image is centred in its cell (shrunk to fit, never enlarged), an
    empty cell (``None``) stays blank."""
    columns = len(labels)
    canvas = Image.new("RGB", (GAP + columns * (size + GAP), LABEL_HEIGHT + len(rows) * (size + GAP)), BACKGROUND)
    for column, label in enumerate(labels):
        strip = Image.new("RGB", (size, LABEL_HEIGHT), BACKGROUND)
        ImageDraw.Draw(strip).text((2, 1), label, fill=(0, 0, 0))  # clipped to its own column
        canvas.paste(strip, (GAP + column * (size + GAP), 0))
    for r, row in enumerate(rows):
        for column, image in enumerate(row):
            if image is None:
                continue
            if max(image.shape[-2:]) > size:
                image = resize_long_side(image, size)
            height, width = image.shape[-2:]
            left, top = cell_origin(r, column, size)
            canvas.paste(to_pil(image), (left + (size - width) // 2, top + (size - height) // 2))
    return canvas


def cell_origin(row: int, column: int, size: int) -> tuple[int, int]:
    """(left, top) of a cell of :func:`figure`."""
    return GAP + column * (size + GAP), LABEL_HEIGHT + row * (size + GAP)


def targets_line(report: Report) -> str:
    """The final line of the table: the targets and, per method, whether its mean meets them."""
    verdicts = []
    for method, targets in report.methods.items():
        own = {key: value for key, value in targets.items() if value != quality.TARGETS[key]}
        note = f" ({targets_text(own)})" if own else ""
        verdicts.append(f"{method}{note}: {verdict(report.missed(method))}")
    return (f"Targets (stylenet.quality.TARGETS, mean over the photos): {targets_text(quality.TARGETS)}. "
            + "; ".join(verdicts) + ".")


def markdown(report: Report, title: str = "Quality report") -> str:
    """The table: one row per photo x method, then each method's mean, then the targets line."""
    header = table_row(["photo", "method", *MEASURES])
    lines = [f"# {title}", "", f"Style `{report.style}`, {report.size} px (long side); measures of "
             "stylenet.quality on the saved PNGs (moved: 0 = the photo's, 1 = the style's).", "",
             header, "|" + "---|" * (len(MEASURES) + 2)]
    for entry in report.entries:
        values = entry.quality.as_dict()
        lines.append(table_row([entry.photo, entry.method, *(cell(values[k]) for k in MEASURES)]))
    for method, mean in report.means().items():
        lines.append(table_row(["**mean**", method, *(cell(mean[k]) for k in MEASURES)]))
    lines += ["", targets_line(report)]
    if report.errors:
        lines += ["", "Not measured:", *(f"- {error}" for error in report.errors)]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, report: Report, rows: Sequence[Sequence[torch.Tensor | None]], *,
                 table: str = "report.md", data: str = "report.json", title: str = "Quality report",
                 extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """The cells (``report.cells``), ``figure.png``, the markdown ``table`` and the JSON ``data`` (``extra``
    merged in) in ``out_dir``."""
    out_dir = Path(out_dir)
    for relative, image in report.cells.items():
        save_image(out_dir / relative, image)
    labels = ["photo", "style", *report.methods]
    paths = {"figure": out_dir / FIGURE, "table": out_dir / table, "data": out_dir / data}
    earlier = report_cells(paths["data"])
    if rows:
        atomic_write(paths["figure"], lambda tmp: figure(rows, labels, report.size).save(tmp, format="PNG"))
    else:  # nothing to draw: a figure left by an earlier report here would no longer match its table
        paths.pop("figure").unlink(missing_ok=True)
    write_text(paths["table"], markdown(report, title))
    write_text(paths["data"], json.dumps(_json_safe({**report.as_dict(), **(extra or {})}), indent=1,
                                         allow_nan=False) + "\n")
    images = Path(report.style_file).parts[0]  # the folder of the cells: images/, or quality/ of a training run
    for stale in earlier - report_cells(paths["data"]):  # an earlier report's cells this one does not show
        parts = Path(stale).parts
        if len(parts) >= 2 and parts[0] == images and Path(stale).suffix == ".png":  # never anything else
            with contextlib.suppress(OSError, ValueError):
                (out_dir / stale).unlink(missing_ok=True)
    return paths


def report_cells(data: Path) -> set[str]:
    """The images (relative to its folder) that the report whose JSON is ``data`` wrote, read back
    from that file: none if it is missing or not such a report (then nothing is ever deleted)."""
    try:
        saved = json.loads(data.read_text())
        cells = {saved["style_file"], *saved["photos"].values(), *(entry["output"] for entry in saved["entries"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return {cell for cell in cells if isinstance(cell, str) and ".." not in Path(cell).parts
            and not Path(cell).is_absolute()}


def training_report(run_dir: str | Path, model_path: str | Path, style: str | Path, photos: Sequence[Path],
                    size: int, on_error: Callable[[str], None] | None = None) -> tuple[dict[str, Path], str]:
    """The end of a style run: photo | style | network for the held-out photos, measured, as
    ``figure.png``, ``quality.md`` and ``quality.json`` in ``run_dir`` (cells under ``quality/``).
    ``quality.json`` is what a multirun's contact sheet reads (:mod:`stylenet.sweep`). A photo left
    out is passed to ``on_error`` (one line), as :func:`run_report` does. Returns the files and whether the
    network meets the quality targets (:func:`verdict`), for the run's log: a run that misses them says so
    where its user looks, not only inside ``quality.md``."""
    from stylenet.modelfile import read_model

    photos = held_out_photos(photos, resolve_image_path(style))
    method = network_method("network", read_model(model_path, task="style").net)
    report, rows = run_report(run_dir, style, photos, [method], size=size, images="quality", on_error=on_error)
    paths = write_report(run_dir, report, rows, table="quality.md", data="quality.json",
                         title=f"Quality of {Path(model_path).name}", extra={"model": str(model_path)})
    return paths, verdict(report.missed(method.name))
