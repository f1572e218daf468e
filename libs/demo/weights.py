"""Streams seeded random weights into safetensors files without holding a model in memory."""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

CHUNK_ELEMENTS = 1 << 22
"""Elements per generated chunk; part of the seed derivation, so changing it changes weights."""

MAX_SHARD_BYTES = 5 * 10**9
"""Shard limit; matches transformers' classic 5 GB, so shard counts mirror real checkpoints."""

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_SAFETENSORS_DTYPES: Mapping[torch.dtype, str] = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
}

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class _Chunk:
    name: str
    index: int
    numel: int
    ones: bool


def chunk_seed(seed: int, name: str, index: int) -> int:
    """Seed of one chunk of one tensor.

    Every chunk has its own generator, so chunks can be produced in parallel and in any
    order while the bytes stay a pure function of ``(seed, name, index)``.
    """
    digest = hashlib.sha256(f"sllm-demo/{seed}/{name}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_chunk(
    name: str, index: int, numel: int, *, dtype: torch.dtype, seed: int, std: float
) -> torch.Tensor:
    """Chunk ``index`` (``numel`` elements, normal(0, ``std``)) of tensor ``name``.

    Uses its own ``torch.Generator``: the process-wide RNG is neither read nor advanced.
    """
    generator = torch.Generator().manual_seed(chunk_seed(seed, name, index))
    return torch.empty(numel, dtype=dtype).normal_(0.0, std, generator=generator)


def fill_random_(tensor: torch.Tensor, name: str, *, seed: int, std: float) -> None:
    """Fill a contiguous CPU ``tensor`` in place with seeded normal(0, ``std``) values.

    The values are exactly those ``write_random_safetensors`` writes for a tensor of the same
    name, dtype and size, so instantiated and streamed demo models agree bit for bit.
    """
    flat = tensor.view(-1)
    for index, start in enumerate(range(0, flat.numel(), CHUNK_ELEMENTS)):
        size = min(CHUNK_ELEMENTS, flat.numel() - start)
        chunk = random_chunk(name, index, size, dtype=tensor.dtype, seed=seed, std=std)
        flat[start : start + size].copy_(chunk)


def plan_shards(nbytes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Split tensors, in order, into consecutive shards of at most ``max_shard_bytes``.

    A tensor larger than the limit gets a shard of its own.
    """
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in nbytes.items():
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def _ordered_parallel(
    fn: Callable[[_T], _R], items: Iterable[_T], workers: int, window: int
) -> Iterator[_R]:
    # A bounded window keeps memory at a few chunks however large the checkpoint is.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demo-weights") as pool:
        pending: deque[Future[_R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _header(shapes: Mapping[str, tuple[int, ...]], names: list[str], dtype: torch.dtype) -> bytes:
    itemsize = torch.empty((), dtype=dtype).element_size()
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        end = offset + math.prod(shapes[name]) * itemsize
        entries[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shapes[name]),
            "data_offsets": [offset, end],
        }
        offset = end
    blob = json.dumps(entries, separators=(",", ":")).encode()
    # The data section must start 8-byte aligned; the format allows trailing spaces.
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob


def _default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def write_random_safetensors(
    directory: Path,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    dtype: torch.dtype,
    seed: int,
    std: float,
    ones: Collection[str] = (),
    max_shard_bytes: int | None = None,
    workers: int | None = None,
) -> list[Path]:
    """Write ``shapes`` as seeded normal(0, ``std``) tensors in safetensors files.

    Memory stays at a few ``CHUNK_ELEMENTS`` chunks per worker whatever the total size.

    Args:
        directory: Existing directory to write into.
        shapes: Tensor names and shapes, in file order.
        dtype: Floating-point dtype of every tensor (generated directly in it).
        seed: Base seed; see ``chunk_seed``.
        std: Standard deviation of the random tensors.
        ones: Names of tensors filled with ones instead (norm weights).
        max_shard_bytes: Shard limit (default ``MAX_SHARD_BYTES``). One shard is written as
            ``model.safetensors``; more as ``model-0000i-of-0000n.safetensors`` plus
            ``model.safetensors.index.json``.
        workers: Generator threads (default: usable CPUs, at most 8).

    Returns:
        The files written, index last when there is one.
    """
    if dtype not in _SAFETENSORS_DTYPES:
        raise ValueError(f"unsupported dtype {dtype}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = {name: math.prod(shape) * itemsize for name, shape in shapes.items()}
    shards = plan_shards(nbytes, MAX_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes)
    ones_set = frozenset(ones)
    threads = workers or _default_workers()

    def make(chunk: _Chunk) -> torch.Tensor:
        if chunk.ones:
            return torch.ones(chunk.numel, dtype=dtype)
        return random_chunk(chunk.name, chunk.index, chunk.numel, dtype=dtype, seed=seed, std=std)

    def chunks(names: list[str]) -> Iterator[_Chunk]:
        for name in names:
            numel = math.prod(shapes[name])
            for index, start in enumerate(range(0, numel, CHUNK_ELEMENTS)):
                size = min(CHUNK_ELEMENTS, numel - start)
                yield _Chunk(name, index, size, name in ones_set)

    files: list[Path] = []
    weight_map: dict[str, str] = {}
    for number, names in enumerate(shards, start=1):
        filename = (
            SINGLE_FILE
            if len(shards) == 1
            else f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        )
        path = directory / filename
        with path.open("wb") as handle:
            handle.write(_header(shapes, names, dtype))
            for tensor in _ordered_parallel(make, chunks(names), threads, 2 * threads):
                handle.write(tensor.view(torch.uint8).numpy().data)
        files.append(path)
        weight_map.update(dict.fromkeys(names, filename))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}
        index_path = directory / INDEX_FILE
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        files.append(index_path)
    return files
