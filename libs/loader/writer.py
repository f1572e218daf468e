"""Writing checkpoints: layout, chunk hashes, atomic directory commit."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from . import _native
from .hooks import ProgressFn
from .index import (
    ALIGNMENT,
    FORMAT_VERSION,
    INDEX_FILE,
    CheckpointIndex,
    FileInfo,
    TensorInfo,
)
from .partition_writer import DEFAULT_WRITE_THREADS, PartitionPlan, Placed, write_partitions
from .sources import Entry, tensor_entries

__all__ = ["save_checkpoint", "write_checkpoint"]

DEFAULT_PARTITION_SIZE = 1 << 30
DEFAULT_CHUNK_SIZE = 4 << 20
_PARTITION_NAME = re.compile(r"part-\d+\.bin")


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
    threads: int = DEFAULT_WRITE_THREADS,
) -> Path:
    """Write ``entries`` (and model ``files``: name -> path or content) atomically to ``path``,
    partitions by ``threads`` threads in one pass (see `write_partitions`)."""
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
            entries, tmp, files, partition_size, chunk_size, progress, metadata or {}, threads
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
    threads: int,
) -> CheckpointIndex:
    placement = _layout(entries, partition_size)
    total = sum(e.nbytes for e in entries if e.alias_of is None)
    placed: list[list[Placed]] = []
    for e, (part, offset) in zip(entries, placement, strict=True):
        if part is None or e.source is None:
            continue
        if part == len(placed):
            placed.append([])
        placed[part].append(Placed(offset, e))
    plans = [
        PartitionPlan(_partition_name(n), _align(p[-1].offset + p[-1].entry.nbytes), tuple(p))
        for n, p in enumerate(placed)
    ]
    partitions = write_partitions(
        plans, root, chunk_size, threads=threads, progress=progress, total=total
    )
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
