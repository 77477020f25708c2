"""``stylenet-serve`` over loopback HTTP: photos in and out, bad uploads, paths from the browser, a
busy server, a burst of concurrent requests under a memory limit, and its temporary folder.

Servers run in-process on 127.0.0.1 with a port the system picks (one test runs the console script,
to measure that process's peak memory); models are tiny random networks, photos generated.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from stylenet import load_model
from stylenet.cli.serve import exposure_warning
from stylenet.cli.serve import main as serve_main
from stylenet.cli.stylize import main as stylize_main
from stylenet.errors import StylenetError
from stylenet.serve import Gate, MemoryPlan, ServeConfig, StyleServer, file_styles, model_entries
from stylenet.serve.handler import status_of
from stylenet.serve.limits import Busy, Stopping, tile_side
from tests.conftest import make_photo
from tests.helpers import RunsCode, console_script, png_with_header_size
from tests.test_stylize_cli import make_model

Address = tuple[str, int]
TIMEOUT_S = 60


# ------------------------------------------------------------------------------------ helpers


def call(address: Address, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    """One raw HTTP request (the path is sent exactly as given): status, body, content type."""
    connection = http.client.HTTPConnection(*address, timeout=TIMEOUT_S)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type") or ""
    finally:
        connection.close()


def call_json(address: Address, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    status, data, kind = call(address, method, path, body)
    assert kind == "application/json", (status, data[:200])
    return status, json.loads(data)


def model_ids(address: Address) -> dict[str, str]:
    """label -> id, from the server's own list."""
    status, listing = call_json(address, "GET", "/api/models")
    assert status == 200
    return {model["label"]: model["id"] for model in listing["models"]}


def submit(address: Address, photo: Path, ids: list[str], query: str = "") -> tuple[int, dict[str, Any]]:
    return call_json(address, "POST", f"/api/jobs?models={','.join(ids)}&name={photo.name}{query}",
                     photo.read_bytes())


def finished(address: Address, job_id: str) -> dict[str, Any]:
    """Poll a job until it is done (as the page does)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        status, job = call_json(address, "GET", f"/api/jobs/{job_id}")
        assert status == 200, job
        if job["state"] == "done":
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not done after {TIMEOUT_S} s: {job}")


def pixels(data: bytes | Path) -> np.ndarray:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def snapshot(root: Path) -> dict[str, int]:
    """Every file under ``root`` and its modification time: what a test compares before and after."""
    return {path.relative_to(root).as_posix(): path.stat().st_mtime_ns for path in root.rglob("*")}


def model_folder(root: Path) -> Path:
    make_model(root / "tiny.safetensors", style="tiny")
    make_model(root / "sub" / "other.safetensors", style="other", seed=1)
    (root / ".hidden.safetensors").write_bytes(b"not listed")
    (root / "notes.txt").write_text("not a model")
    return root


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return model_folder(tmp_path / "models")


def start(config: ServeConfig) -> StyleServer:
    server = StyleServer(config)
    server.serve_in_thread()
    return server


@pytest.fixture
def server_config(tmp_path: Path, models: Path) -> ServeConfig:
    (tmp_path / "tmp").mkdir()
    return ServeConfig(models, port=0, device="cpu", precision="fp32", temp_parent=tmp_path / "tmp",
                       memory_limit=64 * 2**30)


@pytest.fixture
def server(server_config: ServeConfig, one_thread: None) -> Iterator[StyleServer]:
    running = start(server_config)
    yield running
    running.shutdown()
    running.server_close()


def address(server: StyleServer) -> Address:
    return server.server_address[0], server.server_address[1]


# ------------------------------------------------------------------------------------ photos


def test_the_address_line_counts_styles_and_their_files(capsys: pytest.CaptureFixture[str]) -> None:
    """A file of two styles and one of one: "3 model(s)" read as three files; an unreadable file counted as one."""
    from stylenet.cli.serve import announce

    entries = [SimpleNamespace(file=Path(name), readable="broken" not in name, shown=name.rsplit(".", 1)[0])
               for name in ("multi.safetensors", "multi.safetensors", "one.pth", "a/broken.pth", "b/broken.pth")]
    server = SimpleNamespace(server_address=("127.0.0.1", 8000), url="http://127.0.0.1:8000/",
                             catalog=SimpleNamespace(entries=lambda: entries, folder=Path("models")))
    announce(server, "models", "127.0.0.1")
    out, err = capsys.readouterr()
    assert out == ("stylenet-serve: 3 style(s) from 2 model file(s) in 'models' on http://127.0.0.1:8000/ "
                   "(Ctrl-C stops)\n")
    # not styles to count; two of one name in two folders, each named as the page names it
    assert err == "stylenet-serve: warning: 2 model file(s) cannot be read: a/broken, b/broken\n"


def test_a_photo_comes_back_stylized_at_full_size_for_each_chosen_model(
        server: StyleServer, tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    photo = make_photo(tmp_path / "in" / "photo.png", size=(70, 45))
    with Image.open(photo) as first:  # an animation: its first frame, said (as stylenet-stylize says it)
        first.save(animation := tmp_path / "in" / "anim.gif", save_all=True, append_images=[first.rotate(90)])
    before = {"models": snapshot(tmp_path / "models"), "root": snapshot(tmp_path / "in"),
              "top": sorted(os.listdir(tmp_path))}
    ids = model_ids(address(server))
    assert sorted(ids) == ["sub/other", "tiny"]  # hidden files and non-models are not listed

    status, reply = submit(address(server), photo, [ids["tiny"], ids["sub/other"]], "&strength=0.7")
    assert status == 202
    job = finished(address(server), reply["id"])
    assert job["error"] is None and job["note"] is None and job["size"] == [70, 45]
    assert [(r["label"], r["download"], r["width"], r["height"]) for r in job["results"]] == [
        ("tiny", "photo_tiny.png", 70, 45), ("sub/other", "photo_other.png", 70, 45)]
    animated = finished(address(server), submit(address(server), animation, [ids["tiny"]])[1]["id"])
    assert animated["note"] == "anim.gif holds 2 frames: only the first is stylized", animated
    assert [r["width"] for r in animated["results"]] == [70]
    assert call_json(address(server), "DELETE", f"/api/jobs/{animated['id']}")[0] == 200
    results = []
    for result in job["results"]:
        status, data, kind = call(address(server), "GET", result["url"])
        assert status == 200 and kind == "image/png"
        results.append(pixels(data))
        assert results[-1].shape == (45, 70, 3)
        assert np.abs(results[-1] - pixels(photo)).mean() > 5  # stylized, not the photo back
    assert np.abs(results[0] - results[1]).mean() > 1  # each model its own result

    job_folder = server.jobs.root / reply["id"]
    assert sorted(p.name for p in job_folder.iterdir()) == ["0.png", "1.png"]  # the upload is gone
    assert call_json(address(server), "DELETE", f"/api/jobs/{reply['id']}")[0] == 200
    assert not job_folder.exists()
    assert call(address(server), "GET", result["url"])[0] == 404
    # nothing was written outside the server's temporary folder
    assert snapshot(tmp_path / "models") == before["models"] and snapshot(tmp_path / "in") == before["root"]
    assert sorted(os.listdir(tmp_path)) == before["top"]


@pytest.mark.parametrize("share", ["fits", "too_small"])
def test_a_large_photo_shows_progress_and_matches_stylenet_stylize(
        share: str, tmp_path: Path, server_config: ServeConfig, one_thread: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Beyond the activation budget a photo runs in several passes that the page shows, and comes out as
    stylenet-stylize makes it with the same budget: layer by layer (exact) when the worker's memory share
    holds it, else in tiles of the budget's size (``--tile``), which bound the memory."""
    server_config.max_memory = 1_000_000
    server = start(server_config)
    if share == "too_small":
        server.plan = dataclasses.replace(server.plan, share=1)
    try:
        photo = make_photo(tmp_path / "big.png", size=(160, 120), seed=3)
        entry = server.catalog.find(model_ids(address(server))["tiny"])
        tile = tile_side(server.catalog.load(entry), 160 * 120, server.plan)
        assert (tile is None) == (share == "fits")
        status, reply = submit(address(server), photo, [entry.id], "&strength=0.8&preserve_color=1")
        assert status == 202
        job = finished(address(server), reply["id"])
        assert job["progress"]["total"] > 1 and job["progress"]["done"] == job["progress"]["total"]
        served = pixels(call(address(server), "GET", job["results"][0]["url"])[1])
    finally:
        server.shutdown()
        server.server_close()
    code = stylize_main([str(photo), "-m", str(server_config.folder / "tiny.safetensors"), "-o",
                         str(tmp_path / "cli.png"), "--max-memory", "1000000", "--strength", "0.8",
                         "--preserve-color", "--device", "cpu", "--precision", "fp32",
                         *(["--tile", str(tile)] if tile else [])])
    assert code == 0, capsys.readouterr().err
    assert served.shape == (120, 160, 3) and np.array_equal(served, pixels(tmp_path / "cli.png"))


