"""The machine's limits for the same bytes, measured in the same run as the loaders.

- Cold disk: parallel ``O_DIRECT`` reads of every file in large page-aligned chunks, into one
  anonymous mapping faulted in beforehand (what an ideal pre-touched pool gives), then the same
  touch as every loader. Two ways, swept over worker counts and chunk sizes: threads calling
  ``os.preadv`` (which releases the GIL) on a shared counter, and forked processes (no GIL at
  all; started and faulted in before timing) each reading every n-th chunk. Read time and touch
  time are reported separately: read alone is the raw disk limit, read + touch the limit for
  "ready tensors with every byte touched".
- DRAM tier: files already in tmpfs, mapped and touched with the same touch function (zero-copy is
  the best any loader can do from tmpfs). Faulting on touch, ``MAP_POPULATE``, and
  ``MADV_POPULATE_READ`` from several threads are all tried; the best is the limit.
"""

from __future__ import annotations

import itertools
import mmap
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from benchmarks.loader.common import MiB, Sample, Timer, drop_caches, touch_tensor

PAGE = 4096


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


class DirectReader:
    """Reads a set of files with ``O_DIRECT`` into one pre-faulted, page-aligned buffer.

    ``shared``: the buffer is a shared anonymous mapping, so that forked reader processes
    (:class:`ReaderProcesses`) write into the parent's memory; otherwise it is private, with
    transparent huge pages advised as sllm's ``HostPool`` does.
    """

    def __init__(self, files: Sequence[Path], shared: bool = False) -> None:
        import torch

        self.files = list(files)
        self.sizes = [p.stat().st_size for p in self.files]
        self.offsets: list[int] = []
        total = 0
        for size in self.sizes:
            self.offsets.append(total)
            total += _round_up(size, PAGE)
        self.capacity = max(total, PAGE)
        flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
        self.buf = mmap.mmap(-1, self.capacity, flags=flags)
        if not shared and hasattr(mmap, "MADV_HUGEPAGE"):
            self.buf.madvise(mmap.MADV_HUGEPAGE)
        self.view = memoryview(self.buf)
        self.tensor = torch.frombuffer(self.buf, dtype=torch.uint8)
        self.tensor.fill_(1)  # fault every page in now, outside any timed region

    @property
    def nbytes(self) -> int:
        return sum(self.sizes)

    def work(self, chunk: int) -> list[tuple[int, int, int, int]]:
        """``(file index, file offset, buffer offset, length)`` of every chunk, in file order."""
        items = []
        for i, (size, base) in enumerate(zip(self.sizes, self.offsets, strict=True)):
            for off in range(0, size, chunk):
                items.append((i, off, base + off, min(chunk, size - off)))
        return items

    def open(self) -> list[int]:
        return [os.open(p, os.O_RDONLY | os.O_DIRECT) for p in self.files]

    def read_item(self, fds: Sequence[int], item: tuple[int, int, int, int]) -> None:
        i, off, dst, want = item
        aligned = _round_up(want, PAGE)
        got = 0
        while got < want:
            n = os.preadv(fds[i], [self.view[dst + got : dst + aligned]], off + got)
            if n <= 0:
                raise OSError(f"short O_DIRECT read of {self.files[i]} at {off + got}")
            got += n

    def read_threads(self, threads: int, chunk: int) -> None:
        """One pass over every file by ``threads`` threads taking chunks from a shared counter."""
        fds = self.open()
        try:
            work = self.work(chunk)
            counter = itertools.count()
            errors: list[BaseException] = []

            def worker() -> None:
                try:
                    while (k := next(counter)) < len(work):
                        self.read_item(fds, work[k])
                except BaseException as e:
                    errors.append(e)

            pool = [threading.Thread(target=worker) for _ in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            if errors:
                raise errors[0]
        finally:
            for fd in fds:
                os.close(fd)

    def touch(self) -> int:
        checksum = 0
        for size, base in zip(self.sizes, self.offsets, strict=True):
            checksum = (checksum + touch_tensor(self.tensor[base : base + size])) & (2**64 - 1)
        return checksum


class ReaderProcesses:
    """Forked reader processes (no GIL anywhere), started and faulted in before any timing.

    Process ``k`` of ``n`` reads chunks ``k, k + n, k + 2n...`` into the shared buffer of
    ``reader`` when told to; the parent only sends "go" and waits for every "done".
    """

    def __init__(self, reader: DirectReader, procs: int) -> None:
        self.reader = reader
        self.children: list[tuple[int, int, int]] = []  # pid, command fd, result fd
        try:
            for k in range(procs):
                cmd_r, cmd_w = os.pipe()
                res_r, res_w = os.pipe()
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the child
                    os.close(cmd_w)
                    os.close(res_r)
                    code = 0
                    try:
                        self._child(k, procs, cmd_r, res_w)
                    except BaseException:
                        code = 1
                        os.write(res_w, b"E")
                    os._exit(code)
                os.close(cmd_r)
                os.close(res_w)
                self.children.append((pid, cmd_w, res_r))
            self._wait(b"R")
        except BaseException:
            self.close()
            raise

    def _child(self, k: int, n: int, cmd: int, res: int) -> None:
        buf = self.reader.buf
        try:
            buf.madvise(23)  # MADV_POPULATE_WRITE: map the parent's pages here, now
        except OSError:
            view = self.reader.view
            for off in range(0, len(view), PAGE):
                view[off] = view[off]
        os.write(res, b"R")
        while True:
            msg = os.read(cmd, 64)
            if not msg or msg.startswith(b"Q"):
                return
            chunk = int(msg[1:])
            fds = self.reader.open()
            try:
                for item in self.reader.work(chunk)[k::n]:
                    self.reader.read_item(fds, item)
            finally:
                for fd in fds:
                    os.close(fd)
            os.write(res, b"D")

    def _wait(self, expect: bytes) -> None:
        for _, _, res in self.children:
            got = os.read(res, 1)
            if got != expect:
                raise OSError(f"reader process answered {got!r} instead of {expect!r}")

    def read(self, chunk: int) -> None:
        for _, cmd, _ in self.children:
            os.write(cmd, b"G%d" % chunk)
        self._wait(b"D")

    def close(self) -> None:
        for pid, cmd, res in self.children:
            try:
                os.write(cmd, b"Q")
            except OSError:
                pass
            os.close(cmd)
            os.close(res)
            os.waitpid(pid, 0)
        self.children = []


def parse_config(text: str) -> tuple[str, int, int]:
    """``"t8x16"`` (8 threads, 16 MiB chunks), ``"p8x16"`` (8 processes); a bare ``"8x16"`` is threads."""
    mode = "processes" if text.startswith("p") else "threads"
    workers, chunk = text.lstrip("tp").split("x")
    return mode, int(workers), int(chunk)


def odirect(files: Sequence[Path], configs: Sequence[str], cold: bool) -> list[Sample]:
    """One pass per config (see :func:`parse_config`), each after dropping the page cache."""
    parsed = [parse_config(c) for c in configs]
    samples = []
    for mode in ("threads", "processes"):
        todo = [(w, c) for m, w, c in parsed if m == mode]
        if not todo:
            continue
        reader = DirectReader(files, shared=mode == "processes")
        for workers, chunk_mib in todo:
            procs = ReaderProcesses(reader, workers) if mode == "processes" else None
            try:
                dropped = drop_caches() if cold else False
                with Timer() as read_t:
                    if procs is not None:
                        procs.read(chunk_mib * MiB)
                    else:
                        reader.read_threads(workers, chunk_mib * MiB)
            finally:
                if procs is not None:
                    procs.close()
            with Timer() as touch_t:
                checksum = reader.touch()
            samples.append(
                Sample(
                    seconds=read_t.seconds + touch_t.seconds,
                    nbytes=reader.nbytes,
                    cold=dropped,
                    checksum=checksum,
                    extra={
                        "config": f"{mode[0]}{workers}x{chunk_mib}",
                        "mode": mode,
                        "workers": workers,
                        "chunk_mib": chunk_mib,
                        "read_s": read_t.seconds,
                        "touch_s": touch_t.seconds,
                    },
                )
            )
        del reader
    return samples


MADV_POPULATE_READ = 22  # Linux >= 5.14: fault a range in, in one call, without a trap per page


def _populate_parallel(ranges: Sequence[tuple[int, int]], threads: int) -> None:
    """``madvise(MADV_POPULATE_READ)`` over ``(address, length)`` ranges in 64 MiB slices from
    ``threads`` threads (ctypes releases the GIL around the call)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    step = 64 * MiB
    work = [(a + o, min(step, n - o)) for a, n in ranges for o in range(0, n, step)]
    counter = itertools.count()
    errors: list[int] = []

    def worker() -> None:
        while (k := next(counter)) < len(work):
            addr, length = work[k]
            if libc.madvise(addr, length, MADV_POPULATE_READ) != 0:
                errors.append(ctypes.get_errno())
                return

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise OSError(errors[0], "madvise(MADV_POPULATE_READ) failed")


def tmpfs_touch(files: Sequence[Path], variants: Sequence[str]) -> list[Sample]:
    """Map every file (already in tmpfs) and touch every byte; one sample per variant.

    Variants: ``"mmap"`` (pages fault in as the touch reaches them), ``"map_populate"``
    (``MAP_POPULATE``: the kernel faults everything in at ``mmap``), ``"madvise:N"`` (``N``
    threads fault slices in with ``MADV_POPULATE_READ``, then the touch).
    """
    import warnings

    import torch

    samples = []
    for variant in variants:
        flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if variant == "map_populate" else 0)
        keep: list[tuple[mmap.mmap, torch.Tensor]] = []
        checksum = 0
        nbytes = 0
        with Timer() as t, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for p in files:
                size = p.stat().st_size
                if size == 0:
                    continue
                fd = os.open(p, os.O_RDONLY)
                try:
                    mm = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
                finally:
                    os.close(fd)
                # read-only buffer: torch warns (silenced); the touch only reads
                keep.append((mm, torch.frombuffer(mm, dtype=torch.uint8)))
                nbytes += size
            if variant.startswith("madvise:"):
                ranges = [(tensor.data_ptr(), tensor.numel()) for _, tensor in keep]
                _populate_parallel(ranges, int(variant.split(":")[1]))
            for _, tensor in keep:
                checksum = (checksum + touch_tensor(tensor)) & (2**64 - 1)
        samples.append(
            Sample(
                seconds=t.seconds,
                nbytes=nbytes,
                cold=False,
                checksum=checksum,
                extra={"variant": variant},
            )
        )
        del keep
    return samples
