"""Writing checkpoints: layout, chunk hashes, atomic directory commit."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import xxhash

from . import _native
from .hooks import ProgressFn
from .index import (
    ALIGNMENT,
    FORMAT_VERSION,
    INDEX_FILE,
    CheckpointIndex,
    FileInfo,
    PartitionInfo,
    TensorInfo,
)
from .sources import Entry, tensor_entries

__all__ = ["save_checkpoint", "write_checkpoint"]

log = logging.getLogger(__name__)

DEFAULT_PARTITION_SIZE = 1 << 30
DEFAULT_CHUNK_SIZE = 4 << 20
_PARTITION_NAME = re.compile(r"part-\d+\.bin")

# The reader thread fills blocks while this thread writes the previous ones. A block is a
# multiple of 4096 (every write but a partition's last is a whole block, so all are aligned) and
# paces the progress reports; a few of them are enough to keep both sides busy.
_BLOCK_SIZE = 16 << 20
_BLOCKS = 4
_POLL_S = 0.25  # a writer waiting on the reader calls progress this often (its cancellation path)
_JOIN_S = 60.0  # how long closing waits for a reader stuck in a read before giving up on it
_ZEROS = bytes(ALIGNMENT)


def save_checkpoint(
    state_dict_or_model: Mapping[str, torch.Tensor] | torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    partition_size: int = DEFAULT_PARTITION_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
    progress: ProgressFn | None = None,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a state dict or model as an sllm checkpoint directory at ``path``; return its path.

    Tensors may be of any dtype in FORMAT.md, any shape (zero-size and scalars included), any
    device and non-contiguous; they are stored contiguously in row-major order. Tensors that are
    the same view of the same storage (tied weights) are stored once, the later names as aliases.
    For a transformers model, its ``config.json`` and ``generation_config.json`` are written too.

    Args:
        state_dict_or_model: name -> tensor mapping, or an ``nn.Module`` (its ``state_dict()``).
        path: the checkpoint directory to create.
        partition_size: target partition size (a single larger tensor gets its own partition).
        chunk_size: checksum chunk size, a multiple of 4096.
        extra_files: name in the checkpoint -> file to copy (tokenizer files, config...).
        progress: ``progress(bytes_done, bytes_total)`` over tensor bytes.
        metadata: free-form strings stored in the index.
        overwrite: atomically replace an existing checkpoint at ``path``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: a tensor of an unsupported dtype or layout (quantized, sparse, meta).
    """
    files: dict[str, Path | bytes] = {}
    if isinstance(state_dict_or_model, torch.nn.Module):
        files.update(_model_files(state_dict_or_model))
        state = state_dict_or_model.state_dict()
    else:
        state = dict(state_dict_or_model)
    files.update({name: Path(src) for name, src in (extra_files or {}).items()})
    return write_checkpoint(
        tensor_entries(state.items()),
        path,
        files=files,
        partition_size=partition_size,
        chunk_size=chunk_size,
        progress=progress,
        metadata=metadata,
        overwrite=overwrite,
    )


def _model_files(model: torch.nn.Module) -> dict[str, Path | bytes]:
    out: dict[str, Path | bytes] = {}
    for attr, name in (("config", "config.json"), ("generation_config", "generation_config.json")):
        cfg = getattr(model, attr, None)
        to_json = getattr(cfg, "to_json_string", None)
        if callable(to_json):
            out[name] = str(to_json()).encode()
    return out