# ------------------------------------------------------------------------------------ bad input


def test_bad_uploads_get_a_clear_one_line_message(server: StyleServer, tmp_path: Path) -> None:
    tiny = model_ids(address(server))["tiny"]
    bad = {"notes.jpg": (b"this is not an image", "cannot read image 'notes.jpg': not a recognised image file"),
           "large.png": (png_with_header_size(12000, 12000), "'large.png' is 12000x12000 (144 megapixels); "
                                                              "this server takes photos up to 120 megapixels"),
           # beyond Pillow's own bound: the server's limit, not Pillow's (it quoted "limit of 178956970 pixels")
           "bomb.png": (png_with_header_size(30000, 30000), "'bomb.png' declares more than 179 megapixels; this "
                                                            "server takes photos up to 120 megapixels"),
           "cut.png": (make_photo(tmp_path / "c.png").read_bytes()[:300],
                       "cannot read image 'cut.png': truncated file")}
    for name, (data, message) in bad.items():
        (tmp_path / name).write_bytes(data)
        status, reply = submit(address(server), tmp_path / name, [tiny])
        assert status == 202, reply
        job = finished(address(server), reply["id"])
        assert job["error"].startswith(message) and "\n" not in job["error"], job["error"]
        assert str(server.jobs.root) not in job["error"]  # the upload's name, never the temporary path
        assert job["results"] == []

    photo = make_photo(tmp_path / "ok.png")
    refusals = {f"/api/jobs?models={tiny}&strength=2": (400, "strength must be a number from 0 to 1"),
                f"/api/jobs?models={tiny}&strength=": (400, "strength must be a number from 0 to 1, got ''"),
                f"/api/jobs?models={tiny}&preserve_color=yes": (400, "preserve_color must be 1 or 0, got 'yes'"),
                f"/api/jobs?models={tiny},{tiny}": (400, "each model may be chosen once per photo"),
                "/api/jobs?models=": (400, "choose at least one model"),
                f"/api/frame?model={tiny}&strength=x": (400, "strength must be a number")}
    for path, (code, message) in refusals.items():
        status, reply = call_json(address(server), "POST", path, photo.read_bytes())
        assert (status, reply["error"][: len(message)]) == (code, message)
    status, reply = call_json(address(server), "POST", f"/api/jobs?models={tiny}&name=empty.png", b"")
    assert (status, reply["error"]) == (400, "'empty.png' is empty (0 bytes)")


