"""Prepared datasets: photos resized and cropped once into uint8 shards that training memory-maps.

The original Lua code converted COCO to one HDF5 file of 256x256 images before training; decoding
and resizing an 80k-photo JPEG folder at every epoch costs more CPU than the training step on a
small machine. ``stylenet-prepare`` (:mod:`stylenet.cli.prepare`) writes the same thing as plain
NumPy files, so reading needs no extra dependency and no decoding:

* ``shard_NNNNN.npy``: uint8 (N, S, S, 3), RGB, each photo's short side resized to S (antialiased
  bilinear, as :func:`stylenet.image.resize_short_side`) and centre-cropped;
* ``manifest.json``: the format, S, the image count, per shard its file and its sources (path
  relative to ``source_root`` and the SHA-256 of the file's bytes), every skipped file with the
  reason, and the photos enlarged to S (``enlarged``: path -> [width, height]; training for style
  takes them, super-resolution skips them, as it skips photos smaller than its patch). It is replaced
  atomically after each finished shard, so an interrupted preparation resumes from the last finished
  shard and a reader never sees a half-written dataset.

This module only reads; it imports neither Lightning nor the data module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from stylenet.errors import StylenetError, check_format_version, first_line

FORMAT = "stylenet-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.npy"


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a prepared dataset folder, checked for format, version and shape
    (:func:`manifest_problem`): every reader (training, a resumed ``stylenet-prepare``) can then index
    it without meeting a damaged or hand-edited file as a traceback."""
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StylenetError(f"{str(root)!r} is not a prepared dataset (no {MANIFEST}); "
                            "make one with stylenet-prepare <photo folder> -o <dir>") from None
    except (OSError, ValueError, RecursionError) as err:  # invalid JSON or UTF-8 (ValueErrors), nested too deep
        raise StylenetError(f"cannot read {str(path)!r}: {first_line(err)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StylenetError(f"{str(path)!r} is not a {FORMAT} manifest")
    check_format_version(manifest.get("version"), FORMAT_VERSION, repr(str(path)))
    problem = manifest_problem(manifest)
    if problem is not None:
        raise StylenetError(f"{str(path)!r} is a damaged {FORMAT} manifest ({problem}); run stylenet-prepare "
                            "again into a new folder")
    return manifest


def _whole(value: object, least: int) -> bool:
    """Whether ``value`` is a JSON whole number (not a bool, which Python counts as one) >= ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _strings(value: object, count: int) -> bool:
    """Whether ``value`` is a JSON list of ``count`` strings."""
    return isinstance(value, list) and len(value) == count and all(isinstance(item, str) for item in value)


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """The first field of a manifest (of the right format and version) that is not what
    ``stylenet-prepare`` writes, as a phrase; None when every field the readers use is."""
    missing = next((key for key in ("size", "source_root", "count", "shards", "skipped") if key not in manifest), None)
    if missing is not None:
        return f"no {missing!r}"
    if not _whole(manifest.get("size"), 1):
        return "'size' is not a whole number of pixels"
    if not isinstance(manifest.get("source_root"), str):
        return "'source_root' is not a path"
    if not _whole(manifest.get("count"), 0):
        return "'count' is not a whole number"
    if not isinstance(manifest.get("complete", False), bool):
        return "'complete' is neither true nor false"
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        return "'shards' is not a list"
    for index, entry in enumerate(shards):
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or Path(name).name != name:
            return f"shard {index} names no file of the folder"
        sources = entry.get("sources")
        if not isinstance(sources, list) or not all(_strings(source, 2) for source in sources):
            return f"shard {index}'s 'sources' are not [path, sha256] pairs"
    skipped = manifest.get("skipped")
    if not isinstance(skipped, list) or not all(isinstance(entry, dict) and isinstance(entry.get("path"), str)
                                                for entry in skipped):
        return "'skipped' is not a list of skipped paths"
    enlarged = manifest.get("enlarged", {})  # (none in a manifest of an older stylenet-prepare)
    if not isinstance(enlarged, dict) or not all(isinstance(size, list) and len(size) == 2 and
                                                 all(_whole(side, 1) for side in size) for size in enlarged.values()):
        return "'enlarged' is not a map of paths to [width, height]"
    return None


class ShardStore:
    """Read access to a prepared dataset: ``sources[i]`` is the photo row ``i`` was made from and
    ``image(i)`` its (S, S, 3) uint8 pixels.

    The shards are memory-mapped lazily, in the process that reads them, and never pickled: a
    DataLoader worker maps the files itself instead of receiving a copy of the data. They are
    mapped copy-on-write, which gives writable arrays (so ``torch.from_numpy`` can wrap them)
    without ever writing to the files.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        manifest = read_manifest(self.root)
        if manifest.get("complete") is False:  # stylenet-prepare was stopped: only part of the photos are here
            raise StylenetError(f"prepared dataset {str(self.root)!r} is incomplete (stylenet-prepare was "
                                f"interrupted): run stylenet-prepare {manifest.get('source_root', 'SOURCE')} "
                                f"-o {self.root} again to finish it")
        self.size = int(manifest["size"])
        source_root = Path(manifest["source_root"])
        self.files = [entry["file"] for entry in manifest["shards"]]
        self.rows = [len(entry["sources"]) for entry in manifest["shards"]]
        self.sources: list[Path] = []
        self.location: list[tuple[int, int]] = []  # row -> (shard, row within the shard)
        for shard, entry in enumerate(manifest["shards"]):
            self.sources += [source_root / relative for relative, _sha in entry["sources"]]
            self.location += [(shard, row) for row in range(len(entry["sources"]))]
        if not self.sources:
            raise StylenetError(f"prepared dataset {str(self.root)!r} holds no images")
        #: the photos enlarged to ``size``, (width, height) each; None: not recorded (an older stylenet-prepare)
        self.enlarged: dict[Path, tuple[int, int]] | None = None if "enlarged" not in manifest else {
            source_root / relative: (width, height) for relative, (width, height) in manifest["enlarged"].items()}
        self._maps: list[np.ndarray] | None = None
        self._shards()  # a missing, truncated or short shard is an error now, not a traceback mid-run

    def __len__(self) -> int:
        return len(self.sources)

    def check_size(self, image_size: int) -> None:
        """Refuse crops larger than the prepared images: upsampling prepared pixels would silently train on
        blurred images."""
        if self.size < image_size:
            raise StylenetError(f"the prepared dataset {str(self.root)!r} has {self.size} px images, smaller "
                                f"than data.image_size={image_size}; prepare it again with --size {image_size}")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    def _shards(self) -> list[np.ndarray]:
        if self._maps is None:
            maps = []
            for name, rows in zip(self.files, self.rows, strict=True):
                path = self.root / name
                try:
                    array = np.load(path, mmap_mode="c")
                except (OSError, ValueError) as err:  # missing, truncated, not a .npy file
                    raise StylenetError(f"cannot read shard {str(path)!r}: {first_line(err)}; run stylenet-prepare "
                                        f"again into a new folder") from None
                if array.dtype != np.uint8 or array.shape != (rows, self.size, self.size, 3):
                    raise StylenetError(f"shard {str(path)!r} holds {array.dtype} {array.shape}, expected uint8 "
                                        f"{(rows, self.size, self.size, 3)} (the manifest lists {rows} images)")
                maps.append(array)
            self._maps = maps
        return self._maps

    def image(self, row: int) -> np.ndarray:
        """(S, S, 3) uint8 view of image ``row`` (no copy, no decoding)."""
        shard, index = self.location[row]
        return self._shards()[shard][index]
