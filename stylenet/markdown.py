"""Rows of the markdown tables the reports write.

Their cells hold names users chose (photo files, model files, run folders, overrides), and a ``|`` in
one would split its cell in two and shift every column after it; a cell's ``|`` is escaped, its line
breaks become spaces (a cell cannot span lines).
"""

from __future__ import annotations

from collections.abc import Iterable


def table_row(cells: Iterable[object]) -> str:
    """``| a | b |`` for cells ``a``, ``b``, each written with ``str`` and escaped."""
    escaped = (" ".join(str(cell).replace("|", r"\|").splitlines()) for cell in cells)
    return "| " + " | ".join(escaped) + " |"