def test_another_sites_page_cannot_ask_for_work_and_a_result_goes_only_with_its_job(server: StyleServer,
                                                                                    tmp_path: Path) -> None:
    """A page elsewhere may send a "simple" cross-site POST (text/plain needs no preflight): browsers say
    where it comes from, and it is refused; the page's own requests and programs (no Origin) are not.
    DELETE of one result is refused rather than taken for its whole job."""
    tiny, photo = model_ids(address(server))["tiny"], make_photo(tmp_path / "p.png").read_bytes()
    host = f"{address(server)[0]}:{address(server)[1]}"
    foreign = [{"Origin": "https://elsewhere.example", "Content-Type": "text/plain"},
               {"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://127.0.0.1:1"}, {"Origin": ""}]
    for headers in foreign:
        for path in (f"/api/jobs?models={tiny}", f"/api/frame?model={tiny}"):
            status, data, _ = call(address(server), "POST", path, photo, headers)
            assert status == 403 and b"takes work from its own page only" in data, (headers, data)
    own = {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
    status, data, _ = call(address(server), "POST", f"/api/jobs?models={tiny}&name=p.png", photo, own)
    assert status == 202, data
    job_id = json.loads(data)["id"]
    finished(address(server), job_id)
    status, reply = call_json(address(server), "DELETE", f"/api/jobs/{job_id}/0.png")
    assert status == 405 and reply["error"] == f"a result goes with its job: DELETE /api/jobs/{job_id}"
    assert call(address(server), "GET", f"/api/jobs/{job_id}/0.png")[0] == 200  # still there
    status, data, _ = call(address(server), "DELETE", f"/api/jobs/{job_id}", headers={"Origin": "https://x.example"})
    assert status == 403
    assert call_json(address(server), "DELETE", f"/api/jobs/{job_id}") == (200, {"removed": job_id})


def test_a_method_a_path_does_not_take_is_405_naming_the_one_it_does(server: StyleServer) -> None:
    """GET /api/frame was "no such job or page ... (finished jobs are kept for a while only)", POST
    /api/models "no such page": a page author is told the method instead, with HTTP's Allow header."""
    import http.client

    job = f"/api/jobs/{'0' * 32}"  # PUT and PATCH: the standard library's 501 before
    for method, path, allowed in (("GET", "/api/frame", "POST"), ("POST", "/api/models", "GET, HEAD"),
                                  ("DELETE", "/api/jobs", "POST"), ("POST", "/app.js", "GET, HEAD"),
                                  ("PUT", "/api/jobs", "POST"), ("PATCH", job, "GET, HEAD, DELETE")):
        host, port = address(server)
        connection = http.client.HTTPConnection(host, port, timeout=30)
        connection.request(method, path, body=b"" if method in ("POST", "PUT", "PATCH") else None,
                           headers={"Origin": server.url.rstrip("/")})
        reply = connection.getresponse()
        body = json.loads(reply.read())
        connection.close()
        assert (reply.status, reply.getheader("Allow")) == (405, allowed), (method, path, body)
        said = " or ".join(allowed.rsplit(", ", 1))  # "GET, HEAD or DELETE"
        assert body == {"error": f"{path} takes {said}, not {method}"}


def test_the_results_kept_are_those_of_the_photos_finished_last(tmp_path: Path) -> None:
    """The store forgets the oldest *finished* jobs beyond its ``keep``: a big photo that finished after the
    small ones uploaded behind it was forgotten at the next upload, as the oldest job created."""
    from stylenet.serve.work import JobStore

    store = JobStore(tmp_path, keep=2)
    slow, quick, quicker = (store.new(name, [], None) for name in ("slow.png", "a.png", "b.png"))
    store.finish(quick)
    store.finish(quicker)
    store.finish(slow)  # the slow one ends last
    store.new("c.png", [], None)  # three finished, two kept
    assert store.get(quick.id) is None and not quick.folder.exists()
    assert store.get(slow.id) is slow and store.get(quicker.id) is quicker and slow.state == "done"


def test_an_upload_over_the_size_limit_is_refused(server_config: ServeConfig, tmp_path: Path,
                                                  one_thread: None) -> None:
    server_config.max_upload = 2000
    server = start(server_config)
    try:
        photo = make_photo(tmp_path / "photo.png", size=(200, 150))
        status, reply = submit(address(server), photo, [model_ids(address(server))["tiny"]])
        assert status == 413
        assert reply["error"].startswith("'photo.png' is 0.0") and reply["error"].endswith(
            "this server takes uploads up to 0.002 MB (stylenet-serve --max-upload)")  # it said "up to 0.0 MB"
        assert list(server.jobs.root.iterdir()) == []
    finally:
        server.shutdown()
        server.server_close()


def test_paths_from_the_browser_never_reach_the_file_system(server: StyleServer, models: Path,
                                                            tmp_path: Path) -> None:
    photo = make_photo(tmp_path / "photo.png")
    secret = tmp_path / "secret.safetensors"
    make_model(secret)
    for model in ("../secret.safetensors", str(secret), "tiny.safetensors", "tiny", str(models / "tiny.safetensors")):
        status, reply = call_json(address(server), "POST", f"/api/jobs?models={model}", photo.read_bytes())
        assert status == 404 and reply["error"].startswith("unknown model id"), (model, reply)
    for path in ("/../../etc/passwd", "/api/jobs/../../../etc/passwd", "/static/../server.py", "/app.js/..",
                 "/api/jobs/" + "0" * 32 + "/../../../models/tiny.safetensors"):
        status, data, _ = call(address(server), "GET", path)
        assert status == 404 and b"root:" not in data, path
    # a name with folders in it is only a label: the upload is stored under the server's own name
    status, reply = call_json(address(server), "POST", f"/api/jobs?models={model_ids(address(server))['tiny']}"
                              "&name=../../escape.png", photo.read_bytes())
    assert status == 202 and finished(address(server), reply["id"])["results"][0]["download"] == "escape_tiny.png"
    assert not (tmp_path / "escape.png").exists() and not (models / "escape.png").exists()
    # a page elsewhere that points its own host name at 127.0.0.1 (DNS rebinding) is refused
    status, data, _ = call(address(server), "GET", "/api/models", headers={"Host": "attacker.example"})
    assert status == 403 and b"attacker.example" in data
    port = address(server)[1]  # host names are case-insensitive: curl http://LOCALHOST:port/ was refused
    assert call(address(server), "GET", "/api/models", headers={"Host": f"LocalHost:{port}"})[0] == 200


def test_the_ipv6_loopback_address_serves_the_page(server_config: ServeConfig, one_thread: None) -> None:
    """``--host ::1`` is a loopback address like 127.0.0.1: it listens, prints a URL that opens, and
    accepts requests naming it (a bracketed Host header)."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    running = start(dataclasses.replace(server_config, host="::1"))
    try:
        assert running.url == f"http://[::1]:{running.server_address[1]}/"
        status, _, kind = call(("::1", running.server_address[1]), "GET", "/api/models")
        assert (status, kind) == (200, "application/json")
        status, _, _ = call(("::1", running.server_address[1]), "GET", "/api/models", headers={"Host": "[::1]"})
        assert status == 200
    finally:
        running.shutdown()
        running.server_close()


def test_methods_the_page_does_not_use_get_a_json_refusal(server: StyleServer) -> None:
    """The standard library's own refusals answer like every other error: one JSON line (no HTML page).
    HEAD answers as GET does, without the body (``curl -I``; the page asks whether a result is still kept)."""
    status, reply = call_json(address(server), "TRACE", "/api/jobs")
    assert status == 501 and "TRACE" in reply["error"], reply
    page = call(address(server), "GET", "/")
    connection = http.client.HTTPConnection(*address(server), timeout=TIMEOUT_S)
    try:
        connection.request("HEAD", "/")
        response = connection.getresponse()
        assert (response.status, response.read(), response.getheader("Content-Type")) == (200, b"", page[2])
        assert int(response.getheader("Content-Length")) == len(page[1]) > 0
    finally:
        connection.close()
    status, data, kind = call(address(server), "HEAD", f"/api/jobs/{'0' * 32}/0.png")  # dropped, or never there
    assert (status, data, kind) == (404, b"", "application/json")
    status, reply = call_json(address(server), "GET", "/api/models")  # the server goes on
    assert status == 200 and reply


def test_a_model_file_that_would_run_code_is_refused_on_the_page(server: StyleServer, models: Path,
                                                                 tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    torch.save({"conv1.conv2d.weight": RunsCode(marker)}, models / "evil.pth")
    status, reply = submit(address(server), make_photo(tmp_path / "p.png"), [model_ids(address(server))["evil"]])
    assert status == 202
    job = finished(address(server), reply["id"])
    assert "refusing to load model file" in job["results"][0]["error"]
    assert not marker.exists()


# ------------------------------------------------------------------------------------ load


def test_a_full_queue_refuses_requests_cleanly(server_config: ServeConfig, tmp_path: Path,
                                               one_thread: None) -> None:
    server_config.workers, server_config.queue = 1, 1
    server = start(server_config)
    try:
        tiny = model_ids(address(server))["tiny"]
        photo = make_photo(tmp_path / "photo.png")
        with server.gate.running():  # the one worker is busy
            accepted = [submit(address(server), photo, [tiny]) for _ in range(2)]
            refused = submit(address(server), photo, [tiny])
            frame = call_json(address(server), "POST", f"/api/frame?model={tiny}", photo.read_bytes())
            assert [status for status, _ in accepted] == [202, 202]
            for status, reply in (refused, frame):
                assert status == 503 and reply["error"].startswith("the server is busy: 1 request(s) running and 1")
            assert call_json(address(server), "GET", f"/api/jobs/{accepted[0][1]['id']}")[1]["state"] == "queued"
        for _, reply in accepted:  # the worker is free again: both finish
            assert finished(address(server), reply["id"])["results"][0]["width"] == 80
        assert server.gate.admitted == 0
        status, data, kind = call(address(server), "POST", f"/api/frame?model={tiny}", photo.read_bytes())
        assert status == 200 and kind == "image/jpeg" and pixels(data).shape == (64, 80, 3)
        # the page sends its controls with every webcam frame: strength 0 is the photo (up to the JPEG),
        # preserve_color keeps the photo's colours
        frames = {query: pixels(call(address(server), "POST", f"/api/frame?model={tiny}{query}", photo.read_bytes())[1])
                  .astype(np.float64) for query in ("&strength=0", "&preserve_color=1")}
        original = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float64)
        styled = pixels(data).astype(np.float64)
        assert np.abs(frames["&strength=0"] - original).mean() < 3 < np.abs(styled - original).mean()
        assert np.abs(frames["&preserve_color=1"] - styled).mean() > 3
    finally:
        server.shutdown()
        server.server_close()


def test_a_burst_of_connections_waits_for_the_server_instead_of_being_dropped(server_config: ServeConfig) -> None:
    """40 clients connecting before the server accepts any (it is busy): the system queues them all for
    the handler, which answers each with a result or a 503. socketserver's default backlog of 5 let the
    seventh wait for the kernel's SYN retry (a second and more) or be reset."""
    server = StyleServer(server_config)  # bound and listening, not accepting yet
    clients, failure = [], None
    try:
        for _ in range(40):
            clients.append(socket.create_connection(address(server), timeout=0.5))
    except OSError as err:
        failure = err
    finally:
        for client in clients:
            client.close()
        server.server_close()
    assert failure is None, f"connection {len(clients) + 1} of 40: {failure!r}"


@pytest.mark.skipif(sys.platform != "linux", reason="reads the server's peak memory from /proc (Linux)")
def test_a_burst_of_requests_completes_or_is_refused_within_the_memory_limit(tmp_path: Path, models: Path) -> None:
    """The console script under a burst of photos and webcam frames from several threads: every request
    ends with a result or a clean 503, the process's peak memory stays under --memory-limit, nothing is
    written outside its temporary folder, and SIGTERM stops it, deleting that folder."""
    limit = 2 * 10**9
    photos = [make_photo(tmp_path / "in" / f"p{i}.jpg", size=(480, 360), seed=i) for i in range(3)]
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    before = snapshot(models)
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*console_script("stylenet-serve"), str(models), "--port", "0", "--workers", "2",
                                "--queue", "2", "--memory-limit", str(limit), "--device", "cpu", "--precision", "fp32"],
                               cwd=tmp_path / "cwd", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, line + process.stderr.read()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        target = ("127.0.0.1", port)
        tiny = model_ids(target)["tiny"]

        def one(index: int) -> str:
            if index % 3 == 2:  # a webcam frame: answered at once
                status, data, _ = call(target, "POST", f"/api/frame?model={tiny}", photos[0].read_bytes())
                return "frame" if status == 200 else json.loads(data)["error"]
            status, reply = submit(target, photos[index % 3], [tiny])
            if status != 202:
                return reply["error"]
            return "photo" if finished(target, reply["id"])["results"][0]["width"] == 480 else "wrong size"

        start_time = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            outcomes = list(pool.map(one, range(9)))
        assert time.monotonic() - start_time < TIMEOUT_S
        done = [o for o in outcomes if o in ("photo", "frame")]
        assert done and all(o in ("photo", "frame") or o.startswith("the server is busy") for o in outcomes), outcomes
        peak = int(next(line for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
                        if line.startswith("VmHWM")).split()[1]) * 1024
        assert peak < limit, f"peak resident memory {peak / 1e9:.2f} GB over the {limit / 1e9:.1f} GB limit"
        assert len(list((tmp_path / "tmp").iterdir())) == 1  # the server's own folder, nothing else
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0 and "stopped" in out, err
    assert list((tmp_path / "tmp").iterdir()) == [] and list((tmp_path / "cwd").iterdir()) == []
    assert snapshot(models) == before


