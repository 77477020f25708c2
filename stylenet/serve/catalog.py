"""The models the page offers: the model files of one folder, each named by an id of the server's own.

The browser only ever sends an id from :meth:`Catalog.entries`; an id that is not in that list is
refused, so no path from the browser reaches the file system. Models load weights-only
(:func:`stylenet.modelfile.read_model`, through :func:`stylenet.cli.stylize.load_inference_model`)
on first use and stay loaded, reloaded when their file changes.

Multi-style files: :func:`file_styles` is the one place that says which styles a file holds. Every
style is one entry, ``(label, file, style)``; ``style`` is None for a file's only style. A blend of
styles of one such file (Dumoulin et al. 2017 mix their norm parameters) is named by the ids of its
styles with their weights, ``ID:0.7;ID:0.3`` (:meth:`Catalog.find`), and made on demand.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylenet.errors import StylenetError
from stylenet.image.read import walk_folders
from stylenet.modelfile import READ_SUFFIXES, is_safetensors, read_header, read_model
from stylenet.styles import StyleChoice, blend_label, style_names

if TYPE_CHECKING:
    from stylenet.inference import InferenceModel

#: Bytes of weights the loaded models may keep between photos, within the part of the memory limit set aside
#: for them (:data:`stylenet.serve.limits.RESERVE_BYTES`): some ten paper-width networks, or one file of
#: several styles and the single-style networks it keeps. Beyond it the least recently used are let go.
LOADED_MODEL_BYTES = 64 * 2**20
#: The largest pickled model file (.pth, .ckpt) the page reads: a pickle is loaded whole to be told apart. A
#: stylenet-train checkpoint of the paper's network, Adam's moments included, is some 20 MB (of 96 channels,
#: 180 MB; pytorch/examples' 6.7 MB); a larger file (VGG's 528 MB weights beside the models) is an unreadable
#: entry, not read. Model files (.safetensors) of any size are listed by their header.
LARGEST_PICKLED_MODEL = 512 * 2**20
#: A blend's model id: ``ID:WEIGHT`` parts joined by ``;`` (neither is in a listed id, nor special in a query).
BLEND_PART, BLEND_WEIGHT = ";", ":"
BLEND_FORM = "a blend mixes two or more different styles of one model file of several styles: ID:WEIGHT;ID:WEIGHT"


class UnknownModel(StylenetError):
    """The browser named a model id the server did not list (HTTP 404)."""


@dataclass(frozen=True)
class ModelEntry:
    """One choice on the page: a style of a model file under the folder."""

    id: str
    label: str
    file: Path
    #: The style's name inside a multi-style file; None for a file's only style.
    style: str | None = None
    #: Whether the listing could read the file (else its error shows when it is picked).
    readable: bool = True
    #: The file as the page names it (its place in the folder, without suffix), never the server's path.
    shown: str = ""
    #: A blend (:meth:`Catalog.blended`): ``(style, weight)`` pairs, mixed in proportion; ``style`` is its label.
    blend: tuple[tuple[str, float], ...] = ()

    def public(self) -> dict[str, Any]:
        """What the page is told: ids, labels and names, never the server's paths."""
        return {"id": self.id, "label": self.label, "file": self.shown, "style": self.style,
                "readable": self.readable}

    def choice(self) -> StyleChoice | None:
        """What :meth:`stylenet.inference.InferenceModel.for_style` takes for this entry."""
        return dict(self.blend) if self.blend else self.style


def file_styles(path: Path) -> tuple[str | None, ...] | None:
    """The styles a model file holds, one entry each on the page: the names of a network of several
    styles (Dumoulin et al. 2017), else ``(None,)``, the file's only style; ``()`` for a model made
    for another task (a super-resolution model: no style to offer); None for a file the listing
    cannot read, which is one entry too: its error shows when it is picked."""
    try:
        return stored_styles(path, file_stamp(path))
    except OSError:  # a passing read error is not remembered: the next listing tries again
        return None


@functools.lru_cache(maxsize=1024)
def stored_styles(path: Path, stamp: tuple[int, ...]) -> tuple[str | None, ...] | None:
    """:func:`file_styles` of one version of a file (``stamp``: :func:`file_stamp`), read once. A
    safetensors file's names and task are in its header; a ``stylenet-train`` checkpoint's only in its
    pickled hyper-parameters, so the whole file is loaded (weights-only) to list them."""
    try:
        if is_safetensors(path):  # by content, as read_model tells them (a checkpoint may be named .safetensors)
            header = read_header(path)
            task = header.get("task", "style")
            names = style_names(header) if isinstance(header.get("styles"), list) else []
        else:
            check_pickle_size(path)  # (a StylenetError: one unreadable entry)
            model = read_model(path)
            task, names = model.task, model.styles
    except OSError:
        raise
    except Exception:  # any file the listing cannot read is one entry, whose error shows when it is picked
        return None
    if task != "style":
        return ()
    return tuple(names) if len(names) > 1 else (None,)


