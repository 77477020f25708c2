"""What keeps the web server's memory bounded: a memory plan per worker and an admission gate.

Several tabs (or several people) may submit photos at once. Each computation needs the decoded photo,
its output and the network's activations in memory, so the server runs at most ``workers`` of them at
once, lets at most ``queue`` more wait (their uploads wait on disk, not in memory), and refuses the rest
at once with :class:`Busy` (HTTP 503), which the page shows and retries. The plan splits the memory
limit between the workers, so that every photo small enough to be accepted fits its worker's share:
peak memory stays under the limit however many requests arrive.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stylenet.errors import StylenetError

if TYPE_CHECKING:
    from stylenet.inference import InferenceModel

#: Bytes one photo in flight may hold per pixel, besides the network's activations. Decoding peaks
#: at about 40 (Pillow's pixels, then float32 conversions: 3 + 3 x 12); while it runs, the photo's
#: uint8 levels (3), the uint8 output (3) and the encoder's copies of it (3 + 4) are held.
BYTES_PER_PIXEL = 48
#: What the server needs besides the photos in flight: the loaded models, HTTP threads, encoders.
RESERVE_BYTES = 256 * 2**20
#: The least a worker's share may be: a photo of about a megapixel and its activations.
MIN_SHARE_BYTES = 96 * 2**20


class Busy(StylenetError):
    """Every worker is busy and the queue is full: the request is refused (HTTP 503), not queued."""


def millions(value: float) -> str:
    """``value`` in millions (MB, megapixels) to three significant digits: a limit of 10 kB or 1000 pixels
    is 0.01 or 0.001, not "0.0"; 1.5 MB is 1.5, not "2" (the page writes its limits the same way)."""
    return f"{float(f'{value / 1e6:.3g}'):g}"  # 1230, not 1.23e+03


def resident_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm; elsewhere the peak so far, an
    upper bound), for the part of the limit the server needs at rest."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        from stylenet.inference.memory import max_rss_bytes

        return max_rss_bytes()


@dataclass(frozen=True)
class MemoryPlan:
    """How the memory limit is spent: each worker's share of it, the activation bytes of one forward
    pass (or tile) within the share, and the largest photo (in pixels) whose pixels fit beside them."""

    limit: int
    share: int
    activation_bytes: int
    max_pixels: int

    @classmethod
    def make(cls, limit: int, workers: int, *, at_rest: int, max_pixels: int,
             activation_bytes: int | None = None) -> MemoryPlan:
        """Split ``limit`` (bytes for the whole process) into ``workers`` shares, after what the
        process holds ``at_rest`` and :data:`RESERVE_BYTES`; half of a share goes to activations
        unless ``activation_bytes`` says otherwise, the rest to the photo's pixels."""
        if max_pixels < 1:
            raise StylenetError(f"--max-pixels must be >= 1, got {max_pixels}")
        share = (limit - at_rest - RESERVE_BYTES) // workers
        if share < MIN_SHARE_BYTES:
            need = at_rest + RESERVE_BYTES + workers * MIN_SHARE_BYTES
            raise StylenetError(f"--memory-limit {limit / 2**30:.2f} GiB is too small for --workers {workers}: "
                                f"the server holds {at_rest / 2**30:.2f} GiB at rest; give at least "
                                f"{need / 2**30:.2f} GiB or fewer workers")
        activations = share // 2 if activation_bytes is None else min(activation_bytes, share - MIN_SHARE_BYTES // 2)
        pixels = min(max_pixels, (share - activations) // BYTES_PER_PIXEL)
        return cls(limit, share, activations, pixels)


def tile_side(model: InferenceModel, pixels: int, plan: MemoryPlan) -> int | None:
    """None (the CLI's default: one pass, or layer by layer, the exact result) when the photo's pixels
    and the network's one-pass activations fit a worker's share, which bounds both; else the side of
    the tiles that fill the activation budget (the CLI's ``--tile`` path: memory bounded by the budget,
    InstanceNorm statistics from the whole image or a thumbnail of it). On a GPU the activations are
    in the GPU's memory, not the share, and the model's own budget bounds them as the CLI's (an Apple GPU's
    memory is the machine's: there they count as on the CPU)."""
    from stylenet.inference import MIN_TILE

    activations = 0.0 if model.device.type == "cuda" else model.bytes_per_pixel()
    if pixels * (BYTES_PER_PIXEL + activations) <= plan.share:
        return None
    return max(MIN_TILE, math.isqrt(model.max_pixels()))


class Stopping(Busy):
    """The server is stopping: a computation that was still waiting for a worker does not start (HTTP
    503, as for a full queue: the request was fine, the server cannot take it)."""


class Gate:
    """At most ``workers`` computations at once and ``queue`` more waiting; beyond that, :class:`Busy`.

    :meth:`admit` is called by the request handler, so a refusal is immediate; :meth:`running` by
    whoever does the work, which may wait there for a worker; :meth:`stop` when the server stops.
    """

    def __init__(self, workers: int, queue: int) -> None:
        if workers < 1 or queue < 0:
            raise StylenetError(f"--workers must be >= 1 and --queue >= 0, got {workers} and {queue}")
        self.workers, self.queue = workers, queue
        self._slots = threading.Semaphore(workers)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._admitted = self._computing = 0
        self._stopped = False

    @property
    def admitted(self) -> int:
        """Requests running or waiting now."""
        return self._admitted

    def admit(self) -> None:
        """Count one more request in, or raise :class:`Busy` when workers and queue are full."""
        with self._lock:
            if self._stopped:
                raise Stopping("the server is stopping")
            if self._admitted >= self.workers + self.queue:
                raise Busy(f"the server is busy: {self.workers} request(s) running and {self.queue} waiting "
                           f"(--workers {self.workers}, --queue {self.queue}); try again in a moment")
            self._admitted += 1

    def leave(self) -> None:
        """Count an admitted request out (answered, failed or abandoned)."""
        with self._lock:
            self._admitted -= 1
            self._idle.notify_all()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Hold one worker for the block (waiting for one if all are busy); :class:`Stopping` instead
        once :meth:`stop` was called."""
        with self._slots:
            with self._lock:
                if self._stopped:
                    raise Stopping("the server is stopping")
                self._computing += 1
            try:
                yield
            finally:
                with self._lock:
                    self._computing -= 1
                    self._idle.notify_all()

    def stop(self, timeout: float, give_up: threading.Event | None = None) -> int:
        """Start no more computations, and wait up to ``timeout`` seconds (or until ``give_up`` is set:
        a second Ctrl-C) for those running to end and every admitted request to be answered (a webcam
        frame's answer, or a waiting one's refusal, is still being written when its computation ends);
        returns how many computations still run. The process must not exit normally while one runs: a
        thread inside torch's kernels as Python finalises aborts it (``terminate called without an
        active exception``)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopped = True
            while (self._computing or self._admitted) and not (give_up is not None and give_up.is_set()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._idle.wait(min(left, 0.1))
            return self._computing
