"""The HTTP side: the page's three static files and a small JSON API.

    GET    /                      the page (also /app.js, /style.css)
    GET    /api/models            the models (ids and labels) and the server's limits
    POST   /api/jobs?models=ID,ID&name=photo.jpg&strength=0.8&preserve_color=1
                                  body: the photo's bytes -> 202 {"id": ...}
    GET    /api/jobs/ID           state, progress, results (polled)
    GET    /api/jobs/ID/N.png     result N at full size (HEAD: whether it is still kept)
    DELETE /api/jobs/ID           forget a job and delete its files
    POST   /api/frame?model=ID&strength=..&preserve_color=..
                                  body: a webcam frame (JPEG) -> the stylized frame (JPEG)

A model ID is one of /api/models' ids, or a blend of styles of one file of several styles,
``ID:0.7;ID:0.3`` (URL-encoded; :meth:`stylenet.serve.catalog.Catalog.find`).

Every error is JSON ``{"error": "<one line>"}``: 400 bad input, 403 a foreign Host header or work asked
for by another site's page, 404 unknown model or job, 405 a method a path does not take (a result deleted
without its job), 411 no Content-Length, 413 upload too large, 415 a form instead of the photo's bytes, 503
busy (refused, not queued). Request bodies stream to files in the server's temporary folder; nothing from
the browser is used as a path (files are named by the server's ids).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from stylenet.errors import StylenetError, one_line
from stylenet.serve.catalog import UnknownModel
from stylenet.serve.limits import Busy, millions
from stylenet.serve.work import stylize_frame

if TYPE_CHECKING:
    from stylenet.inference import Controls
    from stylenet.serve.server import StyleServer
    from stylenet.serve.work import PhotoJob

log = logging.getLogger(__name__)

HTML, JS, CSS = "text/html; charset=utf-8", "text/javascript; charset=utf-8", "text/css; charset=utf-8"
STATIC = {"/": ("index.html", HTML), "/index.html": ("index.html", HTML), "/app.js": ("app.js", JS),
          "/style.css": ("style.css", CSS)}
#: The page runs only its own script; images may be blobs (the browser's own photos, webcam frames).
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
               "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
JOB_PATH = re.compile(r"/api/jobs/([0-9a-f]{32})(?:/(\d{1,6})\.png)?")
CHUNK = 1 << 20
#: Seconds a connection may stall, reading or writing one :data:`SEND_CHUNK`, before it is dropped: an
#: upload holds its place in the queue, so a stalled client (a dead Wi-Fi link) must not keep it from
#: everyone else.
STALLED_S = 30.0
#: Bytes of a result written at a time: a client that takes 2 KB/s or more is never dropped.
SEND_CHUNK = 64 << 10
#: Bytes per second an upload must average once it has run for :data:`STALLED_S`: a trickle (a byte every
#: 20 s) never stalls a read, and held its place in the queue for ever.
MIN_UPLOAD_RATE = 2000


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost`` in any case, 127.x, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: The methods of the API's fixed paths (the page's files take GET and HEAD; a job's path is matched apart).
METHODS = {"/api/models": ("GET", "HEAD"), "/api/jobs": ("POST",), "/api/frame": ("POST",)}


class HttpError(StylenetError):
    """A refused request: its status and one-line message go back as JSON (with ``headers``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def status_of(err: Exception) -> int:
    """The HTTP status for an error raised while answering."""
    if isinstance(err, HttpError):
        return err.status
    if not isinstance(err, StylenetError):
        return 500  # a bug here, not the request's fault
    return 503 if isinstance(err, Busy) else 404 if isinstance(err, UnknownModel) else 400


def not_stored(name: str, err: OSError) -> HttpError:
    """The server's temporary folder refused an upload (a full disk, a cleaner that took the folder): one
    line, without the server's paths, not a traceback: the browser's request was not at fault."""
    return HttpError(507, f"the server cannot keep {name!r} in its temporary folder "
                          f"({err.strerror or type(err).__name__})")


def content_length(text: str | None) -> int | None:
    """The Content-Length header's byte count; None when it is missing or not plain ASCII digits
    (``str.isdigit`` also accepts superscript and other Unicode digits, which ``int`` refuses)."""
    return int(text) if text and text.isascii() and text.isdigit() else None


def upload_name(text: str) -> str:
    """The browser's file name for messages and downloads: its last part, printable, at most 100 characters."""
    name = re.split(r"[\\/]", text)[-1]
    return "".join(char for char in name if char.isprintable())[:100] or "photo"


class Handler(BaseHTTPRequestHandler):
    """Answers one request; the state lives on :class:`~stylenet.serve.server.StyleServer`."""

    server: StyleServer
    server_version = "stylenet-serve"
    timeout = STALLED_S  # socketserver puts it on the connection: a stalled read or write raises TimeoutError
    _unread = 0  # request body bytes not read yet (drained before an error answer)

    def log_message(self, template: str, *args: Any) -> None:
        """Requests go to the debug log, not to stderr line by line."""
        log.debug("%s %s", self.address_string(), template % args)

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_HEAD(self) -> None:
        """GET's status and headers without the body (``curl -I``, link checkers, the page's check that
        a result is still kept)."""
        self._answer(self._get)

    def do_POST(self) -> None:
        self._answer(self._post)

    def do_DELETE(self) -> None:
        self._answer(self._delete)

    def do_PUT(self) -> None:
        """No path takes PUT (or PATCH): 405 naming the methods one does take, as for any method it does not."""
        self._answer(self._unsupported)

    do_PATCH = do_PUT

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a method the page does not use, such as PUT; a malformed
        request line) as the page's one-line JSON too, not an HTML page; no body to a HEAD request."""
        self.close_connection = True
        data = json.dumps({"error": message or HTTPStatus(code).phrase}).encode()
        self._send_headers(code, "application/json", len(data))
        if self.command != "HEAD":
            self.wfile.write(data)

    def _answer(self, route: Any) -> None:
        """Run ``route(path, query)``; any error becomes a JSON answer with its status."""
        url = urlsplit(self.path)
        self._unread = content_length(self.headers.get("Content-Length")) or 0
        try:
            self._check_host()
            if self.command in ("POST", "DELETE"):
                self._check_origin()
            allowed = ("GET", "HEAD") if url.path in STATIC else METHODS.get(url.path)
            if allowed and self.command not in allowed:  # (it was "no such job or page", or "no such page")
                raise HttpError(405, f"{url.path} takes {' or '.join(allowed)}, not {self.command}",
                                {"Allow": ", ".join(allowed)})
            # blank values kept: "strength=" is an error to report, not a setting to pass over
            route(url.path, {key: values[-1] for key, values in parse_qs(url.query, keep_blank_values=True).items()})
        except Exception as err:  # every error is one JSON line; the server goes on
            self._refuse(err)

    def _refuse(self, err: Exception) -> None:
        """Answer ``err`` (being handled) as one JSON line with its status; nothing if the browser went
        away or stalled, as there is no one to tell."""
        if isinstance(err, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            self.close_connection = True
            return
        if not isinstance(err, StylenetError):
            log.exception("error answering %s %s", self.command, urlsplit(self.path).path)
        with contextlib.suppress(OSError):
            self._drain()
            data = json.dumps({"error": one_line(str(err)) or type(err).__name__}).encode()
            self._send(status_of(err), data, "application/json", getattr(err, "headers", None))

    def _check_host(self) -> None:
        """On a loopback address, only requests addressed to it: a web page elsewhere cannot reach the
        server by pointing a host name of its own at 127.0.0.1 (DNS rebinding)."""
        if not is_loopback(self.server.config.host):
            return
        header = self.headers.get("Host") or ""
        host = header[1:].partition("]")[0] if header.startswith("[") else header.rsplit(":", 1)[0]  # [::1]:8000
        if not is_loopback(host):
            raise HttpError(403, f"this server answers requests for 127.0.0.1 or localhost, not {host[:60]!r}")

    def _check_origin(self) -> None:
        """Work is asked for by the page itself or by a program, not by another web site: a page
        elsewhere may send a "simple" cross-site POST (``text/plain``, no preflight) that would fill the
        queue and take the CPU. Browsers say where a request comes from (``Origin``, ``Sec-Fetch-Site``);
        programs such as curl send neither."""
        origin, site = self.headers.get("Origin"), self.headers.get("Sec-Fetch-Site")
        foreign = origin is not None and urlsplit(origin).netloc != self.headers.get("Host", "")
        if foreign or site in ("cross-site", "same-site"):
            where = origin if origin is not None else site or ""
            raise HttpError(403, f"this server takes work from its own page only, not from {where[:60]!r}")

    # ---------------------------------------------------------------------------- routes

    def _get(self, path: str, query: dict[str, str]) -> None:
        if path in STATIC:
            name, kind = STATIC[path]
            data = resources.files("stylenet.serve").joinpath("static", name).read_bytes()
            self._send(200, data, kind, {"Content-Security-Policy": PAGE_POLICY})
        elif path == "/api/models":
            server = self.server
            self._send_json(200, {"models": [entry.public() for entry in server.catalog.entries()],
                                  "folder": server.catalog.folder.name,
                                  "limits": {"max_upload": server.config.max_upload,
                                             "max_pixels": server.plan.max_pixels,
                                             "workers": server.gate.workers, "queue": server.gate.queue}})
        else:
            job, index = self._job(path)
            if index is None:
                self._send_json(200, job.status())
            elif index < len(job.entries) and job.result_path(index).is_file():
                self._send_file(job.result_path(index), "image/png")
            else:
                raise HttpError(404, f"no result {index} for {job.name!r} (yet)")

    def _post(self, path: str, query: dict[str, str]) -> None:
        if path == "/api/jobs":
            ids = [model_id for model_id in query.get("models", "").split(",") if model_id]
            if not ids:
                raise HttpError(400, "choose at least one model")
            if len(set(ids)) < len(ids):  # before any look-up
                raise HttpError(400, "each model may be chosen once per photo")
            entries = self.server.catalog.find_all(ids)
            controls, name = self._controls(query), upload_name(query.get("name", "photo"))
            self.server.gate.admit()
            try:
                job = self.server.jobs.new(name, entries, controls)
            except OSError as err:  # its place given back: the next photo may find the folder again
                self.server.gate.leave()
                raise not_stored(name, err) from None
            try:
                self._receive(job.upload, name)
            except BaseException:
                self.server.gate.leave()
                self.server.jobs.remove(job.id)
                raise
            self.server.start(job)
            self._send_json(202, {"id": job.id})
        elif path == "/api/frame":
            self._frame(query)
        else:
            raise HttpError(404, f"no such page {path[:80]!r}")

    def _delete(self, path: str, query: dict[str, str]) -> None:
        job, index = self._job(path)
        if index is not None:
            raise HttpError(405, f"a result goes with its job: DELETE /api/jobs/{job.id}")
        self.server.jobs.remove(job.id)
        self._send_json(200, {"removed": job.id})

    def _unsupported(self, path: str, query: dict[str, str]) -> None:
        if JOB_PATH.fullmatch(path):
            raise HttpError(405, f"{path[:80]} takes GET, HEAD or DELETE, not {self.command}",
                            {"Allow": "GET, HEAD, DELETE"})
        raise HttpError(404, f"no such page {path[:80]!r}")

    def _frame(self, query: dict[str, str]) -> None:
        """A webcam frame, answered at once (after waiting for a worker, like a photo)."""
        server = self.server
        entry, controls = server.catalog.find(query.get("model", "")), self._controls(query)
        path = server.jobs.root / f"frame-{uuid.uuid4().hex}"
        server.gate.admit()
        try:  # answered, the frame or its refusal, before it is counted out: a stopping server waits for that
            try:
                self._receive(path, "webcam frame")
                with server.gate.running():
                    data = stylize_frame(path, entry, controls, server.catalog, server.plan)
            finally:
                path.unlink(missing_ok=True)
            self._send(200, data, "image/jpeg")
        except Exception as err:
            self._refuse(err)
        finally:
            server.gate.leave()

    # ---------------------------------------------------------------------------- helpers

    def _job(self, path: str) -> tuple[PhotoJob, int | None]:
        """The job (and result index) a ``/api/jobs/...`` path names; 404 for anything else."""
        match = JOB_PATH.fullmatch(path)
        job = self.server.jobs.get(match[1]) if match else None
        if job is None:
            raise HttpError(404, f"no such job or page {path[:80]!r} (finished jobs are kept for a while only)")
        return job, None if match is None or match[2] is None else int(match[2])

    def _controls(self, query: dict[str, str]) -> Controls:
        from stylenet.inference import Controls

        try:
            strength = float(query.get("strength", "1"))
        except ValueError:
            strength = -1.0
        if not 0.0 <= strength <= 1.0:
            raise HttpError(400, f"strength must be a number from 0 to 1, got {query.get('strength')!r}")
        flag = query.get("preserve_color", "0").lower()
        if flag not in ("0", "1", "true", "false", "on", "off"):
            raise HttpError(400, f"preserve_color must be 1 or 0, got {query['preserve_color'][:20]!r}")
        return Controls(strength, flag in ("1", "true", "on"))

    def _receive(self, target: Path, name: str) -> None:
        """Stream the request body to ``target`` (a file in the temporary folder), size-checked."""
        length = content_length(self.headers.get("Content-Length"))
        limit = self.server.config.max_upload
        if length is None:
            raise HttpError(411, f"upload of {name!r} has no Content-Length")
        if length == 0:
            raise HttpError(400, f"{name!r} is empty (0 bytes)")
        form = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if form.startswith("multipart/") or form == "application/x-www-form-urlencoded":  # not the photo's bytes
            raise HttpError(415, f"upload of {name!r} is a form ({form}); send the photo's own bytes as the body, "
                                 "as the page does (curl -H 'Content-Type: image/jpeg' --data-binary @photo.jpg)")
        if length > limit:
            raise HttpError(413, f"{name!r} is {millions(length)} MB; this server takes uploads up to "
                                 f"{millions(limit)} MB (stylenet-serve --max-upload)")
        try:
            with open(target, "wb") as handle:
                for chunk in self._body(f"upload of {name!r}"):
                    handle.write(chunk)
            if self._unread > 0:
                raise HttpError(400, f"upload of {name!r} was cut short")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            raise  # the browser's, not the folder's (see _refuse)
        except OSError as err:
            raise not_stored(name, err) from None

    def _drain(self) -> None:
        """Read and drop what is left of the body, so that the browser gets the answer, not a reset;
        a body over the upload limit is not read: the connection is closed instead."""
        if self._unread > self.server.config.max_upload:
            self.close_connection = True
            return
        try:
            for _ in self._body("the request's body"):
                pass
        except TimeoutError:  # a trickle: no answer, and what is left of it is no next request
            self.close_connection = True
            raise

    def _body(self, name: str) -> Iterator[bytes]:
        """What is left of the request body, as it arrives (to the end, or until the browser hangs up); a
        :class:`TimeoutError` once it has taken :attr:`timeout` s at under :data:`MIN_UPLOAD_RATE` (a byte
        now and then never stalls a read, and held its place in the queue for ever)."""
        started, received = time.monotonic(), 0
        while self._unread > 0:
            chunk = self.rfile.read1(min(CHUNK, self._unread))  # what has arrived: the rate is checked
            if not chunk:
                return
            self._unread -= len(chunk)
            received += len(chunk)
            yield chunk
            elapsed = time.monotonic() - started
            if elapsed > self.timeout and received < MIN_UPLOAD_RATE * elapsed:
                raise TimeoutError(f"{name} arrived under {MIN_UPLOAD_RATE} bytes/s")

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, data: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        self._send_headers(status, kind, len(data), headers)
        if self.command == "HEAD":
            return
        view = memoryview(data)
        for start in range(0, len(view), SEND_CHUNK):  # each within STALLED_S
            self.wfile.write(view[start:start + SEND_CHUNK])

    def _send_file(self, path: Path, kind: str) -> None:
        """A result file, streamed: a large photo's PNG is never held in memory whole."""
        with open(path, "rb") as handle:
            self._send_headers(200, kind, os.fstat(handle.fileno()).st_size)
            if self.command != "HEAD":
                shutil.copyfileobj(handle, self.wfile, SEND_CHUNK)

    def _send_headers(self, status: int, kind: str, length: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": kind, "Content-Length": str(length), "Cache-Control": "no-store",
                           "X-Content-Type-Options": "nosniff", **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