class _ChunkHasher:
    """XXH3-64 of every ``chunk_size`` chunk of a partition's stream, fed in order."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.filled = 0
        self.hasher = xxhash.xxh3_64()
        self.hashes: list[int] = []

    def update(self, data: memoryview) -> None:
        while data:
            take = min(len(data), self.chunk_size - self.filled)
            self.hasher.update(data[:take])
            self.filled += take
            data = data[take:]
            if self.filled == self.chunk_size:
                self.hashes.append(self.hasher.intdigest())
                self.hasher.reset()
                self.filled = 0

    def digests(self) -> tuple[int, ...]:
        """All chunk hashes, the last (shorter) chunk included; call once, at the end."""
        if self.filled:
            self.hashes.append(self.hasher.intdigest())
            self.filled = 0
        return tuple(self.hashes)


class _PartitionWriter:
    """Writes one partition file.

    Writes go around the page cache (O_DIRECT) where the file system allows it: the bytes go
    from the block straight to the disk, without a copy into the page cache that the fsync would
    then have to flush, and a fresh checkpoint does not take its size in memory. Every write is
    a whole page-aligned block or a partition's 4096-padded tail, as O_DIRECT requires.
    """

    def __init__(self, path: Path) -> None:
        self.fd = _open_new(path)
        self.pos = 0

    def write(self, data: memoryview) -> None:
        self.pos += len(data)
        while data:
            try:
                n = os.write(self.fd, data)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not _drop_direct(self.fd):
                    raise
                continue  # the file system wants another alignment: write through the cache
            data = data[n:]

    def finish(self) -> int:
        """fsync and close; the file's size."""
        if self.pos % ALIGNMENT:  # the reader pads every partition; this would be a bug
            raise ValueError(f"partition of {self.pos} bytes is not padded to {ALIGNMENT}")
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
        return self.pos

    def abort(self) -> None:
        os.close(self.fd)


_O_DIRECT = getattr(os, "O_DIRECT", 0)


def _open_new(path: Path) -> int:
    """Create ``path`` for writing, with O_DIRECT unless the file system refuses it (tmpfs)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    if _O_DIRECT:
        try:
            return os.open(path, flags | _O_DIRECT, 0o666)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o666)


def _drop_direct(fd: int) -> bool:
    """Turn O_DIRECT off on ``fd``; False if it was not on."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not _O_DIRECT or not flags & _O_DIRECT:
        return False
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
    return True


class _Stopped(Exception):
    """Raised in the reader thread when the writer has closed the pipeline."""


class _Block:
    """A reusable page-aligned buffer travelling reader -> writer -> reader.

    ``used`` bytes of it are partition ``part``'s stream (tensor bytes and zero padding), of
    which ``payload`` are tensor bytes (what progress counts); the last block of a partition
    carries the chunk hashes of the whole partition in ``hashes``.
    """

    __slots__ = ("hashes", "mem", "part", "payload", "used", "view")

    def __init__(self, size: int) -> None:
        self.mem = _native.Buffer.anonymous(size, True)
        self.view = memoryview(self.mem)
        self.reset(0)

    def reset(self, part: int) -> None:
        self.part, self.used, self.payload = part, 0, 0
        self.hashes: tuple[int, ...] | None = None

    def release(self) -> None:
        # A traceback may still hold slices of the view; then the GC frees it later instead.
        with contextlib.suppress(BufferError):
            self.view.release()


_Plan = list[tuple[int, list[tuple[int, Entry]]]]
"""Partition number -> (offset, entry) of each tensor stored in it, in order."""


def _plan(entries: Sequence[Entry], placement: Sequence[tuple[int | None, int]]) -> _Plan:
    plan: _Plan = []
    for e, (part, offset) in zip(entries, placement, strict=True):
        if part is None or e.source is None:
            continue
        if not plan or plan[-1][0] != part:
            plan.append((part, []))
        plan[-1][1].append((offset, e))
    return plan


class _Filler:
    """The reader thread's `Sink`: lays one partition's byte stream into blocks, in order, and
    hashes each block as it hands it to the writer (it is not changed after that: the hashes
    cover exactly the bytes written, and hashing overlaps the writer's write of the last one)."""

    def __init__(self, reader: _Reader, part: int, chunk_size: int) -> None:
        self.reader, self.part = reader, part
        self.hasher = _ChunkHasher(chunk_size)
        self.pos = 0  # bytes of the partition's stream so far
        self.block: _Block | None = None

    def reserve(self) -> memoryview:
        block = self.block
        if block is None or block.used == len(block.view):
            if block is not None:
                self._send(block)
            block = self.block = self.reader.take(self.part)
        return block.view[block.used :]

    def _send(self, block: _Block, last: bool = False) -> None:
        self.hasher.update(block.view[: block.used])
        if last:
            block.hashes = self.hasher.digests()
        self.reader.send(block)

    def commit(self, n: int) -> None:
        block = self.block
        if block is None or not 0 <= n <= len(block.view) - block.used:
            raise ValueError(f"a source committed {n} bytes, more than it reserved")
        block.used += n
        block.payload += n
        self.pos += n

    def pad_to(self, offset: int) -> None:
        while self.pos < offset:
            space = self.reserve()
            n = min(len(space), offset - self.pos, len(_ZEROS))
            space[:n] = _ZEROS[:n]
            assert self.block is not None
            self.block.used += n
            self.pos += n

    def finish(self) -> None:
        """Pad the partition to a multiple of 4096 and hand over its last block."""
        self.pad_to(_align(self.pos))
        block = self.block if self.block is not None else self.reader.take(self.part)
        self.block = None
        self._send(block, last=True)


