"""Which tmpfs partitions this process has verified: DRAM-tier reloads need not hash them again.

Checksums guard against corruption in storage and transfer. A partition in tmpfs lives only in
RAM: once its chunks matched the index, its bytes change only through a write, and every write
moves the file's mtime/ctime. So a (device, inode, size, mtime, ctime, index hashes) key that was
verified stays verified. Files on disk never qualify: the page cache may drop their pages and
read them back from a disk that has rotted since.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from .index import PartitionInfo

__all__ = ["FileKey", "file_key", "is_verified", "remember"]

FileKey = tuple[int, int, int, int, int, int]

_MAX_ENTRIES = 4096
_lock = threading.Lock()
_verified: OrderedDict[FileKey, None] = OrderedDict()


def file_key(path: Path, part: PartitionInfo) -> FileKey | None:
    """The identity of a partition file's current content, or None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, hash(part.chunks))


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