def check_pickle_size(path: Path) -> None:
    """Refuse a pickled file larger than :data:`LARGEST_PICKLED_MODEL`, before it is read (one line); a file
    that cannot be looked at is left to the reader, which says what is wrong with it."""
    try:
        size = 0 if is_safetensors(path) else path.stat().st_size  # (safetensors: its header alone is read)
    except OSError:
        return
    if size > LARGEST_PICKLED_MODEL:
        raise StylenetError(f"model file {str(path)!r} is {size / 2**20:.0f} MB, more than the web page reads as a "
                            f"pickle ({LARGEST_PICKLED_MODEL // 2**20} MB; a checkpoint of a style model: export it "
                            "with stylenet-export)")


def check_weights_fit(path: Path, weight_bytes: int | None = None) -> None:
    """Refuse a model whose weights alone pass :data:`LOADED_MODEL_BYTES` (one line): the memory plan sets that
    much aside for models, and the model in use stays loaded whatever its size (a 320-channel network's 664 MB
    took the server 0.7 GB past --memory-limit). A model file (.safetensors) is judged by its size before it is
    read, a pickle by its network's ``weight_bytes`` once read (within :data:`LARGEST_PICKLED_MODEL`)."""
    if weight_bytes is None:
        try:
            weight_bytes = path.stat().st_size if is_safetensors(path) else 0
        except OSError:  # left to the reader, which says what is wrong with it
            return
    if weight_bytes > LOADED_MODEL_BYTES:
        raise StylenetError(f"model file {str(path)!r} holds {weight_bytes / 2**20:.0f} MB of weights, more than "
                            f"this server keeps loaded within --memory-limit ({LOADED_MODEL_BYTES // 2**20} MB): "
                            "stylize with stylenet-stylize")


def model_files(folder: Path) -> list[Path]:
    """Model files under ``folder``, recursively (through links to folders, as photo folders are searched),
    sorted; hidden files and folders skipped, and what is there but no file (a named pipe, whose reading
    waits for a writer: it hung every request that lists the models). A broken link is listed: an
    entry that says it cannot be read."""
    found = []
    for dirpath, _, filenames in walk_folders(folder):
        found += [path for path in (Path(dirpath) / name for name in filenames
                                    if not name.startswith(".") and Path(name).suffix.lower() in READ_SUFFIXES)
                  if path.is_file() or not path.exists()]
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def model_entries(folder: Path) -> list[ModelEntry]:
    """``(label, file, style)`` entries for every style of every model file under ``folder``; ids are
    a hash of the file's place in the folder and the style, so they survive a rescan. A file is shown
    by its place without its suffix, unless another model file differs from it by the suffix alone."""
    files = model_files(folder)
    stems = collections.Counter(path.relative_to(folder).with_suffix("").as_posix() for path in files)
    entries = []
    for path in files:
        # a name that is not UTF-8 (os.fsdecode's surrogate escapes) keeps its bytes in the id and
        # shows with U+FFFD on the page
        relative, stem = path.relative_to(folder).as_posix(), path.relative_to(folder).with_suffix("").as_posix()
        shown = (stem if stems[stem] == 1 else relative).encode(errors="surrogateescape").decode(errors="replace")
        styles = file_styles(path)
        for style in (None,) if styles is None else styles:
            key = f"{relative}\0{style or ''}".encode(errors="surrogateescape")
            label = shown if style is None else f"{shown} / {style}"
            entries.append(ModelEntry(hashlib.sha256(key).hexdigest()[:16], label, path, style,
                                      readable=styles is not None, shown=shown))
    return entries


def file_stamp(path: Path) -> tuple[int, ...]:
    """What changes when a file is rewritten or replaced: a copy of another model of the same size
    can keep the modification time (``cp -p``, ``os.utime``), not the inode and change time that
    ``os.replace`` gives it. ``()`` for a missing file."""
    try:
        info = path.stat()
    except OSError:
        return ()
    return info.st_mtime_ns, info.st_size, info.st_ino, info.st_ctime_ns