class _Reader:
    """Streams every partition's bytes into reusable blocks on its own thread, ahead of the
    writer, so reading the sources and writing the partitions overlap instead of alternating.

    Use as a context manager: leaving it stops the thread, joins it and frees the blocks, on
    every path (a failed or cancelled write included).
    """

    def __init__(self, plan: _Plan, chunk_size: int, block_size: int, blocks: int) -> None:
        self.plan, self.chunk_size = plan, chunk_size
        self.blocks = [_Block(block_size) for _ in range(blocks)]
        self.free: queue.SimpleQueue[_Block | None] = queue.SimpleQueue()
        self.full: queue.SimpleQueue[_Block | BaseException | None] = queue.SimpleQueue()
        self.stopped = threading.Event()
        for b in self.blocks:
            self.free.put(b)
        self.thread = threading.Thread(target=self._run, name="sllm-write-reader", daemon=True)

    def __enter__(self) -> _Reader:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.free.put(None)  # wakes a reader waiting for a block
        deadline = time.monotonic() + _JOIN_S
        while self.thread.is_alive() and time.monotonic() < deadline:
            self.thread.join(timeout=_POLL_S)
        if self.thread.is_alive():  # stuck in a read of a source: it stops at its next block
            log.warning("checkpoint reader thread still busy after %.0fs; leaving it", _JOIN_S)
            return
        for b in self.blocks:
            b.release()

    # --- reader thread ---

    def _run(self) -> None:
        try:
            for part, items in self.plan:
                filler = _Filler(self, part, self.chunk_size)
                for offset, e in items:
                    assert e.source is not None
                    filler.pad_to(offset)
                    before = filler.pos
                    e.source.write_to(filler)
                    if filler.pos - before != e.nbytes:
                        raise ValueError(
                            f"{e.name}: source gave {filler.pos - before} bytes, expected {e.nbytes}"
                        )
                filler.finish()
            self.full.put(None)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the writer, which raises it
            self.full.put(exc)

    def take(self, part: int) -> _Block:
        """A free block for ``part`` (waits for the writer to recycle one, or for closing)."""
        block = self.free.get()
        if block is None or self.stopped.is_set():
            raise _Stopped
        block.reset(part)
        return block

    def send(self, block: _Block) -> None:
        self.full.put(block)

    # --- writer side ---

    def next(self, idle: Callable[[], None]) -> _Block | None:
        """The next filled block, None after the last; re-raises what the reader raised.

        While waiting, calls ``idle`` every ``_POLL_S`` so that a slow source can be cancelled.
        """
        while True:
            try:
                item = self.full.get(timeout=_POLL_S)
            except queue.Empty:
                if not self.thread.is_alive() and self.full.empty():
                    raise RuntimeError("checkpoint reader thread ended without a result") from None
                idle()
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def recycle(self, block: _Block) -> None:
        self.free.put(block)


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _layout(entries: Sequence[Entry], partition_size: int) -> list[tuple[int | None, int]]:
    """(partition, offset) per entry: aligned, in order, a new partition when one is full."""
    out: list[tuple[int | None, int]] = []
    part, used = -1, 0
    for e in entries:
        if e.alias_of is not None or e.nbytes == 0:
            out.append((None, 0))
            continue
        offset = _align(used)
        if part < 0 or (used > 0 and offset + e.nbytes > partition_size):
            part, offset = part + 1, 0
        out.append((part, offset))
        used = offset + e.nbytes
    return out


