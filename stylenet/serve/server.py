"""The web server: Python's own threaded HTTP server, the model catalog, the admission gate and the
jobs, under one temporary folder that :meth:`StyleServer.server_close` deletes."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

from stylenet.errors import StylenetError
from stylenet.image import DEFAULT_MAX_PIXELS
from stylenet.serve.catalog import Catalog
from stylenet.serve.handler import Handler
from stylenet.serve.limits import Gate, MemoryPlan, Stopping, resident_bytes
from stylenet.serve.work import JobStore, PhotoJob, run_photo_job

DEFAULT_PORT = 7860
MAX_PORT = 65535
LOOPBACK = "127.0.0.1"


@dataclass
class ServeConfig:
    """Everything ``stylenet-serve`` takes (see :mod:`stylenet.cli.serve` for each option's meaning)."""

    folder: Path
    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    device: str = "auto"
    precision: str = "auto"
    workers: int = 1
    queue: int = 8
    #: Bytes the whole server process may hold (resident memory).
    memory_limit: int = 4 * 10**9
    #: Activation bytes one forward pass may use; None: on the CPU half of each worker's share of the
    #: limit, on a GPU each worker's share of stylenet-stylize's default for the device.
    max_memory: int | None = None
    max_upload: int = 50 * 10**6
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Where the temporary folder is made; None: the system's temporary folder.
    temp_parent: Path | None = None
    #: Finished jobs whose results the page may still fetch.
    keep_jobs: int = 32


class StyleServer(ThreadingHTTPServer):
    """One page, its JSON API and its workers; ``with StyleServer(config) as server:`` cleans up."""

    daemon_threads = True
    #: connections the system holds until the server accepts them (socketserver's default is 5): a burst beyond
    #: that had its connections reset or stalled for a second by the kernel, where the handler answers each one,
    #: with its result or a 503 when the workers and the queue are full
    request_queue_size = 128

    def __init__(self, config: ServeConfig) -> None:
        from stylenet.devices import resolve_device
        from stylenet.inference import default_max_memory

        self.temp: Path | None = None  # before binding: a failed bind calls server_close()
        if not 0 <= config.port <= MAX_PORT:
            raise StylenetError(f"--port must be 0-{MAX_PORT} (0: any free port), got {config.port}")
        gate = Gate(config.workers, config.queue)  # checks --workers before the memory plan divides by it
        if ":" in config.host:  # an IPv6 address (::1, ::): the socket must be of that family
            self.address_family = socket.AF_INET6
        super().__init__((config.host, config.port), Handler)
        try:
            self.config, self.gate = config, gate
            device = resolve_device(config.device)
            # a CUDA GPU's activations are not in the process's memory: a share is the photos' then (an
            # Apple GPU's memory is the machine's, as the CPU's)
            self.plan = MemoryPlan.make(config.memory_limit, config.workers, at_rest=resident_bytes(),
                                        max_pixels=config.max_pixels,
                                        activation_bytes=0 if device.type == "cuda" else config.max_memory)
            activations = self.plan.activation_bytes if device.type != "cuda" else (
                config.max_memory or default_max_memory(device) // config.workers)
            self.catalog = Catalog(config.folder, {"device": device, "precision": config.precision,
                                                   "max_memory": activations})
            self.temp = Path(tempfile.mkdtemp(prefix="stylenet-serve-", dir=config.temp_parent))
            self.jobs = JobStore(self.temp, config.keep_jobs)
        except BaseException:
            self.server_close()
            raise

    @property
    def url(self) -> str:
        """The page's address (the port the system picked when ``port`` was 0)."""
        host, port = self.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def start(self, job: PhotoJob) -> None:
        """Run an admitted job on a thread of its own, which waits there for a worker."""
        def work() -> None:
            try:
                with self.gate.running():
                    job.state = "running"
                    run_photo_job(job, self.catalog, self.plan)
            except Stopping:  # still queued when the server stopped: nothing ran
                job.error = "the server stopped before this photo was processed"
            finally:
                self.jobs.finish(job)
                self.gate.leave()
                if self.jobs.get(job.id) is None:  # removed, or the server closed, while it ran
                    shutil.rmtree(job.folder, ignore_errors=True)

        threading.Thread(target=work, name=f"stylenet-job-{job.id[:8]}", daemon=True).start()

    def serve_in_thread(self) -> threading.Thread:
        """Serve on a daemon thread (tests, notebooks); stop with ``shutdown()`` then ``server_close()``."""
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="stylenet-serve",
                                  daemon=True)
        thread.start()
        return thread

    def server_close(self) -> None:
        """Close the socket and delete the temporary folder with every upload and result in it."""
        super().server_close()
        if self.temp is not None:
            self.jobs.clear()
            shutil.rmtree(self.temp, ignore_errors=True)
