"""``stylenet-serve``: a web page to try the styles of a folder of model files on photos and on a webcam.

    stylenet-serve models/ --port 7860

then open http://127.0.0.1:7860/. The page uploads or takes dropped photos, lets you pick styles,
strength and colour preservation, shows photo | result side by side with a full-size download, and
stylizes webcam frames as fast as the server allows. It listens on 127.0.0.1 only unless --host says
otherwise (there is no login: anyone who can reach the address can use it). Uploads get every check
that stylenet-stylize's inputs get; at most --workers photos are processed at once and --queue more
wait, further requests are refused (HTTP 503, which the page retries); the server's memory stays
under --memory-limit. Everything it receives and makes lives in a temporary folder, deleted when it
stops (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from stylenet.cli import allow_pixels
from stylenet.cli.stylize import parse_bytes
from stylenet.errors import StylenetError
from stylenet.image import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from stylenet.serve import StyleServer

PROG = "stylenet-serve"
#: Seconds a stop waits for the photos or frames being processed to finish.
STOP_GRACE_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    """The options of ``stylenet-serve``."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="folder of model files (.safetensors, stylenet-train .ckpt, "
                                       "pytorch/examples .pth/.model), searched recursively")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 exposes "
                             "the page to the network, with a warning)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s; 0: any free port)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="as stylenet-stylize's (default: auto)")
    parser.add_argument("--workers", type=int, default=1,
                        help="photos or frames processed at once (default: %(default)s)")
    parser.add_argument("--queue", type=int, default=8,
                        help="requests that may wait for a worker; more are refused with HTTP 503 "
                             "(default: %(default)s)")
    parser.add_argument("--memory-limit", type=parse_bytes, default=parse_bytes("4GB"),
                        help="resident memory the whole server may use, e.g. 4GB (default); it bounds the "
                             "largest photo accepted")
    parser.add_argument("--max-memory", type=parse_bytes,
                        help="memory one forward pass may use (as stylenet-stylize's); larger photos run layer "
                             "by layer or in tiles (default: on the CPU, half of each worker's share of "
                             "--memory-limit; on a GPU, each worker's share of stylenet-stylize's default)")
    parser.add_argument("--max-upload", type=parse_bytes, default=parse_bytes("50MB"),
                        help="largest upload in bytes (default: 50MB)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="largest photo in pixels (default: %(default)s; --memory-limit may lower it)")
    return parser


def exposure_warning(host: str, port: int) -> str | None:
    """The warning for a --host other than this machine's loopback, else None."""
    from stylenet.serve import is_loopback

    if is_loopback(host):
        return None
    return (f"{PROG}: warning: listening on {host}:{port}: anyone who can reach this machine can use the page, "
            "its models and its compute; there is no login. Use the default --host 127.0.0.1 to keep it local.")


def announce(server: StyleServer, folder: str, host: str) -> None:
    """The warnings (an exposed address, no models yet) and the line with the page's address."""
    warning = exposure_warning(host, server.server_address[1])
    if warning:
        print(warning, file=sys.stderr)
    from stylenet.serve.catalog import model_files

    entries = server.catalog.entries()
    # files listed (picking one says why) but with no style to count, named as the page names them
    unread = {entry.file: entry.shown or entry.file.name for entry in entries if not entry.readable}
    if unread:
        names = sorted(unread.values())
        print(f"{PROG}: warning: {len(unread)} model file(s) cannot be read: {', '.join(names[:5])}"
              + (" ..." if len(names) > 5 else ""), file=sys.stderr)
    count = len([entry for entry in entries if entry.readable])
    if not count and not unread:
        others = len(model_files(server.catalog.folder))  # super-resolution models, which are not offered
        what = (f"no style models among the {others} model files in {folder!r} (super-resolution models are not "
                "offered)" if others else f"no model files in {folder!r} yet")
        print(f"{PROG}: warning: {what}; the page lists style models once they are there", file=sys.stderr)
    files = len({entry.file for entry in entries if entry.readable})  # a file of several styles lists each
    print(f"{PROG}: {count} style(s) from {files} model file(s) in {folder!r} on {server.url} (Ctrl-C stops)",
          flush=True)


def listen_hint(err: OSError) -> str:
    """What to try when the server cannot listen, by the reason (`` (...)``, or nothing)."""
    if isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL:  # a name or address not of this machine
        return " (is --host a name or address of this machine?)"
    if err.errno == errno.EADDRINUSE:
        return " (another server on that port? try --port 0)"
    if err.errno == errno.EACCES:
        return " (ports below 1024 need privileges: try --port 0)"
    return ""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Serve until Ctrl-C, SIGTERM or SIGHUP (its terminal closed); returns 0 after a clean stop, 2
    when it cannot start, 130 when Ctrl-C comes before it listens."""
    args = build_parser().parse_args(argv)
    allow_pixels(args.max_pixels)
    try:
        from stylenet.fastpath import share_one_heap
        from stylenet.serve import ServeConfig, StyleServer

        share_one_heap()  # before any thread starts: --memory-limit plans for one process, not a heap per thread

        server = StyleServer(ServeConfig(
            Path(args.folder), host=args.host, port=args.port, device=args.device, precision=args.precision,
            workers=args.workers, queue=args.queue, memory_limit=args.memory_limit, max_memory=args.max_memory,
            max_upload=args.max_upload, max_pixels=args.max_pixels))
    except StylenetError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{PROG}: error: cannot listen on {args.host}:{args.port}: {err.strerror or err}{listen_hint(err)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while torch loads or the models are listed: nothing to close yet
        print(f"{PROG}: stopped", flush=True)
        return 130
    failure: BaseException | None = None
    try:
        for name in ("SIGTERM", "SIGHUP"):  # from here on these stop cleanly, as Ctrl-C does; not a SIGHUP
            number = getattr(signal, name, None)  # that nohup ignores (and Windows has none)
            if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
                signal.signal(number, _stop)
        if "TORCHINDUCTOR_CACHE_DIR" not in os.environ and server.temp is not None:
            # torch makes its compiler cache folder (empty here: nothing is compiled) in the system's
            # temporary folder the first time a network runs; in ours it goes when the server does
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(server.temp / "torch")
        announce(server, args.folder, args.host)
        server.serve_forever()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM / SIGHUP through _stop: the way to end it
        pass
    except BaseException as err:  # a bug, or a closed terminal under announce(): still cleaned up, then raised
        failure = err
    running = stop_serving(server)
    if running:  # still inside torch's kernels: exiting through Python's finalisation would abort
        if failure is not None:
            traceback.print_exception(failure)
        say(f"{PROG}: stopped; {running} photo(s) or frame(s) in progress abandoned")
        os._exit(0 if failure is None else 1)
    if failure is not None:
        raise failure
    say(f"{PROG}: stopped")
    return 0


def say(line: str) -> None:
    """A status line that cannot stop the cleanup: stdout may be a pipe whose reader is gone (``| tee``,
    which Ctrl-C ends too) or a terminal that closed (SIGHUP)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, flush=True)
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()


def stop_serving(server: StyleServer) -> int:
    """After ``serve_forever`` has returned: stop taking connections, wait up to :data:`STOP_GRACE_S`
    for the photos and frames being processed (a second Ctrl-C or SIGTERM abandons them at once; a
    SIGHUP, which a closing terminal may repeat, is ignored meanwhile), delete the temporary folder;
    returns how many computations still run. The signal handlers are put back as they were."""
    give_up, previous = threading.Event(), {}
    if threading.current_thread() is threading.main_thread():  # only there can handlers be set
        for name, handler in (("SIGINT", lambda signum, frame: give_up.set()),
                              ("SIGTERM", lambda signum, frame: give_up.set()), ("SIGHUP", signal.SIG_IGN)):
            number = getattr(signal, name, None)
            if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
                previous[number] = signal.signal(number, handler)
    try:
        server.socket.close()  # new connections are refused, not left waiting
        if server.gate.admitted:
            say(f"{PROG}: stopping: waiting up to {STOP_GRACE_S:g} s for the photos in progress (Ctrl-C again: "
                "abandon them)")
        return server.gate.stop(STOP_GRACE_S, give_up)
    finally:
        server.server_close()
        for number, handler in previous.items():
            signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(main())