# ------------------------------------------------------------------------------------ parts


def test_the_server_deletes_its_temporary_folder_on_close(server_config: ServeConfig, tmp_path: Path,
                                                          one_thread: None) -> None:
    server = start(server_config)
    status, reply = submit(address(server), make_photo(tmp_path / "p.png"), [model_ids(address(server))["tiny"]])
    assert status == 202 and finished(address(server), reply["id"])["error"] is None
    folder = server.jobs.root
    assert (folder / reply["id"] / "0.png").is_file()
    server.shutdown()
    server.server_close()
    assert not folder.exists() and list((tmp_path / "tmp").iterdir()) == []


def test_model_entries_have_stable_ids_and_one_entry_per_style(models: Path) -> None:
    entries = model_entries(models)
    assert [(entry.label, entry.file, entry.style) for entry in entries] == [
        ("sub/other", models / "sub" / "other.safetensors", None), ("tiny", models / "tiny.safetensors", None)]
    assert [entry.id for entry in model_entries(models)] == [entry.id for entry in entries]
    assert len({entry.id for entry in entries}) == 2 and all(str(models) not in str(e.public()) for e in entries)
    assert file_styles(models / "tiny.safetensors") == (None,)
    make_model(models / "tiny.pth", style="tiny")  # the same name but its suffix: told apart by it, id and label
    entries = model_entries(models)
    assert [entry.label for entry in entries] == ["sub/other", "tiny.pth", "tiny.safetensors"]
    assert len({entry.id for entry in entries}) == 3


def test_linked_folders_are_listed_once_and_a_named_pipe_is_passed_over(models: Path, tmp_path: Path) -> None:
    """A folder of models assembled from links lost the linked folders' models without a word (photo folders
    are searched through links); a named pipe called x.pth hung every request that lists the models."""
    make_model(tmp_path / "elsewhere" / "far.safetensors", style="far")
    (models / "linked").symlink_to(tmp_path / "elsewhere")
    (models / "loop").symlink_to(models)  # ends, each real folder once
    (models / "gone.safetensors").symlink_to(tmp_path / "nothing")  # a broken link: an unreadable entry
    os.mkfifo(models / "pipe.pth")
    entries = model_entries(models)
    assert [entry.label for entry in entries] == ["gone", "linked/far", "sub/other", "tiny"]
    assert [entry.style for entry in entries] == [None] * 4 and file_styles(models / "gone.safetensors") is None


def test_loaded_models_are_let_go_least_recently_used_first_beyond_their_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model file a page had used stayed loaded, outside the memory plan: 40 paper-width models took
    the server past --memory-limit before any photo. Those kept hold at most LOADED_MODEL_BYTES of weights
    (here room for two tiny ones), the least recently used let go first; a model let go loads again."""
    from stylenet import modelfile
    from stylenet.inference import InferenceModel
    from stylenet.serve import catalog as catalog_module
    from stylenet.serve.catalog import Catalog
    from tests.test_export_formats import ExamplesNet
    from tests.test_multistyle import multi_file

    for index in range(4):
        make_model(tmp_path / "models" / f"m{index}.safetensors", style=f"m{index}", seed=index)
    catalog = Catalog(tmp_path / "models", {"device": "cpu", "precision": "fp32"})
    entries = catalog.entries()
    first = catalog.load(entries[0])
    parameters = sum(tensor.numel() for tensor in (*first.net.parameters(), *first.net.buffers()))
    assert first.weight_bytes == 4 * parameters  # float32 weights, by hand
    monkeypatch.setattr(catalog_module, "LOADED_MODEL_BYTES", 2 * first.weight_bytes)
    assert catalog.load(entries[0]) is first  # kept
    second = catalog.load(entries[1])
    assert catalog.load(entries[0]) is first  # m0 used last now: m1 is the least recently used
    catalog.load(entries[2])  # three would pass the bytes: m1 is let go, m0 kept
    assert catalog.load(entries[0]) is first and catalog.load(entries[1]) is not second
    # a file whose weights alone pass them is refused, not loaded beside them (the current model stayed loaded
    # whatever its size): a model file by its size, before it is read; a pickle by its network, once read
    monkeypatch.setattr(catalog_module, "LOADED_MODEL_BYTES", first.weight_bytes - 1)
    big = make_model(tmp_path / "models" / "big.safetensors", style="big")
    checkpoint = tmp_path / "models" / "big.pth"  # pytorch/examples' paper-width network
    torch.save(ExamplesNet().state_dict(), checkpoint)
    for path in (big, checkpoint):
        entry = next(entry for entry in catalog.entries() if entry.file == path)
        with pytest.raises(StylenetError) as refused:
            catalog.load(entry)
        net = modelfile.read_model(path).net
        held = (path.stat().st_size if path == big else
                sum(tensor.numel() * 4 for tensor in (*net.parameters(), *net.buffers()))) / 2**20
        assert str(refused.value) == (f"model file 'models/{path.name}' holds {held:.0f} MB of weights, more than "
                                      f"this server keeps loaded within --memory-limit (0 MB): stylize with "
                                      "stylenet-stylize"), refused.value
    monkeypatch.setattr(catalog_module, "LOADED_MODEL_BYTES", 8 * 2**20)  # the paper's network: 6.4 MB, loaded
    assert catalog.load(next(entry for entry in catalog.entries() if entry.file == checkpoint)).weight_bytes > 6e6
    # a file of several styles holds its styles' single-style networks too
    multi = InferenceModel.from_file(multi_file(tmp_path / "multi.safetensors"), device="cpu", precision="fp32")
    alone = multi.weight_bytes
    one = multi.for_style("a")
    assert multi.weight_bytes == alone + one.weight_bytes > alone
    # and they are let go beyond the bytes, the one just used kept (each style and blend a copy: 9 of a 25 MB
    # file held 255 MB): here room for the file and one copy
    multi_file(tmp_path / "several" / "multi.safetensors")
    catalog = Catalog(tmp_path / "several", {"device": "cpu", "precision": "fp32"})
    monkeypatch.setattr(catalog_module, "LOADED_MODEL_BYTES", alone + one.weight_bytes)
    for entry in catalog.entries():  # each style in turn
        used = catalog.load(entry)
        held = next(iter(catalog._loaded.values()))[1]
        assert held.weight_bytes <= alone + one.weight_bytes and used is held.for_style(entry.choice())


@pytest.mark.parametrize("zipped", [True, False])  # torch.save's format since 1.6, and the legacy one
def test_a_large_pickle_of_something_else_is_neither_listed_nor_loaded_whole(
        tmp_path: Path, zipped: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """VGG's weights (a 528 MB .pth) beside the models: the listing loaded the whole file to learn it is no
    style model, outside the memory plan (and again when it was picked). A pickle larger than the page reads
    (here, of 80 MB, with the limit lowered to 64 MiB) is an unreadable entry, not read; its error shows when
    it is picked."""
    from stylenet.serve import catalog as catalog_module

    folder = tmp_path / "models"
    make_model(folder / "tiny.safetensors", style="tiny")
    torch.save({"features.0.weight": torch.zeros(20_000_000)}, folder / "vgg16.pth",
               _use_new_zipfile_serialization=zipped)
    script = ("import sys; from pathlib import Path; import torch; from stylenet.serve import catalog\n"
              "catalog.LARGEST_PICKLED_MODEL = 64 * 2**20\n"
              "def peak(): return next(int(line.split()[1]) for line in open('/proc/self/status') "
              "if line.startswith('VmHWM'))\n"  # (ru_maxrss keeps the forking parent's)
              "before = peak(); styles = catalog.file_styles(Path(sys.argv[1])); "
              "print(styles, (peak() - before) // 1024)")
    result = subprocess.run([sys.executable, "-c", script, str(folder / "vgg16.pth")], capture_output=True,
                            text=True, timeout=120)
    styles, grown_mb = result.stdout.split()
    assert styles == "None" and int(grown_mb) < 40, result.stdout  # one unreadable entry, not read
    monkeypatch.setattr(catalog_module, "LARGEST_PICKLED_MODEL", 64 * 2**20)
    catalog = catalog_module.Catalog(folder, {"device": "cpu"})
    entry = next(entry for entry in catalog.entries() if entry.label == "vgg16")
    with pytest.raises(StylenetError, match=r"^model file 'models/vgg16.pth' is 76 MB, more than the web page reads "
                                            r"as a pickle \(64 MB; a checkpoint of a style model: export it with "
                                            r"stylenet-export\)$"):
        catalog.load(entry)


@pytest.mark.parametrize(("device", "on_the_gpu"), [("cpu", False), ("mps", False), ("cuda", True)])
def test_on_a_cuda_gpu_the_share_holds_the_photo_and_the_gpu_the_activations(
        server_config: ServeConfig, monkeypatch: pytest.MonkeyPatch, device: str, on_the_gpu: bool) -> None:
    """A worker's share of RAM bounds a CUDA model's photo only; its activations are on the GPU, under the
    model's own budget (one pass or layer by layer, exact), not tiled for the RAM's sake. An Apple GPU's
    memory is the machine's: there the share holds both, as on the CPU."""
    import stylenet.devices
    import stylenet.inference

    monkeypatch.setattr(stylenet.devices, "resolve_device", lambda name: torch.device(device))
    monkeypatch.setattr(stylenet.inference, "default_max_memory", lambda device: 2**40)
    server = StyleServer(dataclasses.replace(server_config, device=device))
    try:
        plan = server.plan
        assert (plan.activation_bytes == 0) == on_the_gpu
        # the models' activation budget: the GPU's own on CUDA, else the plan's (not 1 TiB of a Mac's RAM)
        assert server.catalog.options["max_memory"] == (2**40 if on_the_gpu else plan.activation_bytes)
        pixels = (plan.share - plan.activation_bytes) // 48 // 2
        model = SimpleNamespace(device=torch.device(device), bytes_per_pixel=lambda: 1000.0, max_pixels=lambda: 10**6)
        assert (tile_side(model, pixels, plan) is None) == on_the_gpu
    finally:
        server.server_close()


