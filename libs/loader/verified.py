"""Which tmpfs partitions need no hashing at load: those this process verified before, and
those a verifier sealed (seal.py), as long as the file has not changed since."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from .format import PartitionInfo
from .seal import FileKey, file_key, read_seal

__all__ = ["FileKey", "file_key", "is_verified", "remember", "trusted"]

_MAX_ENTRIES = 4096
_lock = threading.Lock()
_verified: OrderedDict[FileKey, None] = OrderedDict()


def is_verified(key: FileKey | None) -> bool:
    """Whether a file with exactly this key was verified by this process."""
    if key is None:
        return False
    with _lock:
        if key in _verified:
            _verified.move_to_end(key)
            return True
    return False


def remember(key: FileKey | None) -> None:
    """Record a successful verification (least recently used entries are forgotten)."""
    if key is None:
        return
    with _lock:
        _verified[key] = None
        _verified.move_to_end(key)
        while len(_verified) > _MAX_ENTRIES:
            _verified.popitem(last=False)


def trusted(
    directory: Path, partitions: Sequence[PartitionInfo], keys: Sequence[FileKey | None]
) -> list[bool]:
    """Per partition: whether its current key (None: not eligible) was verified by this
    process or is the one the directory's seal vouches for."""
    seal = read_seal(directory) if any(k is not None for k in keys) else {}
    return [
        k is not None and (is_verified(k) or seal.get(p.file) == k)
        for p, k in zip(partitions, keys, strict=True)
    ]
