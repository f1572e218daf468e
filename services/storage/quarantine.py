"""Checking a reader's claim that a tier copy is damaged, before the copy is removed: the chunk
it names is hashed again (with direct I/O where the file system allows, so a disk copy is read
from the disk, not from a page cache that may differ), or, without one, the whole copy is
checked. Blocking: callers run this in the I/O pool."""

from __future__ import annotations

import os
from pathlib import Path

from libs.loader.format import PartitionInfo
from libs.protocol.errors import CorruptError

from .checkpoint import quick_check
from .transfer import Meter, open_direct, verify_exact


def confirm_damage(directory: Path, file: str, offset: int | None, meter: Meter) -> str | None:
    """Why the checkpoint copy in ``directory`` is damaged, or None if it checks intact.

    ``file`` and ``offset`` are where the reader found the damage: that chunk alone is checked
    when they name one of a partition; otherwise every partition is.
    """
    try:
        ckpt = quick_check(directory)  # the index parses and every file has its size
    except CorruptError as exc:
        return exc.message
    chunk = ckpt.chunk_size
    named = next((p for p in ckpt.partitions if p.file == file), None)
    if named is not None and offset is not None and offset < named.size:
        first = offset // chunk
        targets = [(named, first, first + 1)]
    else:
        targets = [(p, 0, len(p.chunks)) for p in ckpt.partitions]
    for part, first, end in targets:
        try:
            _verify_chunks(directory / part.file, part, chunk, first, end, meter)
        except (CorruptError, OSError) as exc:
            return exc.message if isinstance(exc, CorruptError) else f"{part.file}: {exc}"
    return None


def _verify_chunks(
    path: Path, part: PartitionInfo, chunk_size: int, first: int, end: int, meter: Meter
) -> None:
    start = first * chunk_size
    length = min(end * chunk_size, part.size) - start
    fd, _ = open_direct(path)
    with open(fd, "rb", buffering=0) as f:
        os.lseek(fd, start, os.SEEK_SET)
        verify_exact(
            f,
            length,
            meter,
            what=f"{part.file} (from byte {start})",
            chunk_size=chunk_size,
            hashes=part.chunks[first:end],
        )