def test_memory_plan_and_gate() -> None:
    plan = MemoryPlan.make(4 * 2**30, 2, at_rest=2**30, max_pixels=10**9)
    share = (3 * 2**30 - 256 * 2**20) // 2
    assert (plan.share, plan.activation_bytes, plan.max_pixels) == (share, share // 2, (share - share // 2) // 48)
    assert MemoryPlan.make(4 * 2**30, 1, at_rest=2**30, max_pixels=1000).max_pixels == 1000
    with pytest.raises(StylenetError, match=r"--memory-limit 1.00 GiB is too small for --workers 4"):
        MemoryPlan.make(2**30, 4, at_rest=2**29, max_pixels=10**9)
    gate = Gate(workers=1, queue=1)
    gate.admit()
    gate.admit()
    with pytest.raises(Busy, match="busy"):
        gate.admit()
    gate.leave()
    gate.admit()  # room again
    assert gate.admitted == 2


def serving_a_photo(tmp_path: Path, models: Path, size: tuple[int, int]) -> subprocess.Popen[str]:
    """The console script, its temporary folder under ``tmp_path / "tmp"``, once it is stylising a photo
    of ``size`` (W, H): a second or so for 2000x1200 on one thread, several for 4000x3000."""
    Image.open(make_photo(tmp_path / "big.png", size=size)).save(tmp_path / "big.jpg", quality=90)
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp")}
    process = subprocess.Popen([*console_script("stylenet-serve"), str(models), "--port", "0", "--device", "cpu",
                                "--precision", "fp32"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, line + process.stderr.read()
        target = ("127.0.0.1", int(line.split("http://127.0.0.1:")[1].split("/")[0]))
        status, reply = submit(target, tmp_path / "big.jpg", [model_ids(target)["tiny"]])
        assert status == 202, reply
        deadline = time.monotonic() + TIMEOUT_S
        while call_json(target, "GET", f"/api/jobs/{reply['id']}")[1]["state"] != "running":
            assert time.monotonic() < deadline, "the photo never started"
            time.sleep(0.02)
    except BaseException:  # no server left running behind a failed test
        process.kill()
        process.communicate(timeout=TIMEOUT_S)
        raise
    return process


def test_sigterm_while_a_photo_runs_waits_for_it_and_exits_cleanly(tmp_path: Path, models: Path) -> None:
    """A stop in the middle of a photo used to end in ``terminate called without an active exception``
    (exit 134): Python finalised while a worker thread was inside torch's kernels."""
    process = serving_a_photo(tmp_path, models, (2000, 1200))  # done well within the 10 s
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, err
    assert "stopping: waiting up to 10 s for the photos in progress" in out and out.endswith("stopped\n"), out
    assert "terminate" not in err, err
    assert list((tmp_path / "tmp").iterdir()) == []  # its temporary folder deleted


def test_a_second_sigterm_abandons_the_photo_at_once_and_still_cleans_up(tmp_path: Path, models: Path) -> None:
    """Ctrl-C twice, as users do on seeing "waiting": the photo is abandoned, the temporary folder still goes,
    and the process ends without the abort of a normal exit (``os._exit``)."""
    process = serving_a_photo(tmp_path, models, (4000, 3000))
    try:
        process.send_signal(signal.SIGTERM)
        assert "stopping: waiting up to 10 s" in process.stdout.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, err
    assert out.strip() == "stylenet-serve: stopped; 1 photo(s) or frame(s) in progress abandoned", out
    assert "Traceback" not in err and "terminate" not in err, err
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_stopping_gate_waits_for_the_running_computation_and_starts_no_other() -> None:
    """The process may not exit normally while a thread is inside torch's kernels (it aborts): a stop
    waits for the computations running, up to its timeout, and those still waiting never start."""
    gate, release, started = Gate(workers=1, queue=1), threading.Event(), threading.Event()
    outcomes: list[str] = []

    def compute() -> None:
        try:
            with gate.running():
                started.set()
                release.wait(TIMEOUT_S)
                outcomes.append("ran")
        except Stopping:
            outcomes.append("not started")

    first = threading.Thread(target=compute)
    first.start()
    assert started.wait(TIMEOUT_S)
    second = threading.Thread(target=compute)  # waits for the only worker
    second.start()
    assert gate.stop(timeout=0.2) == 1  # the first still runs: 1 left
    assert status_of(Stopping("x")) == 503  # a frame refused while stopping: the server's state, not the request's
    with pytest.raises(Stopping):  # nor is a new request admitted, to be refused once its upload is in
        gate.admit()
    release.set()
    assert gate.stop(timeout=TIMEOUT_S) == 0
    first.join(TIMEOUT_S)
    second.join(TIMEOUT_S)
    assert outcomes == ["ran", "not started"]


def test_a_stopping_gate_waits_until_every_admitted_request_is_answered() -> None:
    """A webcam frame's answer is written after its computation ends, and a waiting request's refusal
    after the stop: a stop waits for each to be counted out, which the handler does once it has
    answered, so the process does not exit in the middle of an answer."""
    gate, stopped = Gate(workers=1, queue=1), threading.Event()
    gate.admit()  # a frame: computed, its answer still being written
    stopper = threading.Thread(target=lambda: (gate.stop(timeout=TIMEOUT_S), stopped.set()))
    stopper.start()
    assert not stopped.wait(0.3)  # still waiting for the answer
    gate.leave()  # answered
    assert stopped.wait(TIMEOUT_S)
    stopper.join(TIMEOUT_S)
    gate = Gate(workers=1, queue=1)
    gate.admit()
    assert gate.stop(timeout=0.2) == 0  # a client that never finishes: the stop still ends at its timeout


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert exposure_warning("127.0.0.1", 7860) is None and exposure_warning("localhost", 7860) is None
    assert exposure_warning("::1", 7860) is None
    warning = exposure_warning("0.0.0.0", 7860)
    assert warning is not None and "0.0.0.0:7860" in warning and "no login" in warning
    assert serve_main([str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "model folder" in capsys.readouterr().err
    (tmp_path / "models").mkdir()
    assert serve_main([str(tmp_path / "models"), "--port", "0", "--memory-limit", "100MB"]) == 2
    assert "--memory-limit" in capsys.readouterr().err
    for bad, named in ((["--workers", "0"], "--workers"), (["--workers", "-1"], "--workers"),
                       (["--port", "70000"], "--port"), (["--max-pixels", "0"], "--max-pixels")):
        assert serve_main([str(tmp_path / "models"), "--port", "0", *bad]) == 2
        assert capsys.readouterr().err.startswith(f"stylenet-serve: error: {named} must be")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert serve_main([str(tmp_path / "models"), "--port", str(taken.getsockname()[1])]) == 2
    assert "(another server on that port? try --port 0)" in capsys.readouterr().err
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # put back after the test
    assert serve_main([str(tmp_path / "models"), "--host", "nosuchhost.invalid", "--port", "0",
                       "--max-pixels", "400000000"]) == 2
    assert Image.MAX_IMAGE_PIXELS == 400_000_000  # Pillow's own limit (179 MP) no longer refuses what ours allows
    err = capsys.readouterr().err  # the name is the problem, not the port
    assert "cannot listen on nosuchhost.invalid:0: " in err and "(is --host a name or address of this machine?)" in err
    with pytest.raises(SystemExit):
        serve_main(["--help"])
    assert "stylenet-serve" in capsys.readouterr().out


def test_ctrl_c_before_the_server_listens_stops_without_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("stylenet.serve.server.Catalog", interrupted)  # Ctrl-C while the models are listed
    (tmp_path / "models").mkdir()
    assert serve_main([str(tmp_path / "models"), "--port", "0"]) == 130
    assert capsys.readouterr().out == "stylenet-serve: stopped\n"


def test_each_style_of_a_multi_style_file_is_one_choice(tmp_path: Path) -> None:
    """A network of several styles (issue 16) lists one entry per style, read from the header alone,
    and each entry stylizes as that style does through the Python API."""
    from stylenet.serve.catalog import Catalog
    from tests.test_multistyle import NAMES, multi_file, multi_net

    folder = tmp_path / "models"
    folder.mkdir()
    multi_file(folder / "multi.safetensors", multi_net(styles=len(NAMES)))
    catalog = Catalog(folder, {"device": "cpu", "precision": "fp32"})
    entries = catalog.entries()
    assert [(entry.label, entry.style) for entry in entries] == [(f"multi / {name}", name) for name in NAMES]
    photo = torch.rand(3, 32, 48)
    model = load_model(folder / "multi.safetensors", device="cpu", precision="fp32")
    outputs = [catalog.load(entry).stylize(photo) for entry in entries]
    for name, output in zip(NAMES, outputs, strict=True):
        torch.testing.assert_close(output, model.stylize(photo, style=name))
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3
    # downloads are named after the file and the style, as stylenet-stylize names them
    from stylenet.inference import Controls
    from stylenet.serve.limits import MemoryPlan
    from stylenet.serve.work import PhotoJob, run_photo_job

    job = PhotoJob("photo.png", tmp_path / "job", entries[:2], Controls())
    job.folder.mkdir()
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(job.upload, format="PNG")
    run_photo_job(job, catalog, MemoryPlan.make(8 << 30, 1, at_rest=0, max_pixels=10**7))
    assert [result.get("download") for result in job.results] == [f"photo_multi_{name}.png" for name in NAMES[:2]]


def test_a_blend_of_two_styles_of_one_file_comes_back_as_stylenet_stylize_blends_them(
        server_config: ServeConfig, tmp_path: Path, one_thread: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The page's blend is a model id of its own, ``ID:WEIGHT;ID:WEIGHT`` over styles of one file of several
    styles: its result is ``stylenet-stylize --blend``'s with the same weights, pixel for pixel, named as the
    CLI names it, for photos and webcam frames alike; a blend that is not one is refused."""
    from tests.test_multistyle import NAMES, multi_file, multi_net

    multi_file(server_config.folder / "multi.safetensors", multi_net(styles=len(NAMES)))
    server = start(server_config)
    try:
        ids = model_ids(address(server))
        blend = f"{ids['multi / a']}:1.4;{ids['multi / b']}:0.6"
        photo = make_photo(tmp_path / "photo.png", size=(40, 30), seed=5)
        status, reply = submit(address(server), photo, [ids["multi / a"], blend], "&strength=0.9")
        assert status == 202, reply
        job = finished(address(server), reply["id"])
        assert [(r["label"], r["download"]) for r in job["results"]] == [
            ("multi / a", "photo_multi_a.png"), ("multi / a1.4+b0.6", "photo_multi_a1.4+b0.6.png")]
        served = [pixels(call(address(server), "GET", result["url"])[1]) for result in job["results"]]
        frame = io.BytesIO()
        Image.open(photo).save(frame, "JPEG", quality=95)
        status, data, kind = call(address(server), "POST", f"/api/frame?model={blend}", frame.getvalue())
        assert status == 200 and kind == "image/jpeg"
        webcam = pixels(data)  # the blend too, through JPEG both ways
        assert np.abs(webcam - served[1]).mean() < np.abs(webcam - served[0]).mean()
        refused = {
            f"{ids['multi / a']}:1;{ids['tiny']}:1": (400, "a blend mixes two or more different styles of one"),
            f"{ids['multi / a']}:1;{ids['multi / a']}:1": (400, "a blend mixes two or more different styles"),
            f"{ids['multi / a']}:1": (400, "a blend mixes two or more different styles"),
            f"{ids['multi / a']}:0;{ids['multi / b']}:0": (400, "the weights must not all be zero"),
            f"{ids['multi / a']}:1e308;{ids['multi / b']}:1e308": (400, "their sum must be a finite number"),
            f"{ids['multi / a']}:-1;{ids['multi / b']}:1": (400, "weight must be a finite number >= 0, got '-1'"),
            f"{ids['multi / a']}:nan;{ids['multi / b']}:1": (400, "weight must be a finite number >= 0, got 'nan'"),
            f"{'0' * 16}:1;{ids['multi / b']}:1": (404, "unknown model id"),
        }
        for spec, (code, message) in refused.items():
            status, reply = submit(address(server), photo, [spec])
            assert status == code and message in reply["error"], (spec, reply)
    finally:
        server.shutdown()
        server.server_close()
    code = stylize_main([str(photo), "-m", str(server_config.folder / "multi.safetensors"), "-o",
                         str(tmp_path / "cli"), "--style", "a", "--blend", "a=1.4,b=0.6", "--strength", "0.9",
                         "--device", "cpu", "--precision", "fp32"])
    assert code == 0, capsys.readouterr().err
    assert np.array_equal(served[0], pixels(tmp_path / "cli" / "photo_a.png"))
    assert np.array_equal(served[1], pixels(tmp_path / "cli" / "photo_a1.4+b0.6.png"))
    assert np.abs(served[0] - served[1]).mean() > 1  # the blend is not the first style


def test_each_style_of_a_multi_style_training_checkpoint_is_one_choice(tmp_path: Path) -> None:
    """A ``stylenet-train`` checkpoint of several styles keeps its names in its pickled hyper-parameters,
    not in a header: it lists one entry per style too, each stylizing as that style of the file."""
    from unittest.mock import patch

    from stylenet.serve.catalog import Catalog, stored_styles
    from tests.test_multistyle import NAMES, multi_net

    folder = tmp_path / "models"
    folder.mkdir()
    net = multi_net(styles=len(NAMES))
    records = [{"name": name, "sha256": f"{k:064d}", "image": f"{name}.jpg"} for k, name in enumerate(NAMES)]
    torch.save({"state_dict": {f"net.{key}": value for key, value in net.state_dict().items()},
                "hyper_parameters": {"model": net.config, "style": {"name": "multi"}, "styles": records},
                "global_step": 3}, folder / "last.ckpt")
    catalog = Catalog(folder, {"device": "cpu", "precision": "fp32"})
    entries = catalog.entries()
    assert [(entry.label, entry.style) for entry in entries] == [(f"last / {name}", name) for name in NAMES]
    photo = torch.rand(3, 24, 32)
    model = load_model(folder / "last.ckpt", device="cpu", precision="fp32")
    torch.testing.assert_close(catalog.load(entries[1]).stylize(photo), model.stylize(photo, style=NAMES[1]))
    # a passing read error is one entry for that listing only, not remembered for the file
    stored_styles.cache_clear()
    with patch("stylenet.serve.catalog.read_model", side_effect=OSError(5, "Input/output error")):
        assert [entry.style for entry in catalog.entries()] == [None]
    assert [entry.style for entry in catalog.entries()] == NAMES
    # another project's checkpoints are one entry each, never a failed listing
    torch.save({"state_dict": {}, "hyper_parameters": {"model": {}, "style": "x"}}, folder / "odd.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"model": "resnet18"}}, folder / "other.ckpt")
    assert [(entry.label, entry.style) for entry in catalog.entries()][-2:] == [("odd", None), ("other", None)]
    with pytest.raises(StylenetError, match=r"^checkpoint '.*odd.ckpt' is not a stylenet-train checkpoint"):
        load_model(folder / "odd.ckpt", device="cpu")
    # a checkpoint renamed .safetensors is still the checkpoint it is, as read_model tells formats by content
    (folder / "renamed.safetensors").write_bytes((folder / "last.ckpt").read_bytes())
    renamed = [entry for entry in catalog.entries() if entry.label.startswith("renamed")]
    assert [(entry.label, entry.style) for entry in renamed] == [(f"renamed / {name}", name) for name in NAMES]
    torch.testing.assert_close(catalog.load(renamed[1]).stylize(photo), model.stylize(photo, style=NAMES[1]))


def test_one_unreadable_model_file_leaves_the_others_usable(server: StyleServer, models: Path,
                                                            tmp_path: Path) -> None:
    """A file whose ``styles`` metadata is not a list of records and one whose weights do not fit its
    network (its header alone reads well) are each one entry, never the one ticked first: the others
    load and run, and picking either gives one line naming it. A file name that is not UTF-8 (as old
    archives unpack on Linux) loads as any other (safetensors' own reader refused it)."""
    from tests.test_multistyle import multi_net

    with open(os.path.join(os.fsencode(models), b"caf\xe9.safetensors"), "wb") as handle:
        handle.write((models / "tiny.safetensors").read_bytes())
    from stylenet.modelfile import save_model

    save_model(models / "odd.safetensors", multi_net(styles=3), {"task": "style", "styles": ["a", "b", "c"]})
    labels = model_ids(address(server))
    assert sorted(labels) == ["caf\ufffd", "odd", "sub/other", "tiny"]
    photo = make_photo(tmp_path / "p.png")
    status, reply = submit(address(server), photo, [labels["caf\ufffd"], labels["tiny"], labels["odd"]])
    assert status == 202
    results = finished(address(server), reply["id"])["results"]
    assert results[0]["width"] == 80
    assert results[0]["download"] == "p_caf\ufffd.png"  # as the label: not a lone surrogate, which JSON cannot hold
    assert results[1]["width"] == 80
    assert results[2]["error"].startswith("'p.png': model file 'models/odd.safetensors'")  # not the server's path
    assert "'styles' metadata must list records with a 'name'" in results[2]["error"]
    assert not any(str(models) in result.get("error", "") for result in results)
    # the page ticks the first style the listing could read; a super-resolution model is no style to offer
    from stylenet.nets import SuperResolutionNet, TransformerNet

    save_model(models / "upscale.safetensors", SuperResolutionNet(factor=4, channels=8, residual_blocks=1),
               {"task": "sr", "factor": 4})
    (models / "a_broken.pth").write_text("not a model")
    save_model(models / "a_misfit.safetensors", TransformerNet(channels=8, residual_blocks=1),
               {"task": "style", "network": {"class": "TransformerNet", "channels": 16, "residual_blocks": 1}})
    status, listing = call_json(address(server), "GET", "/api/models")
    assert [(model["label"], model["readable"]) for model in listing["models"]] == [
        ("a_broken", False), ("a_misfit", False), ("caf\ufffd", True), ("odd", False), ("sub/other", True),
        ("tiny", True)]


def test_a_folder_named_dot_is_named_by_its_own_name(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``stylenet-serve .``: the page is told the folder's name, and an error keeps its dots (the path of
    the folder given as "." once became "", every "." of the message with it)."""
    from stylenet.serve.catalog import Catalog

    (models / "broken.pth").write_text("not a model")
    monkeypatch.chdir(models)
    catalog = Catalog(".", {"device": "cpu", "precision": "fp32"})
    assert catalog.folder.name == "models"
    entry = next(entry for entry in catalog.entries() if entry.label == "broken")
    with pytest.raises(StylenetError, match=r"^model file 'models/broken.pth' is not a model file") as refused:
        catalog.load(entry)
    assert str(models) not in str(refused.value)


def test_a_folder_whose_path_repr_escapes_is_still_named_by_its_name(tmp_path: Path) -> None:
    """Errors quote paths with repr(), which escapes a backslash, a quote or a control character: the
    server's path must not show through because its quoted form differs from its text."""
    from stylenet.serve.catalog import Catalog

    folder = tmp_path / "back\\slash" / "models"
    folder.mkdir(parents=True)
    (folder / "broken.pth").write_text("not a model")
    catalog = Catalog(str(folder), {"device": "cpu", "precision": "fp32"})
    entry = next(entry for entry in catalog.entries() if entry.label == "broken")
    with pytest.raises(StylenetError, match=r"^model file 'models/broken.pth' is not a model file") as refused:
        catalog.load(entry)
    assert "back" not in str(refused.value)


def test_a_replaced_model_file_is_reloaded_even_with_the_old_modification_time(models: Path) -> None:
    from stylenet.serve.catalog import Catalog

    catalog = Catalog(models, {"device": "cpu", "precision": "fp32"})
    entry = next(entry for entry in catalog.entries() if entry.label == "tiny")
    photo = torch.rand(3, 16, 16)
    before = catalog.load(entry).stylize(photo)
    assert catalog.load(entry).stylize(photo).equal(before)  # unchanged: the cached model
    replacement = make_model(models / "new.tmp", style="tiny", seed=7)
    old = entry.file.stat()
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))  # same size, same time: as `cp -p` leaves it
    os.replace(replacement, entry.file)
    assert not catalog.load(entry).stylize(photo).equal(before)


def test_a_stalled_upload_gives_its_place_in_the_queue_back(server_config: ServeConfig, tmp_path: Path,
                                                            one_thread: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that announces a body and stops sending (a dead link) is dropped once the connection
    has been silent for Handler.timeout, and the next photo is accepted."""
    from stylenet.serve.handler import Handler

    monkeypatch.setattr(Handler, "timeout", 0.5)
    server_config.workers, server_config.queue = 1, 0
    server = start(server_config)
    try:
        tiny = model_ids(address(server))["tiny"]
        with socket.create_connection(address(server)) as stalled:
            stalled.sendall(f"POST /api/jobs?models={tiny}&name=a.png HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            "Content-Length: 1000\r\n\r\nabcd".encode())
            deadline = time.monotonic() + TIMEOUT_S
            while server.gate.admitted == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.gate.admitted == 1  # the stalled upload holds the only place
            while server.gate.admitted and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.gate.admitted == 0 and stalled.recv(100) == b""  # dropped, its place given back
        status, reply = submit(address(server), make_photo(tmp_path / "p.png"), [tiny])
        assert status == 202 and finished(address(server), reply["id"])["results"][0]["width"] == 80
        assert list(server.jobs.root.iterdir()) == [server.jobs.root / reply["id"]]  # the stalled job's folder went
    finally:
        server.shutdown()
        server.server_close()


def test_an_upload_that_trickles_in_gives_its_place_in_the_queue_back(server_config: ServeConfig, tmp_path: Path,
                                                                       one_thread: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte now and then never lets a read stall, and held the only place for ever (every other photo got
    503): once the upload has run for Handler.timeout, it must have averaged MIN_UPLOAD_RATE."""
    from stylenet.serve.handler import Handler

    monkeypatch.setattr(Handler, "timeout", 0.5)
    server_config.workers, server_config.queue = 1, 0
    server = start(server_config)
    try:
        tiny = model_ids(address(server))["tiny"]
        # a photo; and a webcam frame refused as a form, whose body was drained at any pace, its place held
        for request in (f"POST /api/jobs?models={tiny}&name=a.png HTTP/1.1\r\n",
                        f"POST /api/frame?model={tiny} HTTP/1.1\r\nContent-Type: multipart/form-data\r\n"):
            with socket.create_connection(address(server)) as trickle:
                trickle.sendall(f"{request}Host: 127.0.0.1\r\nContent-Length: 100000\r\n\r\na".encode())
                deadline = time.monotonic() + TIMEOUT_S
                while server.gate.admitted == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert server.gate.admitted == 1
                sent = 1
                with contextlib.suppress(OSError):  # a byte every 0.1 s, until the server hangs up
                    while server.gate.admitted and time.monotonic() < deadline:
                        trickle.sendall(b"b")
                        sent += 1
                        time.sleep(0.1)
                assert server.gate.admitted == 0 and sent < 40, (request, sent)  # dropped after ~0.5 s, place back
        status, reply = submit(address(server), make_photo(tmp_path / "p.png"), [tiny])
        assert status == 202 and finished(address(server), reply["id"])["results"][0]["width"] == 80
    finally:
        server.shutdown()
        server.server_close()


def test_a_temporary_folder_that_went_away_is_one_line_and_gives_every_place_back(
        server_config: ServeConfig, tmp_path: Path, one_thread: None) -> None:
    """A /tmp cleaner (or a full disk) that took the server's folder: each photo and frame was a 500 with a
    traceback naming the server's path, and each photo kept its place in the queue for good, until every
    later request was "busy". One line each; the places are given back, and the server works again once
    the folder is back."""
    server_config.workers, server_config.queue = 1, 1
    server = start(server_config)
    root = server.jobs.root
    try:
        tiny = model_ids(address(server))["tiny"]
        photo = make_photo(tmp_path / "p.png")
        root.rename(root.with_name(root.name + ".away"))
        replies = [submit(address(server), photo, [tiny]) for _ in range(3)]
        replies.append(call_json(address(server), "POST", f"/api/frame?model={tiny}", photo.read_bytes()))
        for status, reply in replies:
            assert status == 507 and str(root) not in reply["error"], reply
            assert reply["error"].startswith("the server cannot keep ")
            assert reply["error"].endswith("in its temporary folder (No such file or directory)")
        deadline = time.monotonic() + TIMEOUT_S  # (a frame's place is given back just after its answer)
        while server.gate.admitted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.gate.admitted == 0
        root.with_name(root.name + ".away").rename(root)
        status, reply = submit(address(server), photo, [tiny])
        assert status == 202 and finished(address(server), reply["id"])["results"][0]["width"] == 80
    finally:
        server.shutdown()
        server.server_close()


def test_a_content_length_of_unicode_digits_gets_a_json_refusal(server: StyleServer) -> None:
    tiny = model_ids(address(server))["tiny"]
    with socket.create_connection(address(server)) as connection:
        # '\xb2' is '²' in the ISO-8859-1 that HTTP headers are read as: str.isdigit() says yes, int() no
        connection.sendall(f"POST /api/jobs?models={tiny}&name=a.png HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
                           + b"Content-Length: \xb2\r\n\r\nab")
        reply = connection.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.0 411 ") and b'{"error": "upload of \'a.png\' has no Content-Length"}' in reply


def test_a_form_upload_is_refused_naming_what_to_send(server: StyleServer, tmp_path: Path) -> None:
    """``curl -F file=@p.png`` sends a multipart form around the photo: refused in one line before any
    work (415), where its bytes used to be taken for an image and fail to decode."""
    tiny = model_ids(address(server))["tiny"]
    photo = make_photo(tmp_path / "p.png").read_bytes()
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.png\"\r\n\r\n" + photo
            + b"\r\n--xyz--\r\n")
    status, data, _ = call(address(server), "POST", f"/api/jobs?models={tiny}&name=p.png", body,
                           {"Content-Type": "multipart/form-data; boundary=xyz"})
    assert status == 415 and json.loads(data) == {"error": "upload of 'p.png' is a form (multipart/form-data); send "
                                                           "the photo's own bytes as the body, as the page does "
                                                           "(curl -H 'Content-Type: image/jpeg' --data-binary "
                                                           "@photo.jpg)"}
    status, data, _ = call(address(server), "POST", f"/api/jobs?models={tiny}&name=p.png", photo,
                           {"Content-Type": "image/png"})
    assert status == 202, data
    assert finished(address(server), json.loads(data)["id"])["results"][0]["width"] == 80


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this system")
@pytest.mark.parametrize("nohup", [False, True])
def test_closing_the_terminal_stops_the_server_and_deletes_its_folder(tmp_path: Path, models: Path,
                                                                      nohup: bool) -> None:
    """SIGHUP stops it as SIGTERM does, unless it was started to ignore it (``nohup``)."""
    (tmp_path / "tmp").mkdir()
    process = subprocess.Popen([*console_script("stylenet-serve"), str(models), "--port", "0", "--device", "cpu"],
                               env={**os.environ, "TMPDIR": str(tmp_path / "tmp")}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=(lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if nohup else None)
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, line + process.stderr.read()
        target = ("127.0.0.1", int(line.split("http://127.0.0.1:")[1].split("/")[0]))
        status, reply = submit(target, make_photo(tmp_path / "private.png"), [model_ids(target)["tiny"]])
        assert status == 202 and finished(target, reply["id"])["results"][0]["width"] == 80
        assert len(list((tmp_path / "tmp").rglob("*.png"))) == 1  # the result, in the server's folder
        if nohup:
            process.send_signal(signal.SIGHUP)
            time.sleep(1.0)  # serve_forever polls every 0.5 s: a handled SIGHUP has stopped it by now
            assert model_ids(target) and process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM if nohup else signal.SIGHUP)
        out, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0 and out.endswith("stylenet-serve: stopped\n"), err
    assert list((tmp_path / "tmp").iterdir()) == []


def test_results_are_sent_in_pieces_that_a_slow_client_takes_within_the_stall_limit(tmp_path: Path) -> None:
    """Python's socket timeout bounds each whole ``sendall``: a result written in one piece would cut a
    slow but steady download (under 33 KB/s for 1 MB) at Handler.timeout."""
    from stylenet.serve import handler as handler_module

    class Recorder(io.BytesIO):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def write(self, data: Any) -> int:
            self.sizes.append(len(data))
            return super().write(data)

    result = tmp_path / "0.png"
    result.write_bytes(os.urandom(5 * handler_module.SEND_CHUNK + 123))
    handler = handler_module.Handler.__new__(handler_module.Handler)
    handler.wfile, handler._send_headers, handler.command = Recorder(), lambda *args, **kwargs: None, "GET"
    handler._send_file(result, "image/png")
    handler._send(200, result.read_bytes(), "image/png")
    assert handler.wfile.getvalue() == 2 * result.read_bytes()
    assert max(handler.wfile.sizes) <= handler_module.SEND_CHUNK == 64 << 10
