"""Training data: a folder of photos (COCO train2014 as it is), or scikit-image's bundled photos.

Johnson et al. 2016 (Sec. 4.1) train on ~80k COCO images at 256x256, batch 4. Here every sample's
order and crop derive from (seed, stream position) alone, so an interrupted run resumed from a
checkpoint sees exactly the batches the uninterrupted run would have seen, on one process or many.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import multiprocessing
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from stylenet.errors import EveryRankError, StylenetError, first_line, first_rank
from stylenet.image import (
    DEMO_PHOTOS,
    IMAGE_EXTENSIONS,
    UNREAD_PHOTO_SUFFIXES,
    ImageError,
    crop,
    demo_root,
    list_by_kind,
    load_rgb,
    training_sample,
    unread_photos_note,
)
from stylenet.metrics import SSIM_RADIUS, degrade
from stylenet.nets.sr import SuperResolutionNet
from stylenet.shards import ShardStore
from stylenet.styles import file_sha256

log = logging.getLogger(__name__)

#: How DataLoader workers start: from a clean server process, not by forking this one. By the time a loader
#: starts, this process has threads (DDP's gloo, TensorBoard's writer), and a fork copies the locks they
#: hold; a worker forked at the wrong moment hangs before it runs its first line (seen in CI: rank 0's
#: worker stuck in PyOS_AfterFork_Child, and the run's exit then waiting on it for ever).
WORKER_START = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def worker_context() -> multiprocessing.context.BaseContext:
    """The context of :data:`WORKER_START`. A forkserver imports this module (torch, Lightning) once, before
    it forks any worker, so that each worker starts in a fork of it, not in a fresh interpreter."""
    context = multiprocessing.get_context(WORKER_START)
    if WORKER_START == "forkserver":
        context.set_forkserver_preload([__name__])  # takes effect when the server starts (the first loader)
    return context


#: The smallest training crop: the style network pads its input by 4 pixels for its 9x9 layer, and
#: reflection cannot pad a side by as much as its own length.
MIN_IMAGE_SIZE = 8
#: Seconds between a DataLoader worker's checks that the training process still lives.
MAIN_PROCESS_POLL_S = 1.0


def exit_with_main(main_pid: int, rank: int, worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: end this worker once the training process ``main_pid`` is gone.

    A forkserver's workers are its children, not the training process's: torch's watchdog watches the
    parent, the forkserver, which lives on as long as any worker holds its pipe, so after a ``kill -9``
    or the OOM killer the workers (hundreds of MB each) and the server would never end. Lightning seeds
    workers (``seed_everything(workers=True)``) only through a loader without a ``worker_init_fn`` of its
    own, so this one does what its function would, for the process's ``rank``."""
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank=rank)

    def watch() -> None:
        while process_alive(main_pid):
            time.sleep(MAIN_PROCESS_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="stylenet-main-watch", daemon=True).start()


