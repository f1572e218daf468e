"""Plain-text tables for the CLI: left-aligned columns under upper-case headers, as `ollama
ls` and `kubectl get` print them (``--json`` is the form for scripts)."""

from __future__ import annotations

from collections.abc import Sequence

GAP = "   "
"""Between two columns: wide enough to tell columns apart when a cell holds spaces."""


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The table as lines ending in a newline; each column as wide as its widest cell.

    A row shorter than the headers is padded with empty cells; trailing spaces are cut, so a
    blank last cell leaves no spaces at the end of its line."""
    width = len(headers)
    cells = [list(headers)] + [[*row, *[""] * (width - len(row))][:width] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(width)]
    return "".join(
        GAP.join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in cells
    )


def duration(seconds: float) -> str:
    """A short human duration: ``0s``, ``90s``, ``5m``, ``90m``, ``2d`` (whole units only,
    so no precision is lost: 90 s stays ``90s`` rather than ``1.5m``)."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"
