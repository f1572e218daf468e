"""Where a checkpoint's bytes live now: tmpfs (DRAM tier), the page cache, or only on disk."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import _native

__all__ = ["Residency", "probe_files"]

TMPFS_MAGIC = 0x01021994
# A file this resident counts as "in memory": reading a few stray pages from disk is cheaper
# than skipping the page cache with O_DIRECT for the rest.
_RESIDENT_FRACTION = 0.98


@dataclass(frozen=True)
class Residency:
    """Per-file memory residency and the tier the whole set comes from."""

    in_memory: tuple[bool, ...]
    on_tmpfs: tuple[bool, ...]
    tier: str  # "tmpfs" | "page_cache" | "disk"


def probe_files(paths: Sequence[Path]) -> Residency:
    """Classify files: on tmpfs, (almost) fully in the page cache, or not."""
    in_memory: list[bool] = []
    on: list[bool] = []
    for p in paths:
        try:
            on_tmpfs = _native.fs_magic(str(p)) == TMPFS_MAGIC
            resident = on_tmpfs or _native.is_resident(str(p), _RESIDENT_FRACTION)
        except OSError:
            # Unreadable or unmappable: call it cold; the read reports the real error.
            on_tmpfs = resident = False
        on.append(on_tmpfs)
        in_memory.append(resident)
    if paths and all(on):
        tier = "tmpfs"
    elif all(in_memory):
        tier = "page_cache"
    else:
        tier = "disk"
    return Residency(tuple(in_memory), tuple(on), tier)
