"""Training data: a folder of photos (COCO train2014 as it is), or scikit-image's bundled photos.

Johnson et al. 2016 (Sec. 4.1) train on ~80k COCO images at 256x256, batch 4. Here every sample's
order and crop derive from (seed, stream position) alone, so an interrupted run resumed from a
checkpoint sees exactly the batches the uninterrupted run would have seen, on one process or many.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from stylenet import StylenetError
from stylenet.image import ImageError, list_images, load_rgb

log = logging.getLogger(__name__)

#: scikit-image's bundled sample photos (colour and grey), used by ``data=demo``.
DEMO_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
               "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "camera.png")


def demo_root() -> Path:
    """The folder of scikit-image's sample images (shipped in its wheel, no download)."""
    import skimage

    return Path(skimage.__file__).parent / "data"


def resolve_image_path(spec: str | Path) -> Path:
    """A path, or ``demo:<name>`` for one of scikit-image's bundled photos (e.g. ``demo:chelsea``)."""
    text = str(spec)
    if text.startswith("demo:"):
        name = text.removeprefix("demo:")
        matches = sorted(demo_root().glob(f"{name}.*")) or sorted(demo_root().glob(name))
        if not matches:
            raise StylenetError(f"no bundled demo image {name!r}; choose one of "
                                f"{', '.join(Path(p).stem for p in DEMO_PHOTOS)}")
        return matches[0]
    return Path(text).expanduser()


def resize_short_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of a (3, H, W) image so that its shorter side is ``size``."""
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    new_size = (max(size, round(height * scale)), max(size, round(width * scale)))
    return F.interpolate(image.unsqueeze(0), size=new_size, mode="bilinear", antialias=True,
                         align_corners=False).squeeze(0).clamp_(0, 1)


def resize_long_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased resize of a (3, H, W) image so that its longer side is ``size`` (style images)."""
    height, width = image.shape[-2:]
    scale = size / max(height, width)
    new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(image.unsqueeze(0), size=new_size, mode="bilinear", antialias=True,
                         align_corners=False).squeeze(0).clamp_(0, 1)


def crop(image: torch.Tensor, size: int, rng: random.Random | None) -> torch.Tensor:
    """A size x size crop: random when ``rng`` is given, centred otherwise."""
    height, width = image.shape[-2:]
    top = rng.randint(0, height - size) if rng else (height - size) // 2
    left = rng.randint(0, width - size) if rng else (width - size) // 2
    return image[:, top: top + size, left: left + size]


class ImageFileDataset(Dataset):
    """Photos resized (short side) and cropped to ``image_size``; unreadable files come back as
    ``None`` images, to be counted and listed by the collate function instead of crashing a run.

    Training items are ``(batch_number, position, index)`` triples from :class:`StreamSampler`: the
    crop is drawn from a generator seeded with (seed, position). Validation items are plain indices
    and get a centre crop."""

    def __init__(self, files: Sequence[Path], image_size: int, seed: int = 0,
                 max_pixels: int | None = None) -> None:
        self.files, self.image_size, self.seed, self.max_pixels = list(files), image_size, seed, max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int | tuple[int, int, int]) -> dict[str, Any]:
        batch_number, position, index = item if isinstance(item, tuple) else (-1, -1, item)
        path = self.files[index]
        rng = random.Random(f"{self.seed}:{position}") if position >= 0 else None
        kwargs = {} if self.max_pixels is None else {"max_pixels": self.max_pixels}
        try:
            image = crop(resize_short_side(load_rgb(path, **kwargs), self.image_size), self.image_size, rng)
        except ImageError as err:
            return {"image": None, "path": str(path), "error": str(err), "batch_number": batch_number}
        return {"image": image, "path": str(path), "error": None, "batch_number": batch_number}


def collate_skipping_bad(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good images; report the bad ones (their one-line errors) alongside the batch."""
    good = [s["image"] for s in samples if s["image"] is not None]
    return {
        "images": torch.stack(good) if good else torch.empty(0, 3, 0, 0),  # (B, 3, S, S)
        "skipped": [s["error"] for s in samples if s["image"] is None],
        "batch_number": samples[0]["batch_number"],
    }


class StreamSampler(Sampler):
    """An endless, resumable stream of shuffled samples, sharded over ranks.

    Stream position p belongs to epoch p // N and picks ``permutation(seed, epoch)[p % N]``. Batch
    n of rank r holds positions ``(n * world_size + r) * batch_size + j``, so all ranks together
    consume consecutive blocks, no two ranks see the same sample, and restarting at batch n
    reproduces the rest of the stream exactly. Yields batches (lists of items) for a DataLoader's
    ``batch_sampler``.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def index_at(self, position: int) -> int:
        epoch = position // self.num_items
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.num_items, generator=generator)
        return int(self._order[position % self.num_items])

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        batch_number = self.start_batch
        while True:
            first = (batch_number * self.world_size + self.rank) * self.batch_size
            yield [(batch_number, p, self.index_at(p)) for p in range(first, first + self.batch_size)]
            batch_number += 1


