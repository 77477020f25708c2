"""One-line user-facing errors: :class:`StylenetError`, and how any exception becomes one line.

A batch job reports a broken file on one line and carries on; a CLI prints ``str(err)`` instead of
a traceback. So every message stylenet shows is one line, made here.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

from stylenet.version import __version__


class StylenetError(Exception):
    """A user-facing error: ``str(err)`` is one line that names the offending file or setting."""


class EveryRankError(StylenetError):
    """Raised alike, with the same line, by every process of a DDP run (decided together): the first
    process alone reports it, where each would print the same line."""


def check_seed(value: object, setting: str) -> int:
    """``value`` as a seed, or one line naming ``setting``: a whole number from 0 to 2**32 - 1, what
    NumPy's generator takes (``pl.seed_everything`` seeds it), so every seed of stylenet has one range."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise StylenetError(f"{setting} must be a whole number from 0 to 2**32 - 1, got {value!r}")
    return value


def check_format_version(version: object, supported: int, subject: str, made_by: object = None) -> None:
    """Refuse, as one line naming ``subject``, a file (a model file, a shard manifest) of a format version
    this stylenet cannot read: one that a newer stylenet (``made_by``: its version, when recorded) wrote, which
    read as this version would be misread silently, and rewritten as this version would lose what the newer
    one recorded; or one whose version is no whole number from 1."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise StylenetError(f"{subject} has no valid format version (got {version!r})")
    if version > supported:
        by = f"stylenet {made_by}, " if isinstance(made_by, str) and made_by else ""
        raise StylenetError(f"{subject} was made by a newer stylenet ({by}format version {version}); stylenet "
                            f"{__version__} reads format version {supported} and older: upgrade stylenet to read it")


def one_line(text: str) -> str:
    """``text`` with every run of whitespace, newlines included, as one space: logs, progress bars
    and CSVs get one line whatever a library put into its message."""
    return " ".join(str(text).split())


def first_line(err: BaseException) -> str:
    """An exception's first line (torch's messages run to paragraphs of advice), or its type's name
    when it has no message."""
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


#: :func:`load_failure`'s reason for a ``torch.save`` file cut short or damaged.
TRUNCATED_ARCHIVE = "truncated or damaged: torch.save's zip archive in it cannot be read"


def load_failure(err: BaseException, path: str | Path) -> str:
    """Why ``torch.load`` refused ``path``, as one line. A file that is no PyTorch file at all (neither
    ``torch.save``'s zip archive nor a legacy pickle) meets its weights-only unpickler as whatever its
    bytes happen to trip: a bare ``KeyError('101')`` for a text file's ``e``, an ``IndexError``, ...
    A pickled module (``torch.save(model)``) is refused by that unpickler in paragraphs of advice."""
    if refused_pickle(err):
        reason = unpickler_reason(err).rstrip(".")
        return f"it is a pickle of more than tensors ({reason}), and unpickling it could run code"
    try:
        with open(path, "rb") as file:
            start = file.read(2)
    except OSError:
        return first_line(err)
    if start[:2] == b"PK" and (isinstance(err, OSError) or "zip archive" in str(err)):
        return TRUNCATED_ARCHIVE  # not "[Errno 22] Invalid argument", or miniz's paragraph
    return first_line(err) if start[:2] == b"PK" or start[:1] == b"\x80" else "not a PyTorch file"


def refused_pickle(err: BaseException) -> bool:
    """Whether ``torch.load(weights_only=True)`` refused a real pickle for holding more than tensors and
    plain containers (a class, a function), rather than bytes that are no pickle at all."""
    return (isinstance(err, pickle.UnpicklingError) and "weights only load failed" in str(err).lower()
            and "unsupported operand" not in unpickler_reason(err).lower())


def unpickler_reason(err: BaseException) -> str:
    """torch's reason for a refused load ("unsupported GLOBAL posix.system ...", "Unsupported operand
    110" for bytes that are no pickle at all) without the paragraphs of advice around it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch sets its advice in bold for terminals
    stated = re.search(r"WeightsUnpickler error: (.+?)(?: Please use `torch\.serialization|\n|$)", text)
    if stated:  # torch 2.6 and later put it inside the advice: "Unsupported global: GLOBAL __main__.Net was not ..."
        return stated[1].strip()
    paragraphs = [" ".join(part.split()) for part in text.split("\n\n") if part.strip()]
    reasons = [part for part in paragraphs[1:-1] if not part.startswith("Please file an issue")]
    return reasons[0] if reasons else first_line(Exception(text))


def describe(err: Exception, subject: object) -> str:
    """One line for ``err`` that names ``subject`` (the input, output or model it happened to).

    A :class:`StylenetError` already says what went wrong (and usually where: ``'file'`` quoted),
    so its message is kept, prefixed with ``subject`` unless it names it; anything else (a decoder
    bug, a RuntimeError from an odd size, an OSError) is unexpected, so its type is kept too, for
    the bug report; multi-line messages (torch's) are cut to their first line.
    """
    message = first_line(err)
    if isinstance(err, StylenetError):
        return message if repr(str(subject)) in message else f"{subject}: {message}"
    return f"{subject}: {type(err).__name__}: {message}" if str(err).strip() else f"{subject}: {message}"


def cannot_write(err: OSError, output: str | Path) -> str:
    """One line for an output the disk refused after every check passed (full, read-only, a quota): the
    file ``err`` names (:func:`stylenet.atomic.atomic_write` names the output, not its temporary file),
    else ``output``, and the system's reason, instead of the traceback of whichever writer met it."""
    return f"cannot write {str(err.filename or output)!r}: {err.strerror or first_line(err)}"


def first_rank() -> bool:
    """Whether this process is its run's first (rank 0, as Lightning numbers DDP processes), or its only
    one: what is said or written once per run is said by it."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0