def start_worker(main_pid: int, rank: int, pixel_limit: int | None, worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: Pillow's pixel limit of the training process (which its command
    raises for a ``data.max_pixels`` beyond it: :func:`stylenet.cli.allow_pixels`), then
    :func:`exit_with_main`. A worker starts from a fresh interpreter (:data:`WORKER_START`), with
    Pillow's default limit, and would refuse as a decompression bomb what the setting allows."""
    Image.MAX_IMAGE_PIXELS = pixel_limit
    exit_with_main(main_pid, rank, worker_id)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: not gone, and where /proc says so, not a zombie (killed, not yet
    reaped, which the kernel still counts as a process)."""
    if os.path.exists("/proc/self/stat"):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rpartition(")")[2].split()[0] != "Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


class InFlight:
    """Which file each DataLoader worker is decoding, in memory shared with the main process.

    A worker killed by a crashing decoder or the OOM killer, or one stuck past ``timeout_s``, reaches
    the main process as a RuntimeError with at most a pid; this table lets the error name the file."""

    def __init__(self, workers: int) -> None:
        self.index = multiprocessing.RawArray("q", [-1] * workers)
        self.pid = multiprocessing.RawArray("q", [0] * workers)

    @contextlib.contextmanager
    def loading(self, index: int) -> Iterator[None]:
        info = get_worker_info()
        if info is None:  # loading in the main process: its own traceback says everything
            yield
            return
        self.pid[info.id], self.index[info.id] = os.getpid(), index
        yield
        self.index[info.id] = -1  # not reached when loading raised: the file stays the suspect

    def suspects(self, message: str) -> list[int]:
        """Indices being loaded: by the worker whose pid ``message`` names, else by every busy worker."""
        busy = [(pid, index) for pid, index in zip(self.pid, self.index, strict=True) if index >= 0]
        named = [index for pid, index in busy if re.search(rf"\b{pid}\b", message)]
        return named or [index for _, index in busy]


class ImageFileDataset(Dataset):
    """Photos resized (short side to ``scale_size``, by default ``image_size``) and cropped to
    ``image_size``; unreadable files come back as ``None`` images, to be counted and listed by the
    collate function instead of crashing a run.

    Training items are ``(batch_number, position, index)`` triples from :class:`StreamSampler`: the
    crop is drawn from a generator seeded with (seed, position). Validation items are plain indices
    and get a centre crop."""

    #: set by :class:`ImageFolderDataModule` when the loader has worker processes
    in_flight: InFlight | None = None

    def __init__(self, files: Sequence[Path], image_size: int, seed: int = 0,
                 max_pixels: int | None = None, scale_size: int | None = None) -> None:
        self.files, self.image_size, self.seed, self.max_pixels = list(files), image_size, seed, max_pixels
        self.scale_size = scale_size or image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int | tuple[int, int, int]) -> dict[str, Any]:
        batch_number, position, index = item if isinstance(item, tuple) else (-1, -1, item)
        path = self.files[index]
        rng = random.Random(f"{self.seed}:{position}") if position >= 0 else None
        with self.in_flight.loading(index) if self.in_flight else contextlib.nullcontext():
            try:
                image = self.patch(self.read(path), path, rng)
            except ImageError as err:
                image, error = None, str(err)
            else:
                error = None
        return {"image": image, "path": str(path), "error": error, "batch_number": batch_number, "position": position}

    def read(self, path: Path) -> torch.Tensor:
        """The photo at ``path``, decoded to (3, H, W) in [0, 1]."""
        kwargs = {} if self.max_pixels is None else {"max_pixels": self.max_pixels}
        return load_rgb(path, **kwargs)

    def patch(self, image: torch.Tensor, path: Path, rng: random.Random | None) -> torch.Tensor:
        """The sample cut from one photo (the paper: COCO photos resized to 256x256), one line naming
        ``path`` when it is unusable (decoded, but too elongated to resize)."""
        return training_sample(image, path, self.scale_size, self.image_size, rng)


class ShardDataset(ImageFileDataset):
    """:class:`ImageFileDataset`'s items (same ``(batch_number, position, index)`` protocol, same
    seeded crops) read from a prepared dataset (:mod:`stylenet.shards`) instead of decoded photos.

    ``files`` are the photos the shards were made from (the manifest's sources); none is opened here
    (the end of a run, :func:`stylenet.cli.train.finish`, reads the held-out ones' files).
    Shards prepared at the training size (``stylenet-prepare``'s default, like the original code's
    256x256 HDF5) are served as they are; shards prepared larger give random ``image_size`` crops in
    training and centre crops in validation, as photos do. Smaller shards are refused: upsampling
    prepared pixels would silently train on blurred images."""

    def __init__(self, files: Sequence[Path], image_size: int, seed: int = 0, *, store: ShardStore,
                 refuse_enlarged: bool = False) -> None:
        super().__init__(files, image_size, seed)
        store.check_size(image_size)
        self.store, self.refuse_enlarged = store, refuse_enlarged
        self.rows = {str(path): row for row, path in enumerate(store.sources)}

    def read(self, path: Path) -> torch.Tensor:
        """The prepared uint8 pixels as a (3, S, S) view of the memory map: no copy, no decoding. With
        ``refuse_enlarged`` (super-resolution), a photo the shards hold enlarged is a bad file, as
        :class:`SuperResolutionPatches` refuses a photo smaller than its patch."""
        enlarged = self.store.enlarged.get(path) if self.refuse_enlarged and self.store.enlarged else None
        if enlarged:
            raise ImageError(f"cannot use image {str(path)!r}: {enlarged[0]}x{enlarged[1]} px, enlarged to the "
                             f"prepared dataset's {self.store.size} px; enlarged, it would be a blurred target")
        return torch.from_numpy(self.store.image(self.rows[str(path)])).permute(2, 0, 1)

    def patch(self, image: torch.Tensor, path: Path, rng: random.Random | None) -> torch.Tensor:
        """Crop first, then convert: only the crop's pixels are copied to float."""
        return crop(image, self.image_size, rng).float().div_(255.0)


def collate_skipping_bad(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good images; report the bad ones (their one-line errors) alongside the batch, and
    the good ones' paths (so that an error about this batch can name its files); ``position``: the
    stream position of its first sample (-1 in validation), ``positions``: the good ones' (a style of
    several is a sample's position's, :meth:`stylenet.tasks.StyleTransferTask.batch_styles`)."""
    good = [s["image"] for s in samples if s["image"] is not None]
    return {
        "images": torch.stack(good) if good else torch.empty(0, 3, 0, 0),  # (B, 3, S, S)
        "paths": [s["path"] for s in samples if s["image"] is not None],
        "skipped": [s["error"] for s in samples if s["image"] is None],
        "batch_number": samples[0]["batch_number"],
        "position": samples[0]["position"],
        "positions": [s["position"] for s in samples if s["image"] is not None],
    }


class StreamSampler(Sampler):
    """An endless, resumable stream of shuffled samples, sharded over ranks.

    Stream position p belongs to epoch p // N and picks ``permutation(seed, epoch)[p % N]``. The k-th
    batch of rank r from the start holds positions ``start_position + (k * world_size + r) * batch_size
    + j``, so all ranks together consume consecutive blocks, no two ranks see the same sample, and
    restarting at the first position not consumed reproduces the rest of the stream exactly, also with
    another batch size or number of processes. Batches are numbered on from ``start_batch`` (the
    optimiser steps); ``start_position`` defaults to where batch ``start_batch`` starts at this batch
    size and number of processes. Yields batches (lists of items) for a DataLoader's ``batch_sampler``.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0, start_position: int | None = None) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.start_position = start_batch * world_size * batch_size if start_position is None else start_position
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def index_at(self, position: int) -> int:
        epoch = position // self.num_items
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.num_items, generator=generator)
        return int(self._order[position % self.num_items])

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for k in itertools.count():
            first = self.start_position + (k * self.world_size + self.rank) * self.batch_size
            yield [(self.start_batch + k, p, self.index_at(p)) for p in range(first, first + self.batch_size)]


def copies_of(held_out: Sequence[Path], files: Sequence[Path]) -> dict[Path, Path]:
    """{file: the held-out photo it is a copy of}: each of ``files`` whose bytes are a held-out photo's (a
    backup folder, a link to it). A folder of photos often holds such copies, and a held-out photo that is
    also trained on measures nothing. Sizes first, so that only files of a held-out photo's size are read."""
    by_size: dict[int, list[Path]] = {}
    for photo in held_out:
        with contextlib.suppress(OSError):  # an unreadable held-out photo is named when it is read
            by_size.setdefault(photo.stat().st_size, []).append(photo)
    # a held-out photo's samples and hash are read once, when a file of its size comes; a file of that size
    # (a folder of uncompressed photos of one size has nothing but) is read in full only if its samples match
    sample, digest = functools.cache(sampled_bytes), functools.cache(file_sha256)
    copies = {}
    for path in files:
        with contextlib.suppress(OSError):
            same_size = by_size.get(path.stat().st_size, [])
            original = next((photo for photo in same_size
                             if sample(photo) == sample(path) and digest(photo) == digest(path)), None)
            if original is not None:
                copies[path] = original
    return copies


def sampled_bytes(path: Path, chunk: int = 4096) -> bytes:
    """The first, middle and last ``chunk`` bytes of a file: two photos that differ almost always differ
    there, where reading them whole (a folder of uncompressed photos of one size) would read the folder."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        parts = []
        for offset in (0, max(0, size // 2 - chunk // 2), max(0, size - chunk)):
            handle.seek(offset)
            parts.append(handle.read(chunk))
    return b"".join(parts)


def first_problem(problem: str | None) -> str:
    """The first rank's ``problem`` on every rank of a DDP run (each calls this together, once they agreed
    that one has a problem): every rank then stops with that rank's own words."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return problem or "too many unreadable training images"
    problems: list[str | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(problems, problem)
    return next(found for found in problems if found)


def append_once(path: Path, lines: list[str]) -> list[str]:
    """Append to the text file ``path`` those of ``lines`` it does not hold yet, and return them. Under an
    exclusive lock where the system has one (``fcntl``): the processes of a multi-GPU run each meet bad
    files in their own part of the stream, and list them in one file, each once."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; two processes that meet one file at once may each list it
        fcntl = None
    with open(path, "a+", encoding="utf-8", errors="backslashreplace") as report:
        if fcntl is not None:
            fcntl.flock(report, fcntl.LOCK_EX)  # released as the file closes
        report.seek(0)
        held = set(report.read().splitlines())
        fresh = [line for line in lines if line not in held]
        report.writelines(f"{line}\n" for line in fresh)
    return fresh


class ImageFolderDataModule(pl.LightningDataModule):
    """Photos from a folder searched recursively (``source=folder`` or ``coco``) or the bundled demo
    photos (``source=demo``); a fixed held-out set of ``val_images`` files for validation grids.

    Bad files are skipped, counted, written to ``skipped_images.txt`` in the run folder, and the run
    stops with an error if their share exceeds ``max_bad_fraction``. The number of the next batch
    and the counts of samples and bad files consumed are part of the checkpoint, so a resumed run
    continues the same stream and judges its bad-file share over the whole run, not since the resume.

    ``scale_size`` (default ``image_size``) is the photos' short side before the crop. The paper trains
    on whole 256 px images; a run that trains on smaller crops to save time keeps the scale the network
    will stylize at by cropping photos resized to that scale, instead of shrinking whole photos.
    """

    #: what cuts a sample from a photo (subclasses change the cut, not the listing or the stream)
    dataset_class: type[ImageFileDataset] = ImageFileDataset
    #: what the crop side must be a multiple of: the style network's two stride-2 halvings (sec. 3.1)
    #: give back its own size only then
    size_multiple: int = 4

    def __init__(self, source: str = "demo", root: str | None = None, image_size: int = 256,
                 batch_size: int = 4, num_workers: int = 0, val_images: int = 4, seed: int = 0,
                 max_bad_fraction: float = 0.05, max_pixels: int | None = None,
                 timeout_s: float = 120.0, scale_size: int | None = None) -> None:
        super().__init__()
        for setting, value in (("image_size", image_size), ("batch_size", batch_size),
                               ("num_workers", num_workers), ("val_images", val_images),
                               ("max_pixels", max_pixels), ("scale_size", scale_size)):
            optional = setting in ("max_pixels", "scale_size")  # null: the default limit, the crop size
            if (value is not None or not optional) and (not isinstance(value, int) or isinstance(value, bool)):
                raise StylenetError(f"data.{setting} must be a whole number{' or null' if optional else ''}, "
                                    f"got {value!r}")
        if max_pixels is not None and max_pixels < 1:
            raise StylenetError(f"data.max_pixels must be null or >= 1, got {max_pixels}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s >= 0:
            raise StylenetError(f"data.timeout_s must be a number of seconds >= 0 (0: wait forever), got {timeout_s!r}")
        if not isinstance(max_bad_fraction, (int, float)) or not 0 <= max_bad_fraction <= 1:
            raise StylenetError(f"data.max_bad_fraction must be a number from 0 to 1, got {max_bad_fraction!r}")
        if num_workers < 0:
            raise StylenetError(f"data.num_workers must be >= 0, got {num_workers}")
        if val_images < 0:
            raise StylenetError(f"data.val_images must be >= 0 (0: no validation), got {val_images}")
        if image_size < MIN_IMAGE_SIZE or image_size % self.size_multiple:
            multiple = f"a multiple of {self.size_multiple} and " if self.size_multiple > 1 else ""
            raise StylenetError(f"data.image_size must be {multiple}at least {MIN_IMAGE_SIZE}, got {image_size}")
        if scale_size is not None and scale_size < image_size:
            raise StylenetError(f"data.scale_size must be null or >= data.image_size ({image_size}), got {scale_size}")
        if scale_size is not None and source == "shards":
            raise StylenetError("data.scale_size is not used with source=shards (prepared at their own size): "
                                "set it to null")
        if batch_size < 1:
            raise StylenetError(f"data.batch_size must be >= 1, got {batch_size}")
        if source not in ("demo", "folder", "coco", "shards"):
            raise StylenetError(f"data.source must be demo, folder, coco or shards, got {source!r}")
        if source == "demo" and root is not None:  # data=coco forgotten: the bundled photos, silently
            raise StylenetError(f"data.root={root} is read by data=folder, coco or shards, and data=demo trains on "
                                "the bundled photos: add data=folder (or data=coco, data=shards)")
        self.source, self.root, self.image_size, self.batch_size = source, root, image_size, batch_size
        self.num_workers, self.val_images, self.seed = num_workers, val_images, seed
        self.max_bad_fraction, self.max_pixels, self.timeout_s = max_bad_fraction, max_pixels, timeout_s
        self.scale_size = scale_size
        self.train_files: list[Path] = []
        self.val_files: list[Path] = []
        self.next_batch = 0
        self.next_position: int | None = None
        self.samples_seen = 0
        self.bad_seen = 0  # bad samples consumed since step 0 (restored on resume), as samples_seen
        self.bad_restored = 0  # of which counted before this process resumed from a checkpoint
        self.report_path: Path | None = None
        self.held_out_reported: set[str] = set()  # the errors of bad held-out photos already named
        self.bad_listed: set[str] | None = None  # the training photos' errors listed so far (read at the first)
        self.shards: ShardStore | None = None  # source=shards: the prepared dataset, once listed
        self.listed_root: Path | None = None  # the folder the files were listed from (coco's train2014 too)
        self.worker_datasets: list[ImageFileDataset] = []

    def list_files(self) -> list[Path]:
        if self.source == "demo":
            return [demo_root() / name for name in DEMO_PHOTOS if (demo_root() / name).is_file()]
        if not self.root:
            raise StylenetError(f"data.root must name a folder of images for data={self.source}")
        if self.source == "shards":
            self.shards = ShardStore(self.root)
            self.shards.check_size(self.image_size)  # before the run starts (its loaders' datasets are made in fit)
            return self.shards.sources
        root = Path(self.root).expanduser()
        if not root.is_dir():
            hint = " (data=coco: set data.root or $COCO_ROOT to the unpacked train2014 folder)" \
                if self.source == "coco" else ""
            raise StylenetError(f"data.root {str(root)!r} is not a folder{hint}")
        if self.source == "coco" and (root / "train2014").is_dir():
            # the dataset's own root: its val2014 (and test2015) are not the paper's training photos
            root = root / "train2014"
            log.info("data=coco: training on %s, the train2014 folder of the data.root given", root)
        self.listed_root = root
        files, unread = list_by_kind(root, IMAGE_EXTENSIONS, UNREAD_PHOTO_SUFFIXES, skip_runs=True)
        if not files:
            held = f" (it holds {unread_photos_note(unread)})" if unread else ""
            raise StylenetError(f"data.root {str(root)!r} contains no images{held}")
        if unread and first_rank():
            log.warning("data.root %s holds %s; they are not trained on", root, unread_photos_note(unread))
        return files

    def setup(self, stage: str | None = None) -> None:
        """List the files once and hold out an evenly spread, fixed set for validation."""
        if self.train_files:
            return
        files = self.list_files()
        count = min(self.val_images, max(0, len(files) - 1))
        if count < self.val_images:  # one photo at least is kept for training
            log.warning("data.val_images=%d, but the data lists %d photo(s): %d held out%s", self.val_images,
                        len(files), count, "" if count else " (no validation, stylized photo or quality report)")
        held_out = set(range(0, len(files), max(1, len(files) // max(count, 1)))[:count]) if count else set()
        self.val_files = [f for i, f in enumerate(files) if i in held_out]
        self.train_files = [f for i, f in enumerate(files) if i not in held_out]
        if self.source != "shards":  # (stylenet-prepare keeps one of identical photos)
            copies = copies_of(self.val_files, self.train_files)
            if copies and len(copies) == len(self.train_files):  # leaving them out would leave nothing to train on
                log.warning("every training photo is a copy of a held-out photo: validation and the quality report "
                            "measure photos the network trains on")
            elif copies:
                log.warning("%d training photo(s) left out as copies of held-out photos (%s): validation and the "
                            "quality report measure photos the network never saw", len(copies),
                            ", ".join(f"{copy} = {original}" for copy, original in list(copies.items())[:3]))
                self.train_files = [f for f in self.train_files if f not in copies]

    def _loader(self, dataset: ImageFileDataset, **kwargs: Any) -> DataLoader:
        workers, rank = self.num_workers, getattr(self.trainer, "global_rank", 0)
        if workers > 0:
            dataset.in_flight = InFlight(workers)
            self.worker_datasets.append(dataset)
        # pinned for a GPU run only: a CPU run (trainer=cpu, ddp_cpu) on a GPU machine would start CUDA in each process
        to_gpu = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return DataLoader(dataset, num_workers=workers, collate_fn=collate_skipping_bad,
                          multiprocessing_context=worker_context() if workers > 0 else None,
                          worker_init_fn=functools.partial(start_worker, os.getpid(), rank, Image.MAX_IMAGE_PIXELS)
                          if workers > 0 else None,
                          persistent_workers=workers > 0, timeout=self.timeout_s if workers > 0 else 0,
                          pin_memory=to_gpu, **kwargs)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = StreamSampler(len(self.train_files), self.batch_size, self.seed, rank, world, self.next_batch,
                                self.next_position)
        return self._loader(self.make_dataset(self.train_files), batch_sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.make_dataset(self.val_files), batch_size=self.batch_size, shuffle=False)

    def make_dataset(self, files: list[Path]) -> ImageFileDataset:
        """Samples of ``files``: read from the prepared shards for ``source=shards``, else decoded."""
        if self.source == "shards":
            return ShardDataset(files, self.image_size, self.seed, store=self.shards)
        return self.dataset_class(files, self.image_size, self.seed, self.max_pixels, self.scale_size)

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Count what training consumes (not what the loader prefetched) and police bad files; name
        bad held-out photos (validation leaves them out)."""
        if self.trainer is not None and not self.trainer.training:  # validating
            for error in batch["skipped"]:
                self.record_bad_held_out(error)
        if self.trainer is not None and self.trainer.training:
            self.next_batch = batch["batch_number"] + 1
            # the first position no rank has taken: the stream goes on from there with any batch size
            ranks_after = self.trainer.world_size - self.trainer.global_rank  # this one's included
            self.next_position = batch["position"] + ranks_after * self.batch_size
            self.samples_seen += len(batch["images"]) + len(batch["skipped"])
            problem = self.record_bad(batch["skipped"])
            # decided by all ranks together: a rank that stopped alone would leave the others waiting
            if self.trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
                raise EveryRankError(first_problem(problem))
        return batch

    def record_bad(self, errors: list[str]) -> str | None:
        """Log, list and count the one-line ``errors`` of a batch's bad samples; returns why the run must
        stop once more than ``max_bad_fraction`` of the samples consumed (after at least 20 batches, or
        none of the first 2 batches could be read) were bad, else None."""
        if not errors:
            return None
        self.bad_seen += len(errors)  # every time: the fraction counts samples, not files
        if self.bad_listed is None:  # a resumed run's list goes on without repeating what it holds
            listed = self.report_path.read_text(errors="backslashreplace") if self.report_path and \
                self.report_path.is_file() else ""
            self.bad_listed = set(listed.splitlines())
        new = list(dict.fromkeys(error for error in errors if error not in self.bad_listed))
        self.bad_listed.update(new)
        if self.report_path is not None and new:
            new = append_once(self.report_path, new)  # (under DDP another process may have met the file first)
        for error in new:  # once per file, not every epoch that meets it again
            log.warning("skipped %s", error)
        fraction = self.bad_seen / max(self.samples_seen, 1)
        # judged after 20 batches, or at once when not one image of the first 2 batches could be read (a run
        # shorter than 20 batches must not finish as if it had trained)
        nothing_read = self.bad_seen == self.samples_seen >= 2 * self.batch_size
        if (self.samples_seen >= 20 * self.batch_size or nothing_read) and fraction > self.max_bad_fraction:
            earlier = f", {self.bad_restored} of them before the resume" if self.bad_restored else ""
            files = sum(not line.startswith("held-out photo") for line in self.bad_listed)  # (by every process)
            # a small folder draws its one bad file again every epoch: said, or "12 of 80" reads as 12 files
            return (f"{self.bad_seen} of {self.samples_seen} training samples drawn were unreadable or unusable "
                    f"({fraction:.1%} > data.max_bad_fraction={self.max_bad_fraction}{earlier}), from {files} "
                    f"file(s), each counted every time it is drawn: see {self.report_path or 'the log'} (remove "
                    "them, or raise data.max_bad_fraction)")
        return None

    def record_bad_held_out(self, error: str) -> None:
        """Log and list a held-out photo that cannot be used, once per run: validation meets it at every
        check, and the end of the run (``stylenet.cli.train.finish``) again; by the first process only
        (under DDP every process validates every held-out photo)."""
        if error in self.held_out_reported or not getattr(self.trainer, "is_global_zero", True):
            return
        self.held_out_reported.add(error)
        log.warning("held-out photo skipped: %s", error)
        if self.report_path is not None:
            with open(self.report_path, "a", encoding="utf-8", errors="backslashreplace") as report:
                report.write(f"held-out photo: {error}\n")

    def explain_failure(self, err: BaseException) -> StylenetError | None:
        """A one-line error naming the file(s) a DataLoader worker was decoding when it died, hung past
        ``timeout_s`` or raised; None when ``err`` did not come from a worker. A worker that died
        between photos (killed from outside: the OOM killer, a ``kill``) is one line too, not torch's
        traceback: no file is to blame, and the run's checkpoints are intact."""
        # torch's messages for all three ("DataLoader worker (pid 12) exited unexpectedly", "DataLoader
        # timed out after 120 seconds", "Caught X in DataLoader worker process 0") are the only marker.
        message = str(err)
        if isinstance(err, StylenetError) or "DataLoader" not in message:
            return None
        files = [str(dataset.files[index]) for dataset in self.worker_datasets
                 for index in dataset.in_flight.suspects(message)]
        if not files and "exited unexpectedly" not in message:  # raised in a worker, or by the loader itself
            return None
        if not files:
            return StylenetError(f"{first_line(err)} while it was loading no photo (stopped from outside, or out "
                                 "of memory?): resume=auto continues from the last checkpoint")
        return StylenetError(f"{first_line(err)} while loading {', '.join(files)}: remove or "
                             "fix the file, or set data.num_workers=0 to debug it in the main process")

    def listing(self, root: Path | None = None) -> dict[str, Any]:
        """How many photos the source lists and a digest of their paths (relative to ``root``, by default the
        folder listed: a COCO root and its train2014 folder, the two spellings of one data.root, list the
        same): the held-out set and the stream's order follow from this list alone."""
        root = root or (demo_root() if self.source == "demo" else self.listed_root or (
            Path(self.root).expanduser() if self.root else None))
        files = sorted([*self.train_files, *self.val_files])
        names = [path.relative_to(root).as_posix() if root and path.is_relative_to(root) else str(path)
                 for path in files]
        return {"photos": len(files), "photos_sha256": hashlib.sha256("\n".join(names).encode(
            "utf-8", "surrogateescape")).hexdigest()}

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands and what it consumed: ``bad_files`` is the count of bad samples (the
        list is ``skipped_images.txt``; keeping it out of the checkpoint keeps checkpoints small), and,
        once listed, the :meth:`listing` that the stream's positions refer to."""
        state = {"next_batch": self.next_batch, "samples_seen": self.samples_seen, "bad_files": self.bad_seen}
        if self.next_position is not None:
            state["next_position"] = self.next_position
        return {**state, **self.listing()} if self.train_files else state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the stream, and the bad-file budget, where the checkpoint left them. Checkpoints
        written while this count was saved but not restored hold it under the same key, so resuming
        them restores it too; a state without it (hand-made) counts from zero. A source that now lists
        other photos is a warning: the run goes on (new photos can be the point), but its held-out
        photos and its stream are no longer the interrupted run's."""
        self.next_batch = int(state_dict["next_batch"])
        # None (a checkpoint from before it was kept): where next_batch starts at this batch size
        self.next_position = int(state_dict["next_position"]) if "next_position" in state_dict else None
        self.samples_seen = int(state_dict["samples_seen"])
        self.bad_seen = self.bad_restored = int(state_dict.get("bad_files", 0))
        if "photos_sha256" in state_dict:
            self.setup()
            now = self.listing()
            digests = {now["photos_sha256"]}
            if self.source == "coco" and self.listed_root is not None and self.listed_root.name == "train2014":
                # a checkpoint written before the listing's base moved to train2014: data.root=<the dataset's
                # root> named its photos train2014/..., whichever spelling resumes it now
                digests.add(self.listing(self.listed_root.parent)["photos_sha256"])
            if state_dict["photos_sha256"] not in digests:
                log.warning("the data lists other photos than when this checkpoint was written (%d now, %d then): "
                            "the held-out photos and the training stream differ from the interrupted run's",
                            now["photos"], int(state_dict.get("photos", 0)))


class SuperResolutionPatches(ImageFileDataset):
    """High-resolution patches for super-resolution (Johnson et al. 2016, Sec. 4.2: 288x288 patches
    of COCO photos), cut at the photo's own resolution: resizing first would soften exactly the
    detail the network must learn to restore. A photo smaller than a patch is a bad file (skipped and
    listed, as an unreadable one): enlarged to fit, it would teach the network its own blur."""

    def patch(self, image: torch.Tensor, path: Path, rng: random.Random | None) -> torch.Tensor:
        if min(image.shape[-2:]) < self.image_size:
            raise ImageError(f"cannot use image {str(path)!r}: {image.shape[-1]}x{image.shape[-2]} px, smaller than "
                             f"the {self.image_size} px high-resolution patch (data.image_size); enlarged, it would "
                             "be a blurred target")
        return crop(image, self.image_size, rng)


class SuperResolutionDataModule(ImageFolderDataModule):
    """:class:`ImageFolderDataModule` (same sources, held-out files, resumable stream, bad-file
    policy) serving HR patches with their LR versions: ``batch["images"]`` (B, 3, S, S) and
    ``batch["lr"]`` (B, 3, S/f, S/f).

    The LR images are made on the fly, after the batch reached the training device, by
    :func:`stylenet.metrics.degrade` (Gaussian blur sigma 1.0, then antialiased bicubic
    downsampling): the same function ``stylenet-evaluate-sr`` uses, so training and evaluation
    see the same degradation. Validation uses centre patches of the held-out photos.
    """

    dataset_class = SuperResolutionPatches
    size_multiple = 1  # a multiple of the factor instead (below): x2's 30 px patches are 15 px LR ones

    def __init__(self, factor: int = 4, image_size: int = 288, **kwargs: Any) -> None:
        if kwargs.get("scale_size") is not None:
            raise StylenetError("data.scale_size is not used by super-resolution (HR patches are cut at the "
                                "photo's own resolution): set it to null")
        super().__init__(image_size=image_size, **kwargs)
        if factor < 1 or image_size % factor:
            raise StylenetError(f"data.image_size ({image_size}) must be a multiple of the factor {factor}")
        if image_size // factor < SuperResolutionNet.min_size:
            raise StylenetError(f"data.image_size ({image_size}) / factor {factor} leaves LR patches smaller "
                                f"than the network's minimum of {SuperResolutionNet.min_size} px")
        window, scored = 2 * SSIM_RADIUS + 1, image_size - 2 * factor  # validation shaves factor px a side
        if scored < window:
            smallest = -(-(window + 2 * factor) // factor) * factor
            raise StylenetError(f"data.image_size ({image_size}) leaves {scored} px to score at x{factor} once "
                                f"the border is shaved; SSIM's window needs {window}: use {smallest} or more")
        self.factor, self.warned_unrecorded = factor, False

    def make_dataset(self, files: list[Path]) -> ImageFileDataset:
        """HR patches of ``files``; from prepared shards, those of photos the shards hold enlarged are bad
        files (an older stylenet-prepare did not record them: a warning says so)."""
        if self.source != "shards":
            return super().make_dataset(files)
        if self.shards.enlarged is None and not self.warned_unrecorded:
            self.warned_unrecorded = True
            log.warning("the prepared dataset %s does not record which photos it holds enlarged (an older "
                        "stylenet-prepare made it): photos smaller than %d px, if any, train as blurred targets; "
                        "prepare it again to have them skipped", self.shards.root, self.shards.size)
        return ShardDataset(files, self.image_size, self.seed, store=self.shards, refuse_enlarged=True)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        images = batch["images"]
        batch["lr"] = degrade(images, self.factor) if images.numel() else images
        return batch
