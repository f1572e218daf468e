"""Reading files into the page cache with parallel reads, ahead of mapping them.

Mapping a file and faulting its pages in as tensors are first touched reads it a page-fault
at a time; a few threads reading large blocks read it at the disk's speed (a 2.5 GB model's
safetensors: 1.6 s against 3.5 s on the development VM, `benchmarks/README.md`). The data read
is dropped: what stays is the page cache, which the mapping then hits.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BLOCK = 64 << 20  # bytes one read job covers
BUFFER = 16 << 20  # bytes one read call asks for
THREADS = 4


def read_ahead(paths: Iterable[Path], threads: int = THREADS) -> int:
    """Read every byte of ``paths`` once, ``threads`` blocks at a time; returns the bytes read.
    A file that shrinks meanwhile just reads less (the mapping that follows finds it out)."""
    jobs = []
    for path in paths:
        size = path.stat().st_size
        jobs += [(path, at, min(BLOCK, size - at)) for at in range(0, size, BLOCK)]
    if not jobs:
        return 0
    with ThreadPoolExecutor(min(threads, len(jobs)), thread_name_prefix="sllm-readahead") as ex:
        return sum(ex.map(lambda job: _read(*job), jobs))


def _read(path: Path, offset: int, nbytes: int) -> int:
    buf = memoryview(bytearray(min(BUFFER, nbytes)))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        done = 0
        while done < nbytes:
            n = os.preadv(fd, [buf[: min(len(buf), nbytes - done)]], offset + done)
            if n <= 0:
                break
            done += n
        return done
    finally:
        os.close(fd)