def write_checkpoint(
    entries: Sequence[Entry],
    path: str | os.PathLike[str],
    *,
    files: Mapping[str, Path | bytes] | None = None,
    partition_size: int = DEFAULT_PARTITION_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: ProgressFn | None = None,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``entries`` (and model ``files``: name -> path or content) atomically to ``path``.

    Partitions are written into a temporary directory next to ``path``, renamed into place at the
    end; nothing is left behind when writing fails or ``progress`` raises (how a caller cancels).
    """
    if chunk_size <= 0 or chunk_size % ALIGNMENT or chunk_size > 1 << 30:
        raise ValueError(f"chunk_size must be a positive multiple of {ALIGNMENT} up to 1 GiB")
    if partition_size <= 0:
        raise ValueError("partition_size must be positive")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor name")
    files = dict(files or {})
    for name in files:
        if (
            not name
            or "/" in name
            or name.startswith(".")
            or name == INDEX_FILE
            or _PARTITION_NAME.fullmatch(name)
        ):
            raise ValueError(f"extra file name {name!r} is not allowed in a checkpoint")
    dst = Path(path).absolute()
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists (pass overwrite=True to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        os.chmod(tmp, 0o755)
        index = _write_all(
            entries, tmp, files, partition_size, chunk_size, progress, metadata or {}
        )
        _write_json(tmp / INDEX_FILE, index.to_json())
        _fsync_path(tmp)
        _commit(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _write_all(
    entries: Sequence[Entry],
    root: Path,
    files: Mapping[str, Path | bytes],
    partition_size: int,
    chunk_size: int,
    progress: ProgressFn | None,
    metadata: Mapping[str, str],
) -> CheckpointIndex:
    placement = _layout(entries, partition_size)
    total = sum(e.nbytes for e in entries if e.alias_of is None)
    partitions = _write_partitions(_plan(entries, placement), root, chunk_size, total, progress)
    if progress is not None:
        progress(total, total)

    carried = [_copy_file(name, src, root) for name, src in sorted(files.items())]
    tensors = [
        TensorInfo(e.name, e.dtype, e.shape, part if e.nbytes else None, offset, e.nbytes)
        for e, (part, offset) in zip(entries, placement, strict=True)
        if e.alias_of is None
    ]
    return CheckpointIndex(
        path=root,
        version=FORMAT_VERSION,
        chunk_size=chunk_size,
        partitions=tuple(partitions),
        tensors=tuple(tensors),
        aliases={e.name: e.alias_of for e in entries if e.alias_of is not None},
        order=tuple(e.name for e in entries),
        files=tuple(carried),
        metadata=dict(metadata),
    )


def _write_partitions(
    plan: _Plan,
    root: Path,
    chunk_size: int,
    total: int,
    progress: ProgressFn | None,
) -> list[PartitionInfo]:
    """Write the partition files from the reader's blocks (hashed by the reader as handed over).

    Runs in the caller's thread, so ``progress`` does too and may raise to abort (the reader is
    stopped and joined, the open partition closed).
    """
    partitions: list[PartitionInfo] = []
    if not plan:  # no tensor bytes at all: no partition, no reader thread
        return partitions
    done = 0

    def report() -> None:
        if progress is not None:
            progress(done, total)

    writer: _PartitionWriter | None = None
    try:
        with _Reader(plan, chunk_size, _BLOCK_SIZE, _BLOCKS) as reader:
            while (block := reader.next(report)) is not None:
                if writer is None:
                    writer = _PartitionWriter(root / _partition_name(block.part))
                writer.write(block.view[: block.used])
                done += block.payload
                part, hashes = block.part, block.hashes
                reader.recycle(block)
                report()
                if hashes is not None:  # the partition's last block
                    info = PartitionInfo(_partition_name(part), writer.finish(), hashes)
                    writer = None
                    partitions.append(info)
    finally:
        if writer is not None:
            writer.abort()
    return partitions


def _partition_name(number: int) -> str:
    return f"part-{number:05d}.bin"


def _copy_file(name: str, src: Path | bytes, root: Path) -> FileInfo:
    dst = root / name
    if isinstance(src, bytes):
        dst.write_bytes(src)
    else:
        shutil.copyfile(src, dst)
    _fsync_path(dst)
    return FileInfo(name=name, size=dst.stat().st_size)


def _write_json(path: Path, doc: object) -> None:
    with open(path, "x", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, dst: Path) -> None:
    """Move the finished directory into place; readers see the old or the new, never a mix."""
    if dst.exists():
        _native.exchange_paths(str(tmp), str(dst))
        shutil.rmtree(tmp)  # now holds the old checkpoint
    else:
        os.rename(tmp, dst)
    _fsync_path(dst.parent)