class Catalog:
    """The model folder: lists its entries (rescanned on every call) and loads them on demand."""

    def __init__(self, folder: str | Path, options: dict[str, Any]) -> None:
        # absolute, its name is what the page is told (``stylenet-serve .`` names the folder, not ""); not
        # resolved: a link to the current release (models -> v3) is named and rescanned as the link
        self.folder = Path(os.path.abspath(folder))
        if not self.folder.is_dir():
            raise StylenetError(f"model folder {str(folder)!r} does not exist or is not a folder")
        self.options = options  # InferenceModel's: device, precision, max_memory
        #: per file, its stamp and model, least recently used first (see :data:`LOADED_MODEL_BYTES`)
        self._loaded: dict[Path, tuple[tuple[int, ...], InferenceModel]] = {}
        self._lock = threading.Lock()

    def entries(self) -> list[ModelEntry]:
        """The folder's models now."""
        return model_entries(self.folder)

    def find(self, model_id: str) -> ModelEntry:
        """The entry with this id (see :meth:`find_all`)."""
        return self.find_all([model_id])[0]

    def find_all(self, model_ids: list[str]) -> list[ModelEntry]:
        """The entries with these ids, from one listing of the folder: each an id of :meth:`entries`
        (only ever compared, never used as a path; an unknown one is :class:`UnknownModel`), or a
        blend's, ``ID:0.7;ID:0.3``, whose entry is made now (:meth:`blended`)."""
        listed = {entry.id: entry for entry in self.entries()}
        return [self.blended(model_id, listed) if BLEND_WEIGHT in model_id else self.listed(model_id, listed)
                for model_id in model_ids]

    def listed(self, model_id: str, listed: dict[str, ModelEntry]) -> ModelEntry:
        """``listed[model_id]``, or :class:`UnknownModel` saying to reload the page."""
        entry = listed.get(model_id)
        if entry is None:
            raise UnknownModel(f"unknown model id {model_id[:40]!r}: reload the page to see the models "
                               f"in {self.folder.name!r}")
        return entry

    def blended(self, spec: str, listed: dict[str, ModelEntry]) -> ModelEntry:
        """The blend ``ID:WEIGHT;ID:WEIGHT...`` of two or more styles of one model file of several styles,
        its weights finite and >= 0, not all zero; mixed in proportion to them and named by them as
        ``stylenet-stylize --blend`` mixes and names a blend (``a0.7+b0.3``)."""
        parts = [part.partition(BLEND_WEIGHT) for part in spec.split(BLEND_PART)]
        ids = [model_id for model_id, _, _ in parts]
        if len(ids) < 2 or len(set(ids)) < len(ids):  # checked before any look-up
            raise StylenetError(BLEND_FORM)
        weights = []
        for _, _, text in parts:
            try:
                weights.append(float(text))
            except ValueError:
                weights.append(-1.0)
            if not 0 <= weights[-1] < math.inf:
                raise StylenetError(f"blend {spec[:80]!r}: each style's weight must be a finite number >= 0, "
                                    f"got {text[:20]!r}")
        entries = [self.listed(model_id, listed) for model_id in ids]
        if len({entry.file for entry in entries}) > 1 or any(entry.style is None for entry in entries):
            raise StylenetError(BLEND_FORM)
        if not 0 < sum(weights) < math.inf:
            raise StylenetError(f"blend {spec[:80]!r}: the weights must not all be zero, and their sum must be "
                                "a finite number")
        given = {str(entry.style): weight for entry, weight in zip(entries, weights, strict=True)}
        label, first = blend_label(given), entries[0]
        return ModelEntry(spec, f"{first.shown} / {label}", first.file, label, shown=first.shown,
                          blend=tuple(given.items()))

    def load(self, entry: ModelEntry) -> InferenceModel:
        """The entry's model. Its file loads weights-only once (again when it has changed), and stays loaded
        while the models used since hold less than :data:`LOADED_MODEL_BYTES`; a style or blend of a file
        of several styles is that model's :meth:`~stylenet.inference.InferenceModel.for_style`, which keeps
        the last few it made."""
        from stylenet.cli.stylize import load_inference_model

        with self._lock:  # one load at a time: two tabs asking for one model load it once
            try:
                stamp = file_stamp(entry.file)
                cached = self._loaded.pop(entry.file, None)  # put back last: the least recently used goes first
                if cached is None or cached[0] != stamp:
                    check_pickle_size(entry.file)
                    check_weights_fit(entry.file)
                    cached = stamp, load_inference_model(str(entry.file), "style", self.options)
                    check_weights_fit(entry.file, cached[1].weight_bytes)
                self._loaded[entry.file] = cached
                model = cached[1].for_style(entry.choice())
                self._let_go(model)
                return model
            except StylenetError as err:  # the page is told the folder's name, not where it is on the server
                message = str(err)
                for where in (repr(str(self.folder))[1:-1], str(self.folder)):  # as repr() quotes a path too
                    message = message.replace(where, self.folder.name)
                raise StylenetError(message) from None

    def _let_go(self, used: InferenceModel) -> None:
        """Forget the least recently used files' models (a photo still running keeps its own) until those
        kept hold at most :data:`LOADED_MODEL_BYTES`; the file just used stays (within that much: see
        :func:`check_weights_fit`), and of the styles and blends of a file of several, which it keeps a copy
        of each, the one just ``used`` (nine blends of a 25 MB file of four styles held 255 MB)."""
        sizes = {path: model.weight_bytes for path, (_, model) in self._loaded.items()}
        for path in list(self._loaded)[:-1]:
            if sum(sizes.values()) <= LOADED_MODEL_BYTES:
                break
            del self._loaded[path], sizes[path]
        if sum(sizes.values()) > LOADED_MODEL_BYTES:
            next(reversed(self._loaded.values()))[1].let_go_of_styles(LOADED_MODEL_BYTES, keep=used)
