"""``stylenet-prepare``: decode, resize and crop a photo folder once into memory-mapped uint8 shards.

    stylenet-prepare data/coco/train2014 -o data/coco256            # then: data=shards data.root=data/coco256
    stylenet-prepare photos/ -o prepared/ --size 288 --workers 4   # larger: random 256 px crops in training

Each photo's short side is resized to ``--size`` (antialiased bilinear, the function training uses
on photos) and centre-cropped; the format is described in :mod:`stylenet.shards`. Unreadable files
and exact duplicates (same SHA-256) are skipped and listed with the reason in the manifest. Run it
again with the same arguments after an interruption: finished shards are kept, the rest is done.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stylenet.atomic import atomic_write, unwritable
from stylenet.cli import Terminated, sigterm_as_terminated, stopped_by
from stylenet.errors import StylenetError, cannot_write, first_line
from stylenet.image import DEFAULT_MAX_PIXELS
from stylenet.shards import FORMAT, FORMAT_VERSION, MANIFEST, read_manifest, shard_name

PROG = "stylenet-prepare"
#: How long the pool's own terminate may take before its workers are killed (stop_pool).
STOP_S = 5.0


#: What :func:`prepare_one` gives for a photo: its path relative to the source, its SHA-256, its (S, S, 3) uint8
#: pixels (None for a bad file), the error (None if none), and its (width, height) where it was enlarged to S.
Prepared = tuple[str, str, np.ndarray | None, str | None, tuple[int, int] | None]


def prepare_one(job: tuple[Path, Path, int, int]) -> Prepared:
    """(photo, source root, size, max pixels) -> :data:`Prepared`.

    Runs in worker processes: imports stay inside (and light: no Lightning), errors come back as values."""
    import torch

    from stylenet.image import ImageError, load_rgb, training_sample
    from stylenet.styles import file_sha256

    path, root, size, max_pixels = job
    relative = path.relative_to(root).as_posix()
    try:
        photo = load_rgb(path, max_pixels=max_pixels)  # first: it refuses a named pipe, which hashing waits on
        digest = file_sha256(path)
    except (ImageError, OSError) as err:
        return relative, "", None, first_line(err), None
    try:
        image = training_sample(photo, path, size, size, None)  # what training cuts from the photo
    except ImageError as err:  # decoded, but too elongated to resize
        return relative, "", None, str(err), None
    pixels = image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    height, width = photo.shape[-2:]
    enlarged = (width, height) if min(width, height) < size else None
    return relative, digest, pixels.permute(1, 2, 0).contiguous().numpy(), None, enlarged


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically (a reader or a resumed run sees the old one or the new one)."""
    import json

    atomic_write(out / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1), encoding="utf-8"))


def start_manifest(out: Path, source_root: Path, size: int) -> dict[str, Any]:
    """The existing manifest of ``out`` (resuming), checked against the arguments, or a new one."""
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        if manifest["size"] != size or Path(manifest["source_root"]) != source_root:
            raise StylenetError(f"{str(out)!r} holds shards of {manifest['source_root']} at {manifest['size']} px; "
                                f"use another -o for {source_root} at {size} px")
        return manifest
    return {"format": FORMAT, "version": FORMAT_VERSION, "size": size, "source_root": str(source_root),
            "count": 0, "complete": False, "shards": [], "skipped": [], "enlarged": {}}


def write_shard(out: Path, index: int, images: list[np.ndarray]) -> str:
    """Write one shard atomically (:func:`stylenet.atomic.atomic_write`): a shard file is whole or absent.

    The bytes of ``np.save`` (a version 1.0 ``.npy`` header, then the pixels), but the pixels written by
    Python, whose full disk is ``OSError(ENOSPC)``: numpy's own writer says only "N requested and M written"."""
    array = np.ascontiguousarray(np.stack(images))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, np.lib.format.header_data_from_array_1_0(array))
            handle.write(memoryview(array).cast("B"))

    name = shard_name(index)
    atomic_write(out / name, write)
    return name


