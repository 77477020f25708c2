"""Atomic file writes: a crash leaves the old file or the new one, never half of one.

Model files, checkpoints, prepared shards, their manifest and output images are all written here:
into a hidden temporary file beside the target (the same filesystem, so the rename is atomic),
flushed to disk, then renamed over the target. Listings skip hidden files, so nothing mistakes what
a kill during a write leaves behind for a finished file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: The longest file name (bytes) of the file systems this runs on (NAME_MAX of ext4, XFS, APFS, NTFS).
NAME_MAX = 255


def temporary_path(path: Path) -> Path:
    """A fresh hidden name beside ``path`` that keeps its extension (some writers, such as ONNX's,
    choose the format from it): ``out.png`` -> ``.out.<random>.tmp.png``, the stem shortened where
    the name would pass :data:`NAME_MAX` (a file name the system takes may leave no room for more)."""
    tail, stem, suffix = f".{secrets.token_hex(6)}.tmp", path.stem, path.suffix

    def name() -> str:
        return f".{stem}{tail}{suffix}"

    while stem and len(name().encode(errors="surrogateescape")) > NAME_MAX:
        stem = stem[:-1]  # whole characters: the name stays as valid (UTF-8 or not) as the original
    if len(name().encode(errors="surrogateescape")) > NAME_MAX:
        suffix = ""  # a "suffix" this long is part of a dotted name, not a format's extension
    return path.with_name(name())


#: what :func:`temporary_path` names: ``.<stem>.<12 hex digits>.tmp<suffix>``
TEMPORARY_NAME = re.compile(r"\..*\.[0-9a-f]{12}\.tmp(\.[^.]*)?")


def remove_cut_writes(folder: Path) -> list[Path]:
    """Remove the temporary files of writes a kill cut short in ``folder`` (a checkpoint's are its full
    size); only for a folder that nothing else writes in now (a run holding its lock)."""
    removed = [path for path in folder.glob(".*.tmp*") if TEMPORARY_NAME.fullmatch(path.name) and path.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def unwritable(path: str | Path) -> str | None:
    """Why no file can be written at ``path`` (its name is too long, it is a folder, one of its parents
    is a file, or the nearest existing folder is not writable), else None: checked before any work, so that
    ``-o photo.png/out.png`` fails at once rather than after the compute."""
    path = Path(path)
    length = len(path.name.encode(errors="surrogateescape"))
    if length > NAME_MAX:
        return f"its name is {length} bytes, longer than file systems allow ({NAME_MAX})"
    try:
        if path.is_dir():
            return "it is a folder"
        for parent in path.parents:  # nearest first: the first that exists decides
            if parent.exists():
                if not parent.is_dir():
                    return f"{str(parent)!r} is a file, not a folder"
                return None if os.access(parent, os.W_OK | os.X_OK) else f"no permission to write in {str(parent)!r}"
    except OSError as err:  # a name too long for the filesystem, ...: pathlib re-raises what it does not expect
        return err.strerror or type(err).__name__
    return None


def atomic_write(path: str | Path, write: Callable[[Path], Any], *, overwrite: bool = True) -> Path:
    """Run ``write(tmp)``, fsync ``tmp``, then move it to ``path``; returns ``path``.

    Parent folders are created. The temporary file is removed on any error, KeyboardInterrupt
    included. ``overwrite=False`` raises :class:`FileExistsError` if ``path`` exists, without a
    check-then-replace race (the file is linked into place, which fails on an existing name). An
    :class:`OSError` while writing names ``path``, not its temporary file (:func:`naming_output`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with naming_output(path, tmp):
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
            write(tmp)
            _fsync_file(tmp)
        _publish(tmp, path, overwrite)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    _fsync_folder(path.parent)
    return path


def publish_together(writes: list[tuple[Path, Callable[[Path], Any]]]) -> None:
    """Run every ``write(path)`` into a temporary file beside its path (``write`` may itself write
    atomically, as :func:`stylenet.modelfile.save_model` does), then move them all into place:
    a failure in any of them (a full disk, a missing optional package) leaves none of the outputs
    changed. An :class:`OSError` names the output, not its temporary file."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, write in writes:
            staged.append((temporary_path(path), path))
            with naming_output(path, staged[-1][0]):
                write(staged[-1][0])
                _fsync_file(staged[-1][0])
        for tmp, path in staged:
            _publish(tmp, path, overwrite=True)
            _fsync_folder(path.parent)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def naming_output(path: Path, tmp: Path) -> Iterator[None]:
    """Within: an :class:`OSError` met while ``tmp`` is written for ``path`` (a full disk, a quota) names
    ``path``, the output the user asked for, instead of the hidden temporary file or no file at all (what a
    ``write()`` that finds the disk full raises). One that names another file (an input a writer reads) keeps
    it; one without an errno (numpy's "N requested and M written") keeps its message as it is, which a name
    would turn into "[Errno None] None: ..."."""
    try:
        yield
    except OSError as err:
        # FFmpeg names the absolute path it was given (stylenet.video.io.ffmpeg_path), ``tmp`` may be relative
        named = err.filename
        if err.errno is not None and (named is None or (isinstance(named, str)
                                                        and os.path.abspath(named) == os.path.abspath(tmp))):
            err.filename = str(path)
        raise


#: what a write fails with when the disk, a quota or a file size limit has no room left
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def no_room_as_error() -> Iterator[None]:
    """Within: a write that finds no room (:data:`NO_ROOM`) is one :class:`StylenetError` line naming the
    file, not a traceback; the atomic writes leave every file written before it whole."""
    from stylenet.errors import StylenetError

    try:
        yield
    except OSError as err:
        if err.errno not in NO_ROOM:
            raise
        raise StylenetError(f"cannot write {err.filename or 'a file'}: {err.strerror}; the files written before "
                            "it are whole (free some space, then run the same command again)") from None


def write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file (a table, a JSON summary). A file name that is not
    UTF-8 (Python holds its bytes as lone surrogates) is written as a ``\\udcXX`` escape, not an error."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="backslashreplace"))


def _publish(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move the finished temporary file into place, atomically."""
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # fails if the target exists, so nothing that appeared meanwhile is clobbered
    except FileExistsError:
        raise FileExistsError(f"{str(target)!r} exists and overwrite=False") from None
    except OSError:  # a filesystem without hard links: check, then replace
        if target.exists():
            raise FileExistsError(f"{str(target)!r} exists and overwrite=False") from None
        os.replace(tmp, target)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself (POSIX); best effort where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