class ImageFolderDataModule(pl.LightningDataModule):
    """Photos from a folder searched recursively (``source=folder`` or ``coco``) or the bundled demo
    photos (``source=demo``); a fixed held-out set of ``val_images`` files for validation grids.

    Bad files are skipped, counted, written to ``skipped_images.txt`` in the run folder, and the run
    stops with an error if their share exceeds ``max_bad_fraction``. The number of the next batch
    is part of the checkpoint, so a resumed run continues the same stream.
    """

    def __init__(self, source: str = "demo", root: str | None = None, image_size: int = 256,
                 batch_size: int = 4, num_workers: int = 0, val_images: int = 4, seed: int = 0,
                 max_bad_fraction: float = 0.05, max_pixels: int | None = None,
                 timeout_s: float = 120.0) -> None:
        super().__init__()
        if image_size <= 0 or image_size % 4:
            raise StylenetError(f"data.image_size must be a positive multiple of 4, got {image_size}")
        if batch_size < 1:
            raise StylenetError(f"data.batch_size must be >= 1, got {batch_size}")
        if source not in ("demo", "folder", "coco"):
            raise StylenetError(f"data.source must be demo, folder or coco, got {source!r}")
        self.source, self.root, self.image_size, self.batch_size = source, root, image_size, batch_size
        self.num_workers, self.val_images, self.seed = num_workers, val_images, seed
        self.max_bad_fraction, self.max_pixels, self.timeout_s = max_bad_fraction, max_pixels, timeout_s
        self.train_files: list[Path] = []
        self.val_files: list[Path] = []
        self.next_batch = 0
        self.samples_seen = 0
        self.bad_files: list[str] = []
        self.report_path: Path | None = None

    def list_files(self) -> list[Path]:
        if self.source == "demo":
            return [demo_root() / name for name in DEMO_PHOTOS if (demo_root() / name).is_file()]
        if not self.root:
            raise StylenetError(f"data.root must name a folder of images for data={self.source}")
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise StylenetError(f"data.root {str(root)!r} is not a folder")
        files = list_images(root)
        if not files:
            raise StylenetError(f"data.root {str(root)!r} contains no images")
        return files

    def setup(self, stage: str | None = None) -> None:
        """List the files once and hold out an evenly spread, fixed set for validation."""
        if self.train_files:
            return
        files = self.list_files()
        count = min(self.val_images, max(0, len(files) - 1))
        held_out = set(range(0, len(files), max(1, len(files) // max(count, 1)))[:count]) if count else set()
        self.val_files = [f for i, f in enumerate(files) if i in held_out]
        self.train_files = [f for i, f in enumerate(files) if i not in held_out]

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        workers = self.num_workers
        return DataLoader(dataset, num_workers=workers, collate_fn=collate_skipping_bad,
                          persistent_workers=workers > 0, timeout=self.timeout_s if workers > 0 else 0,
                          pin_memory=torch.cuda.is_available(), **kwargs)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = StreamSampler(len(self.train_files), self.batch_size, self.seed, rank, world, self.next_batch)
        dataset = ImageFileDataset(self.train_files, self.image_size, self.seed, self.max_pixels)
        return self._loader(dataset, batch_sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        dataset = ImageFileDataset(self.val_files, self.image_size, self.seed, self.max_pixels)
        return self._loader(dataset, batch_size=self.batch_size, shuffle=False)

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Count what training consumes (not what the loader prefetched) and police bad files."""
        if self.trainer is not None and self.trainer.training:
            self.next_batch = batch["batch_number"] + 1
            self.samples_seen += len(batch["images"]) + len(batch["skipped"])
            self.record_bad(batch["skipped"])
        return batch

    def record_bad(self, errors: list[str]) -> None:
        if not errors:
            return
        for error in errors:
            log.warning("skipped %s", error)
        self.bad_files.extend(errors)
        if self.report_path is not None:
            with open(self.report_path, "a", encoding="utf-8") as report:
                report.writelines(f"{error}\n" for error in errors)
        fraction = len(self.bad_files) / max(self.samples_seen, 1)
        if self.samples_seen >= 20 * self.batch_size and fraction > self.max_bad_fraction:
            raise StylenetError(f"{len(self.bad_files)} of {self.samples_seen} training images were unreadable "
                                f"({fraction:.1%} > data.max_bad_fraction={self.max_bad_fraction}); see "
                                f"{self.report_path or 'the log'}")

    def state_dict(self) -> dict[str, Any]:
        return {"next_batch": self.next_batch, "samples_seen": self.samples_seen,
                "bad_files": len(self.bad_files)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.next_batch = int(state_dict["next_batch"])
        self.samples_seen = int(state_dict["samples_seen"])