def add_shard(out: Path, manifest: dict[str, Any], group: list[tuple[str, str, np.ndarray]]) -> None:
    """Write ``group`` as the next shard, then record it (and the files skipped so far) in the manifest."""
    name = write_shard(out, len(manifest["shards"]), [pixels for _, _, pixels in group])
    manifest["shards"].append({"file": name, "count": len(group),
                               "sources": [[relative, digest] for relative, digest, _ in group]})
    manifest["count"] += len(group)
    write_manifest(out, manifest)


def prepare(source: Path, out: Path, size: int = 256, shard_images: int = 1000, workers: int = 0,
            progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Prepare (or finish preparing) ``out`` from the photos under ``source``; returns the manifest. A photo
    of more than ``max_pixels`` is skipped before it is decoded (a possible decompression bomb)."""
    from tqdm import tqdm

    from stylenet.image import IMAGE_EXTENSIONS, UNREAD_PHOTO_SUFFIXES, list_by_kind, unread_photos_note

    if size <= 0 or size % 4 or shard_images < 1 or workers < 0 or max_pixels < 1:
        raise StylenetError(f"--size must be a positive multiple of 4, --shard-images >= 1, --workers >= 0 and "
                            f"--max-pixels >= 1; got {size}, {shard_images}, {workers}, {max_pixels}")
    source, out = source.expanduser().resolve(), out.expanduser()  # (`--output=~/x`: the shell leaves ~ there)
    if not source.is_dir():
        raise StylenetError(f"{str(source)!r} is not a folder")
    reason = unwritable(out / MANIFEST)
    if reason:
        raise StylenetError(f"cannot prepare into -o {str(out)!r}: {reason}")
    files, unread = list_by_kind(source, IMAGE_EXTENSIONS, UNREAD_PHOTO_SUFFIXES, skip_runs=True)
    if not files:  # refused before -o is made: a manifest of nothing would be all it held
        held = f" (it holds {unread_photos_note(unread)})" if unread else ""
        raise StylenetError(f"{str(source)!r} contains no images{held}")
    if unread:  # a phone's HEIC photos: said, as training says it, not passed over in silence
        print(f"{PROG}: warning: {str(source)!r} holds {unread_photos_note(unread)}; they are not in the shards",
              file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    manifest = start_manifest(out, source, size)
    seen = {sha: relative for entry in manifest["shards"] for relative, sha in entry["sources"]}
    # a photo skipped as unreadable or over --max-pixels is tried again (replaced, or a larger --max-pixels, as
    # its reason advises); a duplicate stays one
    manifest["skipped"] = [entry for entry in manifest["skipped"]
                           if str(entry.get("reason", "")).startswith("duplicate of ")]
    done = {*seen.values(), *(entry["path"] for entry in manifest["skipped"])}
    todo = [path for path in files if path.relative_to(source).as_posix() not in done]
    manifest["complete"] = False
    jobs = ((path, source, size, max_pixels) for path in todo)
    # the workers fork before the progress bar starts its monitor thread: a fork copies the locks of the
    # threads alive at that moment, and a worker can hang on one before it runs (stylenet.data.WORKER_START)
    pool = multiprocessing.Pool(workers, initializer=leave_signals_to_parent) if workers > 0 else None
    crew = {worker.pid for worker in multiprocessing.active_children()}  # the pool's: no other children here
    # one photo a task: imap's chunks come back through a generator, which has no timeout to watch the workers by
    results = watched(pool.imap(prepare_one, jobs), crew) if pool else map(prepare_one, jobs)
    bar = tqdm(total=len(files), initial=len(files) - len(todo), unit="img", desc=PROG, disable=not progress,
               file=sys.stderr)
    try:
        pending: list[tuple[str, str, np.ndarray]] = []
        for relative, digest, pixels, error, enlarged in results:
            bar.update(1)
            reason = error if pixels is None else f"duplicate of {seen[digest]}" if digest in seen else None
            if reason is not None:
                manifest["skipped"].append({"path": relative, "reason": reason})
                continue
            seen[digest] = relative
            if enlarged and "enlarged" in manifest:  # (a manifest begun by an older stylenet-prepare has none)
                manifest["enlarged"][relative] = list(enlarged)
            pending.append((relative, digest, pixels))
            if len(pending) == shard_images:
                add_shard(out, manifest, pending)
                pending = []
        if pending:
            add_shard(out, manifest, pending)
    except WorkerDied:
        raise StylenetError(f"a decoding worker died (stopped from outside, or out of memory?) after "
                            f"{manifest['count']} photos in shards: run the same command again to go on, with "
                            "--workers 0 to find a photo that crashes its decoder") from None
    finally:
        bar.close()
        if pool is not None:
            stop_pool(pool)
    manifest["complete"] = True
    write_manifest(out, manifest)
    return manifest


class WorkerDied(Exception):
    """A decoding worker of the pool is gone (:func:`watched`)."""


def watched(results: Any, crew: set[int], poll_s: float = 1.0) -> Iterator[Any]:
    """``results`` of ``Pool.imap``, ending in :class:`WorkerDied` when one of the pool's workers ``crew``
    is gone: the pool starts another in its place, but the photos the dead one held never come, and the
    loop would wait for them for ever (the OOM killer, a kill -9). The workers live as long as the pool
    (no ``maxtasksperchild``), so any change in their set is a death. ``crew`` is taken when the pool
    starts, not at the first result: a worker that died before it would leave only its replacement."""
    while True:
        try:
            yield results.next(timeout=poll_s)
        except StopIteration:
            return
        except multiprocessing.TimeoutError:
            if not crew <= {worker.pid for worker in multiprocessing.active_children()}:
                raise WorkerDied from None


def stop_pool(pool: Any) -> None:
    """``pool.terminate()``, bounded: it sends each worker SIGTERM and then waits for it, for ever if the
    worker cannot take the signal (a CI run under load once hung here past two minutes on a SIGTERM). After
    :data:`STOP_S` the workers are killed, and after as long again the run goes on without the pool's
    threads (daemons): a stop must end the command."""
    stopper = threading.Thread(target=pool.terminate, name="stop-pool", daemon=True)
    stopper.start()
    stopper.join(STOP_S)
    if stopper.is_alive():
        for worker in multiprocessing.active_children():  # the pool's: no other children here
            worker.kill()
        stopper.join(STOP_S)


def leave_signals_to_parent() -> None:
    """A decoding worker leaves Ctrl-C and SIGTERM to this process, which stops the workers: no
    traceback from each of them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="folder of photos, searched recursively (e.g. COCO train2014)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the shards and manifest.json")
    parser.add_argument("--size", type=int, default=256,
                        help="side of the stored square images, px (default 256, the training size)")
    parser.add_argument("--shard-images", type=int, default=1000, help="images per shard file (default 1000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="decoding processes (default: one per CPU; 0 decodes in this process)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="PIXELS",
                        help="largest photo, in pixels: a larger one is skipped before it is decoded, as a possible "
                             f"decompression bomb (default: {DEFAULT_MAX_PIXELS}, as data.max_pixels)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        with sigterm_as_terminated():
            manifest = prepare(args.source, args.output, args.size, args.shard_images, args.workers,
                               progress=not args.no_progress, max_pixels=args.max_pixels)
    except StylenetError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the disk, after every check: full, read-only, ...; the unfinished shard is removed
        print(f"{PROG}: error: {cannot_write(err, args.output)}; free space and run the same command again to go "
              "on from the last complete shard", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as stop:
        how, status = stopped_by(stop)
        print(f"{PROG}: {how}; run the same command again to go on from the last complete shard", file=sys.stderr)
        return status
    if not manifest["count"]:
        print(f"{PROG}: error: no readable photos in {str(args.source)!r} ({len(manifest['skipped'])} skipped: "
              f"see {args.output / MANIFEST})", file=sys.stderr)
        return 2
    print(f"{manifest['count']} images in {len(manifest['shards'])} shards of {manifest['size']} px under "
          f"{args.output}; {len(manifest['skipped'])} skipped (see {args.output / MANIFEST})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
