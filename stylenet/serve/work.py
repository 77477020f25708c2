"""What the server computes: a photo through one or more models (a job, followed by polling), and a
webcam frame through one model (answered at once).

Uploads are files in the server's temporary folder, read with the checks every stylenet input gets
(:func:`stylenet.image.load_image`: formats, decompression bombs, truncation), plus the server's own
pixel limit from its memory plan, read from the header before anything is decoded. Errors name the
upload as the browser named it, never the temporary path.
"""

from __future__ import annotations

import io
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylenet.errors import StylenetError, describe
from stylenet.serve.catalog import Catalog, ModelEntry
from stylenet.serve.limits import MemoryPlan, millions, tile_side

if TYPE_CHECKING:
    from stylenet.image import LoadedImage
    from stylenet.inference import Controls


def read_upload(path: Path, name: str, max_pixels: int) -> LoadedImage:
    """The upload at ``path`` decoded (compactly held, see :func:`stylenet.image.compact`), or a
    one-line :class:`StylenetError` naming it ``name``: not an image, a bomb, too many pixels."""
    from PIL import Image

    from stylenet.image import TooManyPixelsError, compact, load_image, read_image_size

    limit = (f"this server takes photos up to {millions(max_pixels)} megapixels (stylenet-serve --memory-limit, "
             "--max-pixels)")
    try:
        width, height = read_image_size(path)
        if width * height > max_pixels:
            raise StylenetError(f"{name!r} is {width}x{height} ({millions(width * height)} megapixels); {limit}")
        return compact(load_image(path, max_pixels=max_pixels))
    except TooManyPixelsError:  # Pillow's own bound, above any this server takes, met as the header is read
        raise StylenetError(f"{name!r} declares more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; "
                            f"{limit}") from None
    except StylenetError as err:
        raise StylenetError(str(err).replace(repr(str(path)), repr(name))) from None
    except Exception as err:  # a decoder bug: still this upload's problem, on one line
        raise StylenetError(describe(err, repr(name))) from None


@dataclass
class PhotoJob:
    """One uploaded photo through each chosen model, in turn; polled by the page."""

    name: str
    folder: Path
    entries: list[ModelEntry]
    controls: Controls
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = "queued"  # queued, running, done
    current: int = 0  # the entry running now
    done: int = 0  # passes of the current entry (tiles, or bands layer by layer)
    total: int = 0
    size: tuple[int, int] | None = None  # (width, height) of the photo, once read
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    note: str | None = None  # what the page says beside the results (an animation's later frames left out)

    @property
    def upload(self) -> Path:
        return self.folder / "upload"

    def result_path(self, index: int) -> Path:
        return self.folder / f"{index}.png"

    def status(self) -> dict[str, Any]:
        """The JSON the page polls."""
        return {"id": self.id, "name": self.name, "state": self.state, "size": self.size,
                "progress": {"model": self.current, "models": len(self.entries), "done": self.done,
                             "total": self.total},
                "results": self.results, "error": self.error, "note": self.note}

    def progress(self, done: int, total: int) -> None:
        """The progress callback of :meth:`InferenceModel.transform` (passes of the current model)."""
        self.done, self.total = done, total


def run_photo_job(job: PhotoJob, catalog: Catalog, plan: MemoryPlan) -> None:
    """Read the upload, then each model in turn through :meth:`InferenceModel.process` (the CLI's
    path: one pass or layer by layer, or tiles where the worker's memory share needs them, see
    :func:`tile_side`; with progress); each result is a full-size PNG in the job's folder. A bad
    upload fails the job; a bad model its own result."""
    from stylenet.image import save_image

    try:
        image = read_upload(job.upload, job.name, plan.max_pixels)
    except StylenetError as err:
        job.error = str(err)
        return
    finally:
        job.upload.unlink(missing_ok=True)
    job.size = (image.rgb.shape[-1], image.rgb.shape[-2])
    if image.frames > 1:  # as stylenet-stylize says it
        job.note = f"{job.name} holds {image.frames} frames: only the first is stylized"
    stem = Path(job.name).stem or "photo"
    for index, entry in enumerate(job.entries):
        if not job.folder.is_dir():  # the job was removed meanwhile (or the server closed)
            return
        job.current, job.done, job.total = index, 0, 0
        try:
            model = catalog.load(entry)
            tile = tile_side(model, job.size[0] * job.size[1], plan)
            result = model.process(image, job.controls, quantize=True, tile=tile, progress=job.progress)
            save_image(job.result_path(index), result.rgb, alpha=result.alpha, icc_profile=result.icc_profile)
        except Exception as err:  # this model only: the others still run
            job.results.append({"label": entry.label, "error": describe(err, repr(job.name))})
            continue
        file_stem = (entry.shown or entry.file.stem).rsplit("/", 1)[-1]  # as the page shows it: UTF-8, always
        job.results.append({"label": entry.label, "url": f"/api/jobs/{job.id}/{index}.png",
                            "download": f"{stem}_{file_stem}{f'_{entry.style}' if entry.style else ''}.png",
                            "width": result.rgb.shape[-1], "height": result.rgb.shape[-2]})


def stylize_frame(path: Path, entry: ModelEntry, controls: Controls, catalog: Catalog, plan: MemoryPlan) -> bytes:
    """A webcam frame (an uploaded JPEG or PNG) -> the stylized frame as JPEG bytes (frames are small;
    a large one is held to the memory plan as a photo is)."""
    from stylenet.image import to_pil

    image = read_upload(path, "webcam frame", plan.max_pixels)
    try:
        model = catalog.load(entry)
        tile = tile_side(model, image.rgb.shape[-1] * image.rgb.shape[-2], plan)
        result = model.process(image, controls, quantize=True, tile=tile)
    except Exception as err:  # one line, whatever it was
        raise StylenetError(describe(err, "webcam frame")) from None
    buffer = io.BytesIO()
    to_pil(result.rgb).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


class JobStore:
    """The jobs the page may still poll; each owns a folder under the server's temporary folder. The
    oldest finished jobs are forgotten (and their files deleted) beyond ``keep``."""

    def __init__(self, root: Path, keep: int = 32) -> None:
        self.root, self.keep = root, keep
        self._jobs: dict[str, PhotoJob] = {}
        self._lock = threading.Lock()

    def new(self, name: str, entries: list[ModelEntry], controls: Controls) -> PhotoJob:
        job = PhotoJob(name, self.root, entries, controls)
        job.folder = self.root / job.id
        job.folder.mkdir()
        with self._lock:
            self._jobs[job.id] = job
            finished = [key for key, old in self._jobs.items() if old.state == "done"]
        for key in finished[: max(0, len(finished) - self.keep)]:
            self.remove(key)
        return job

    def finish(self, job: PhotoJob) -> None:
        """Mark ``job`` done, as the newest finished job: the oldest finished ones are forgotten first, so a
        photo that took longer than those after it keeps its result as long as they keep theirs."""
        with self._lock:
            job.state = "done"
            if self._jobs.get(job.id) is job:
                self._jobs[job.id] = self._jobs.pop(job.id)

    def get(self, job_id: str) -> PhotoJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def remove(self, job_id: str) -> bool:
        """Forget a job and delete its files; False if there was none."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is not None:
            shutil.rmtree(job.folder, ignore_errors=True)
        return job is not None

    def clear(self) -> None:
        """Forget every job (the server is closing; its folder goes as a whole)."""
        with self._lock:
            self._jobs.clear()
