"""Bounded hand-offs between threads: decoding, the network and encoding overlap, and memory stays
flat however long the video.

A video runs as three stages: a reader thread demuxes and decodes, the caller's thread runs the
network (torch releases the GIL inside its kernels), a writer thread encodes and muxes. Each hand-off
is a :class:`queue.Queue` of at most ``depth`` items, so a stage that runs ahead blocks instead of
buffering the clip: at most ``2 * depth`` + a few frames are alive at any time, whatever the length.
An exception in a background stage reaches the caller's thread, after the items produced before it
(the frames decoded before a truncation are still stylised and written).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()  # end of stream
#: how often a blocked put/get looks at the stop flag
_POLL_S = 0.1


class _Failure:
    """An exception raised in a background stage, carried through the queue to the caller."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetch(Iterator[T], Generic[T]):
    """``source`` iterated in a background thread, at most ``depth`` items ahead of its consumer.

    ``high_water`` is the most items that ever waited in the queue (tests check the bound). The
    thread's exception is raised by ``next`` once the items before it are consumed; ``close``
    stops the thread (it finishes the item in hand) and drops what is queued."""

    def __init__(self, source: Iterable[T], depth: int, name: str = "stylenet-prefetch") -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth, self.high_water = depth, 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
            except queue.Full:
                continue
            self.high_water = max(self.high_water, self._queue.qsize())
            return True
        return False

    def _run(self, source: Iterable[T]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
        except BaseException as err:  # handed to the consumer, which decides
            self._put(_Failure(err))
            return
        self._put(_DONE)

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.error
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the thread and wait for it (at most the item it is producing)."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=_POLL_S)
        self._finished = True


class Sink(Generic[T]):
    """``consume(item)`` for every :meth:`put` item, in order, in a background thread, with at most
    ``depth`` items waiting. The consumer's exception is raised by the next :meth:`put` and by
    :meth:`close`, so the producer stops instead of computing for a dead writer."""

    def __init__(self, consume: Callable[[T], None], depth: int, name: str = "stylenet-sink") -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(consume,), name=name, daemon=True)
        self._thread.start()

    def _run(self, consume: Callable[[T], None]) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is None:
                try:
                    consume(item)  # type: ignore[arg-type]
                except BaseException as err:  # handed to the producer by put/close
                    self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: T) -> None:
        """Queue ``item`` (blocks while ``depth`` items wait); raises the consumer's exception."""
        self._raise()
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                self._raise()
        self._raise()

    def close(self) -> None:
        """Wait until every queued item is consumed; raises the consumer's exception, if any."""
        while self._thread.is_alive():
            try:
                self._queue.put(_DONE, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._raise()
